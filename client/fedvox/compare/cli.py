"""`fedvox compare --scenario scanner-shift --strategies fedavg,fedbn --seeds 3 --rounds 5
--out results/scanner-shift`: every scheme and the local-only and pooled baselines, each through
the real server and client processes, scored on every site's test split."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedvox.compare.aggregate import LOCAL_ONLY, POOLED_ARM
from fedvox.compare.arms import (
    RESULT_JSON,
    STOP,
    Settings,
    load_result,
    run_arm,
    write_json_atomic,
)
from fedvox.compare.outputs import (
    code_version,
    dumps,
    report_markdown,
    results_csv,
    results_document,
    versions,
    write_text_atomic,
)
from fedvox.compare.progress import ProgressBar, format_duration
from fedvox.compare.scenarios import (
    SCENARIOS,
    site_cases,
    site_digest,
    synthesise,
    write_pooled_site,
)
from fedvox.sim.cli import SIM_DEFAULTS
from fedvox.wire.settings import parse_overrides

if TYPE_CHECKING:
    from fedvox.compare.evaluate import Evaluator

RESERVED = ("train.local_steps", "train.seed", "rounds", "strategy", "seed", "min_sites")
CUSTOM = "custom"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        help="synthetic scenario (required unless --data)",
    )
    parser.add_argument(
        "--data", type=Path, help="your own site folders instead of a synthetic scenario"
    )
    parser.add_argument(
        "--strategies",
        default="fedavg",
        help="comma-separated schemes (see `fedvox strategies`); local-only and pooled always run",
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per federation (default 5)")
    parser.add_argument(
        "--local-steps",
        type=int,
        default=int(SIM_DEFAULTS["train.local_steps"]),
        help="local steps per site per round; pooled trains sites x this per round (default 100)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    parser.add_argument("--sites", type=int, default=3, help="synthetic sites (default 3)")
    parser.add_argument("--size", type=int, default=64, help="synthetic volume size in voxels")
    parser.add_argument("--train-cases", type=int, default=8, help="per site (default 8)")
    parser.add_argument("--val-cases", type=int, default=2, help="per site (default 2)")
    parser.add_argument("--test-cases", type=int, default=3, help="per site (default 3)")
    parser.add_argument(
        "--strategy-param",
        action="append",
        default=[],
        metavar="SCHEME:NAME=VALUE",
        help="a scheme's parameter, e.g. --strategy-param fedprox:mu=0.1 (repeatable)",
    )
    parser.add_argument("--config", type=Path, help="server YAML settings file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a server setting for every arm, e.g. --set train.lr=0.005",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads of each client process and of the evaluation (default 1); "
        "part of the configuration, since it can change the floating-point results",
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="give up on one federation after seconds"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext gRPC instead of mutual TLS (certificates provisioned per federation)",
    )


def _strategy_params(pairs: list[str], strategies: list[str]) -> dict[str, tuple[str, ...]]:
    params: dict[str, list[str]] = {}
    for pair in pairs:
        scheme, sep, rest = pair.partition(":")
        if not sep or "=" not in rest:
            raise ValueError(f"--strategy-param must be SCHEME:NAME=VALUE, got {pair!r}")
        if scheme not in strategies:
            raise ValueError(f"--strategy-param {pair!r}: {scheme!r} is not in --strategies")
        params.setdefault(scheme, []).append(rest)
    return {k: tuple(v) for k, v in sorted(params.items())}


def _check(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    from fedvox.server.strategies import REGISTRY, create

    if args.scenario is None and args.data is None:
        raise ValueError("choose a --scenario, or point --data at your site folders")
    if args.seeds < 1 or args.rounds < 1 or args.local_steps < 1 or args.threads < 1:
        raise ValueError("--seeds, --rounds, --local-steps and --threads must be >= 1")
    if args.data is None and args.sites < 1:
        raise ValueError("--sites must be >= 1")
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in REGISTRY]
    if unknown or not strategies:
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"unknown strategy {unknown[0] if unknown else ''!r}; known: {known}")
    if len(set(strategies)) != len(strategies):
        raise ValueError("--strategies lists a scheme twice")
    for name, pairs in _strategy_params(args.strategy_param, strategies).items():
        create(name, dict(p.split("=", 1) for p in pairs))  # bad names/values fail now
    overrides = {**({} if args.config else SIM_DEFAULTS), **parse_overrides(args.set)}
    clash = [k for k in overrides if k in RESERVED and k != "train.local_steps"]
    clash += [k for k in parse_overrides(args.set) if k == "train.local_steps"]
    if clash:
        raise ValueError(
            f"--set {clash[0]} is set by compare itself (use --rounds, --local-steps, --seeds)"
        )
    overrides.pop("train.local_steps", None)
    return strategies, overrides


def run(args: argparse.Namespace) -> int:
    strategies, overrides = _check(args)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _compare(args, strategies, overrides)
    except BaseException:
        STOP.set()  # Ctrl-C or a failed arm: stop the federations still running beside it
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM: stop every running federation's processes, then exit (finished arms stay)."""
    STOP.set()
    raise SystemExit(128 + signum)


