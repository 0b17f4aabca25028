"""One of five real client processes is Byzantine (ClientConfig.byzantine): it uploads its delta
scaled x100, sign-flipped, or full of NaN. NaN never gets past validation and the rounds complete
by quorum without it; under median, trimmed mean and Krum, with their defaults, the final test
Dice stays within 2% of a clean run with the same seed. FedAvg's figures are printed for contrast,
not asserted.

Every federation here is a real server process and five real client processes on loopback:
16 of them (4 strategies x clean + 3 attacks) of 12 rounds, about 16-18 minutes on two idle CPU
cores, hence the `slow` mark. Run with `pytest --run-slow tests/integration/test_poisoning.py -s`
to see the Dice table; a single test runs only the federations it needs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fedvox.sim.federation import watch_until_done
from fedvox.sim.processes import (
    client_args,
    free_port,
    server_args,
    spawn,
    stop,
    wait_healthy,
)
from fedvox.sim.report import metrics_document

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 0
# Past the steepest part of learning (test Dice 0.70 at round 3, 0.83 at 12): at 3 rounds a
# clean run and an attacked one differ by about 0.02 for no reason but which honest updates
# entered each round, which would leave a 2% band saying little
ROUNDS = 12
BYZANTINE_SITE = "site-a"
ROBUST = ("median", "trimmed_mean", "krum")
ATTACKS = ("scale100", "signflip", "nan")
TOLERANCE = 0.02  # the largest loss allowed, as a fraction of the clean run's final test Dice
SIZE = 48  # voxels across the synthetic volumes
LESION_MM = (10.0, 18.0)
# small enough for 2 CPU cores, large enough that the clean run learns (Dice well above 0)
SERVER_SETTINGS = {
    "model.channels": "[16, 32, 64]",
    "model.strides": "[2, 2]",
    "model.num_res_units": "1",
    "train.local_steps": "40",
    "train.patch_size": "32",
    "train.batch_size": "2",
    "train.lr": "0.01",
    "poll_timeout_s": "2",
    "heartbeat_interval_s": "1",
    # a NaN site's refused upload ends its part in the round, which closes as soon as the four
    # honest sites are in; the deadline only bounds a stuck round: long enough for four honest
    # sites to train on a busy 2-core machine
    "round_timeout_s": "90",
}
# The strategies run with their defaults: median and trimmed_mean set aside the update with
# the worst Krum score before the coordinate-wise statistic (byzantine=1). Without that
# (byzantine=0) a sign-flipped update sits inside the honest range on most coordinates and
# drags the statistic: measured with this data, clean against sign flip, plain median 0.832
# vs 0.789 and trimmed mean 0.822 vs 0.796 at 10 rounds; 0.887 vs 0.869 and 0.884 vs 0.878 at
# 30; with 16 training cases per site and batch 4, median 0.863 vs 0.839 at 10 rounds and
# 0.897 vs 0.872 at 20. More rounds and more data did not close the gap; the pre-selection
# did (docs/robustness.md).


@dataclass
class Outcome:
    strategy: str
    attack: str
    final_test_dice: float
    history: list[dict[str, Any]]
    server_log: str
    seconds: float


def federate(out: Path, sites: list[Path], strategy: str, attack: str) -> Outcome:
    """A whole federation of real processes; `attack` ("" = none) is BYZANTINE_SITE's mode."""
    began = time.monotonic()
    port = free_port()
    address = f"127.0.0.1:{port}"
    args = [
        *server_args(
            port,
            out / "state",
            rounds=ROUNDS,
            min_sites=len(sites),
            strategy=strategy,
            seed=SEED,
            settings=SERVER_SETTINGS,
        ),
        "--insecure",  # plaintext on loopback; TLS is tested elsewhere
    ]
    server = spawn("fedvox.server", args, out / "server.log")
    clients: dict[str, subprocess.Popen[bytes]] = {}
    try:
        wait_healthy(address, server)
        for site in sites:
            mode = attack if site.name == BYZANTINE_SITE else ""
            state = out / "site-state" / site.name
            settings = {"byzantine": mode} if mode else {}
            clients[site.name] = spawn(
                "fedvox.client",
                [*client_args(site, address, state, settings=settings), "--insecure"],
                out / f"{site.name}.log",
            )
        status = watch_until_done(address, server, clients, out, timeout=900)
    finally:
        for client in clients.values():
            stop(client)
        stop(server)
    history = status["history"]
    final = metrics_document(history, {})["final"]["test_dice"]["mean"]
    server_log = (out / "server.log").read_text(errors="replace")
    return Outcome(strategy, attack, float(final), history, server_log, time.monotonic() - began)


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("sites")
    return make_sites(root)