def _compare(args: argparse.Namespace, strategies: list[str], overrides: dict[str, str]) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    arms = [*strategies, LOCAL_ONLY, POOLED_ARM]
    seeds = list(range(args.seeds))
    params = _strategy_params(args.strategy_param, strategies)
    settings = Settings(
        rounds=args.rounds,
        local_steps=args.local_steps,
        overrides=overrides,
        strategy_params=params,
        config=args.config,
        threads=args.threads,
        insecure=args.insecure,
        timeout=args.timeout,
    )
    if args.data is not None:
        name = args.scenario or CUSTOM
        scenario = {"name": name, "description": f"the sites under {args.data.name}/"}
    else:
        chosen = SCENARIOS[args.scenario]
        text = chosen.description
        scenario = {"name": chosen.name, "description": text[:1].upper() + text[1:]}

    def say(text: str) -> None:
        print(f"fedvox compare: {text}", file=sys.stderr, flush=True)

    data: dict[int, list[Path]] = {}
    pooled: dict[int, Path] = {}
    for seed in seeds:
        data[seed] = _site_dirs(args, seed, say)
        pooled[seed] = write_pooled_site(data[seed], out / "pooled" / f"seed-{seed}")
    sites = [d.name for d in data[seeds[0]]]
    if any([d.name for d in dirs] != sites for dirs in data.values()):
        raise ValueError("the seeds' federations have different sites")
    n = len(sites)
    config: dict[str, Any] = {
        "scenario": scenario["name"],
        "data": "synthetic" if args.data is None else "user",
        "sites": sites,
        "size": args.size if args.data is None else None,
        "training_cases": [len(site_cases(d)["training"]) for d in data[seeds[0]]],
        "validation_cases": [len(site_cases(d)["validation"]) for d in data[seeds[0]]],
        "test_cases": [len(site_cases(d)["test"]) for d in data[seeds[0]]],
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "pooled_local_steps": n * args.local_steps,
        "total_local_steps": n * args.rounds * args.local_steps,
        "overrides": dict(sorted(overrides.items())),
        "config_file": args.config.name if args.config else None,
        "strategy_params": {k: list(v) for k, v in params.items()},
        "threads": args.threads,
        "transport": "plaintext" if args.insecure else "mutual TLS",
    }
    _check_same_run(out, config)

    folders = {(a, s): out / "runs" / a / f"seed-{s}" for s in seeds for a in arms}
    finished = sum(1 for f in folders.values() if (f / RESULT_JSON).is_file())
    bar = ProgressBar(len(folders), finished)
    say(
        f"{scenario['name']}: {n} sites, arms {', '.join(arms)}, seeds {seeds}, "
        f"{args.rounds} rounds x {args.local_steps} local steps; {finished} of {len(folders)} "
        f"arms already done in {out}"
    )
    evaluator: Evaluator | None = None  # torch is imported only when an arm has to run
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        for arm in arms:
            result = load_result(folders[(arm, seed)])
            if result is None:
                if evaluator is None:
                    from fedvox.compare.evaluate import Evaluator

                    evaluator = Evaluator(args.threads)
                result = run_arm(
                    arm,
                    seed,
                    folders[(arm, seed)],
                    data[seed],
                    pooled[seed],
                    settings,
                    evaluator,
                    bar,
                )
                dice = result["dice"]
                bar.finish(
                    f"{arm} seed {seed}: pooled-test Dice "
                    + (f"{dice['pooled']:.3f}" if dice["pooled"] is not None else "n/a")
                    + f" in {format_duration(result['wall_seconds'])}"
                )
            runs.append(result)
        _write_outputs(out, scenario, sites, arms, seeds, config, runs, data, args)
    say(f"wrote {out / 'report.md'}, results.json, results.csv, manifest.json and plots")
    return 0


def _site_dirs(args: argparse.Namespace, seed: int, say: Any) -> list[Path]:
    if args.data is not None:
        dirs = sorted(p for p in args.data.iterdir() if p.is_dir() and not p.name.startswith("."))
        dirs = [d for d in dirs if (d / "dataset.json").is_file() or (d / "imagesTr").is_dir()]
        if not dirs:
            raise ValueError(f"--data {args.data} holds no site folders")
        return [d.resolve() for d in dirs]
    return synthesise(
        SCENARIOS[args.scenario],
        (args.out / "data" / f"seed-{seed}").resolve(),
        n_sites=args.sites,
        seed=seed,
        size=args.size,
        n_train=args.train_cases,
        n_val=args.val_cases,
        n_test=args.test_cases,
        progress=say,
    )


def _check_same_run(out: Path, config: dict[str, Any]) -> None:
    """A rerun into the same --out must use the same configuration (more seeds or schemes are
    fine: they are arms of their own)."""
    path = out / "compare.json"
    if path.is_file():
        import json

        before = json.loads(path.read_text())
        changed = sorted(k for k in set(before) | set(config) if before.get(k) != config.get(k))
        if changed:
            raise ValueError(
                f"{out} holds a comparison with another configuration ({', '.join(changed)} "
                "differ); choose another --out"
            )
    else:
        write_json_atomic(path, config)


def _write_outputs(
    out: Path,
    scenario: dict[str, Any],
    sites: list[str],
    arms: list[str],
    seeds: list[int],
    config: dict[str, Any],
    runs: list[dict[str, Any]],
    data: dict[int, list[Path]],
    args: argparse.Namespace,
) -> None:
    from fedvox.compare.plots import CONVERGENCE_PNG, SITES_PNG, convergence, site_bars

    document = results_document(scenario, sites, arms, seeds, config, runs)
    write_text_atomic(out / "results.json", dumps(document))
    write_text_atomic(out / "results.csv", results_csv(document))
    convergence(document, out / CONVERGENCE_PNG)
    site_bars(document, out / SITES_PNG)
    write_text_atomic(out / "report.md", report_markdown(document, [CONVERGENCE_PNG, SITES_PNG]))
    digests = {
        str(seed): {d.name: site_digest(d) for d in dirs}
        for seed, dirs in data.items()
        if seed in {r["seed"] for r in runs}
    }
    manifest = {
        "command": ["fedvox", "compare", *sys.argv[sys.argv.index("compare") + 1 :]]
        if "compare" in sys.argv
        else sys.argv,
        "scenario": scenario,
        "seeds": seeds,
        "strategies": [a for a in arms if a not in (LOCAL_ONLY, POOLED_ARM)],
        "arms": arms,
        "config": {
            **config,
            "out": str(out.resolve()),
            "data_folder": str(args.data.resolve()) if args.data else str(out / "data"),
            "config_path": str(args.config.resolve()) if args.config else None,
            "timeout_s": args.timeout,
            "per_arm": {
                "federated": {"train.local_steps": config["local_steps"]},
                LOCAL_ONLY: {
                    "strategy": "fedavg",
                    "sites_per_federation": 1,
                    "train.local_steps": config["local_steps"],
                },
                POOLED_ARM: {
                    "strategy": "fedavg",
                    "sites_per_federation": 1,
                    "train.local_steps": config["pooled_local_steps"],
                },
                "every arm": {"train.seed": "the seed", "seed": "the seed"},
            },
        },
        "code": code_version(),
        "versions": versions(),
        "cpu_count": os.cpu_count(),
        "data_digests": digests,
        "sampled_sites": {f"{r['arm']}/seed-{r['seed']}": r.get("sampled_sites", {}) for r in runs},
        "models": {f"{r['arm']}/seed-{r['seed']}": r.get("models", {}) for r in runs},
        "wall_seconds": {f"{r['arm']}/seed-{r['seed']}": r.get("wall_seconds") for r in runs},
    }
    write_text_atomic(out / "manifest.json", dumps(manifest))