def make_sites(root: Path) -> list[Path]:
    """Five sites of one scanner profile (so that the aggregators, not site heterogeneity, make
    the difference), every case with a lesion of a size a small UNet learns in a few rounds."""
    from fedvox.synth import generate_federation
    from fedvox.synth.profiles import iid_profiles

    profiles = [
        dataclasses.replace(p, lesion_prevalence=1.0, lesion_radius_mm=LESION_MM)
        for p in iid_profiles(5)
    ]
    return generate_federation(
        root, 5, seed=SEED, size=SIZE, n_train=6, n_val=2, n_test=4, profiles=profiles
    )


Runs = Callable[[str, str], Outcome]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, sites: list[Path]) -> Iterator[Runs]:
    """(strategy, attack) -> its federation, each run once per module, only when asked for.
    Prints the Dice table of every run at the end."""
    done: dict[tuple[str, str], Outcome] = {}

    def run(strategy: str, attack: str) -> Outcome:
        if (strategy, attack) not in done:
            out = tmp_path_factory.mktemp(f"{strategy}-{attack or 'clean'}")
            done[strategy, attack] = federate(out, sites, strategy, attack)
        return done[strategy, attack]

    yield run
    print(f"\n{table(done)}")


def table(done: dict[tuple[str, str], Outcome]) -> str:
    """Final mean test Dice per strategy and attack (seconds per run), then one JSON line."""
    attacks = ("", *ATTACKS)
    lines = [
        "final mean test Dice, one Byzantine site of five (wall seconds of the run)",
        f"{'strategy':<14}" + "".join(f"{a or 'clean':>17}" for a in attacks),
    ]
    for strategy in ("fedavg", *ROBUST):
        cells = [done.get((strategy, a)) for a in attacks]
        lines.append(
            f"{strategy:<14}"
            + "".join(
                f"{c.final_test_dice:>10.3f} ({c.seconds:>3.0f}s)" if c else f"{'-':>17}"
                for c in cells
            )
        )
    lines.append(
        json.dumps({f"{s}/{a or 'clean'}": o.final_test_dice for (s, a), o in done.items()})
    )
    return "\n".join(lines)


@pytest.mark.parametrize("strategy", ["fedavg", *ROBUST])
def test_clean_run_learns(runs: Runs, strategy: str) -> None:
    clean = runs(strategy, "")
    initial = metrics_document(clean.history, {})["initial_test_dice"]["mean"]
    # otherwise a 0.02 band around the clean Dice would say nothing
    assert clean.final_test_dice > max(0.3, initial + 0.25), (initial, clean.final_test_dice)


@pytest.mark.parametrize("strategy", ["fedavg", *ROBUST])
def test_nan_updates_are_refused_and_rounds_complete_by_quorum(runs: Runs, strategy: str) -> None:
    outcome = runs(strategy, "nan")
    refusals = [
        line
        for line in outcome.server_log.splitlines()
        if "rpc Submit refused: INVALID_ARGUMENT" in line and "holds NaN or Inf" in line
    ]
    assert len(refusals) >= ROUNDS, outcome.server_log[-3000:]
    trains = [h for h in outcome.history if h["kind"] == "train"]
    assert [int(h["round"]) for h in trains] == list(range(1, ROUNDS + 1))
    for entry in trains:  # the Byzantine site never counted; the four honest ones made quorum
        assert BYZANTINE_SITE not in entry["sites"]
        assert len(entry["sites"]) == 4, entry["sites"]
    assert "accepted train from site-a" not in outcome.server_log


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("strategy", ROBUST)
def test_robust_strategies_keep_the_clean_dice(runs: Runs, strategy: str, attack: str) -> None:
    clean = runs(strategy, "").final_test_dice
    attacked = runs(strategy, attack).final_test_dice
    # a loss of more than 2% fails; an attacked run may end above the clean one, as it does
    # when the honest updates that entered its rounds happen to suit the test cases better
    assert attacked >= (1 - TOLERANCE) * clean, (clean, attacked)


@pytest.mark.parametrize("attack", ATTACKS)
def test_fedavg_for_contrast(runs: Runs, attack: str) -> None:
    """FedAvg has no defence against a scaled or flipped update; its figure is only reported
    (in the table printed at the end). NaN never reaches it."""
    clean, attacked = runs("fedavg", ""), runs("fedavg", attack)
    dice = (attacked.final_test_dice, clean.final_test_dice)
    print(f"fedavg {attack}: test Dice {dice[0]:.3f} (clean {dice[1]:.3f})")
    trains = [int(h["round"]) for h in attacked.history if h["kind"] == "train"]
    assert trains == list(range(1, ROUNDS + 1))
