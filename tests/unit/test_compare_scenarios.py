"""`fedvox compare`'s scenarios (site profiles, sizes), the pooled site, progress and reports."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from fedvox.compare.outputs import report_markdown, results_csv, results_document
from fedvox.compare.progress import ProgressBar, format_duration, round_fraction
from fedvox.compare.scenarios import (
    SCENARIOS,
    site_cases,
    site_digest,
    synthesise,
    training_counts,
    write_pooled_site,
)
from fedvox.synth import iid_profiles
from fedvox.synth.profiles import (
    mixed_profiles,
    prevalence_shift_profiles,
    scanner_shift_profiles,
)


def test_quantity_skew_is_about_ten_three_one() -> None:
    assert training_counts(3, 8, quantity_skew=False) == [8, 8, 8]
    assert training_counts(3, 8, quantity_skew=True) == [20, 6, 2]
    assert training_counts(3, 20, quantity_skew=True) == [50, 16, 5]
    assert training_counts(1, 8, quantity_skew=True) == [8]


def test_scenario_profiles_shift_what_they_say() -> None:
    iid = iid_profiles(3)
    scanner = scanner_shift_profiles(3)
    labels = prevalence_shift_profiles(3)
    # feature shift: scanners differ, case mix is the IID control's
    assert len({p.hu_offset for p in scanner}) == 3
    assert len({p.noise_sigma for p in scanner}) == 3
    assert len({p.blur_sigma_mm for p in scanner}) == 3
    assert len({p.spacing for p in scanner}) == 3
    assert {(p.lesion_prevalence, p.lesion_radius_mm) for p in scanner} == {
        (iid[0].lesion_prevalence, iid[0].lesion_radius_mm)
    }
    assert [p.hu_offset for p in scanner] == [-20.0, 0.0, 20.0]
    # label skew: one scanner, prevalence and lesion size differ
    assert len({(p.hu_offset, p.noise_sigma, p.blur_sigma_mm, p.spacing) for p in labels}) == 1
    assert [p.lesion_prevalence for p in labels] == [0.2, 0.55, 0.9]
    assert len({p.lesion_radius_mm for p in labels}) == 3
    mixed = mixed_profiles(3)
    assert [p.hu_offset for p in mixed] == [p.hu_offset for p in scanner]
    assert [p.lesion_prevalence for p in mixed] == [p.lesion_prevalence for p in labels]
    assert [p.name for p in mixed] == ["site-a", "site-b", "site-c"]
    assert scanner_shift_profiles(1)[0].name == "site-a"  # one site is allowed
    assert SCENARIOS["mixed"].quantity_skew and SCENARIOS["quantity-skew"].quantity_skew
    assert not SCENARIOS["scanner-shift"].quantity_skew


def test_pooled_site_lists_every_sites_cases(tmp_path: Path) -> None:
    sites = synthesise(
        SCENARIOS["quantity-skew"],
        tmp_path / "data",
        n_sites=2,
        seed=0,
        size=16,
        n_train=4,
        n_val=1,
        n_test=1,
    )
    assert [len(site_cases(d)["training"]) for d in sites] == [20, 2]
    pooled = write_pooled_site(sites, tmp_path / "pooled")
    cases = site_cases(pooled)
    assert len(cases["training"]) == 22 and len(cases["validation"]) == 2
    assert len(cases["test"]) == 2
    listed = json.loads((pooled / "dataset.json").read_text())["training"]
    assert all(Path(c["image"]).is_absolute() and Path(c["image"]).exists() for c in listed)
    # the digest is a pure function of the files
    assert site_digest(sites[0]) == site_digest(sites[0]) != site_digest(sites[1])


def test_round_fraction_from_status() -> None:
    status: dict[str, Any] = {
        "phase": "running",
        "total_rounds": "4",
        "completed_round": "1",
        "current_round": "2",
        "current_expected": 2,
        "current_results": 1,
        # site-a has submitted (its 1.0 is counted through the results), site-b is halfway
        "sites": [{"progress": 1.0}, {"progress": 0.5}],
    }
    assert round_fraction(status) == pytest.approx((1 + 0.75) / 4)
    # a new round not yet picked up: stale 1.0 progress counts nothing
    stale = {**status, "current_round": "2", "current_results": 0, "sites": [{"progress": 1.0}]}
    assert round_fraction(stale) == pytest.approx(1 / 4)
    assert round_fraction({"phase": "done"}) == 1.0


def test_progress_bar_eta_from_this_runs_pace() -> None:
    now = [0.0]
    stream = io.StringIO()
    bar = ProgressBar(4, already_done=1, stream=stream, clock=lambda: now[0])
    assert bar.eta() is None
    bar.begin("fedavg seed 0")
    now[0] = 30.0
    bar.update(0, 0.5)  # half an arm in 30 s: 60 s per arm, 2.5 arms left
    assert bar.eta() == pytest.approx(150.0)
    bar.update(0, 0.25)  # never moves backwards
    assert bar.fraction() == pytest.approx(1.5 / 4)
    now[0] = 60.0
    bar.finish("done")
    assert bar.eta() == pytest.approx(120.0)
    text = stream.getvalue()
    assert "2/4 arms" in text and "ETA 2m00s" in text and "\r" not in text
    assert format_duration(3725) == "1h02m"


def _document() -> dict[str, Any]:
    def run(arm: str, seed: int, a: float, b: float) -> dict[str, Any]:
        return {
            "arm": arm,
            "kind": "x",
            "seed": seed,
            "dice": {"site-a": a, "site-b": b, "pooled": (a + b) / 2},
            "case_dice": {"site-a": [a, None], "site-b": [b]},
            "curve": [0.0, a],
            "wall_seconds": 3.0,
        }

    runs = [
        run(arm, seed, a + 0.1 * seed, b)
        for arm, a, b in (("fedavg", 0.5, 0.3), ("local-only", 0.6, 0.1), ("pooled", 0.7, 0.4))
        for seed in (0, 1)
    ]
    config = {"training_cases": [8, 8], "rounds": 1, "local_steps": 5, "total_local_steps": 10}
    scenario = {"name": "iid", "description": "Test"}
    return results_document(
        scenario, ["site-a", "site-b"], ["fedavg", "local-only", "pooled"], [0, 1], config, runs
    )


def test_results_document_report_and_csv() -> None:
    document = _document()
    assert all("wall_seconds" not in r for r in document["runs"])  # timings stay out
    assert document["winner"] == {"site-a": "pooled", "site-b": "pooled", "pooled": "pooled"}
    assert document["best_federated"]["site-b"] == "fedavg"
    assert document["fl_pooled_ratio"]["fedavg"] == pytest.approx(0.425 / 0.575)
    report = report_markdown(document, ["convergence.png"])
    assert "| fedavg | 0.550 ± 0.071 | 0.300 ± 0.000 | 0.425 ± 0.035 |" in report
    # pooled test 0.425 / 0.575; per site 0.55 / 0.75 and 0.3 / 0.4
    assert "| fedavg | 0.74 | 0.73 | 0/2 | 1/2 (site-b) |" in report
    assert "![convergence](convergence.png)" in report
    rows = results_csv(document).splitlines()
    assert rows[0] == "scenario,arm,kind,seed,test_set,dice,lesion_cases"
    assert rows[1] == "iid,fedavg,x,0,site-a,0.5,1"
    assert rows[3] == "iid,fedavg,x,0,pooled,0.4,2"
    assert len(rows) == 1 + 6 * 3


def test_plots_are_pngs(tmp_path: Path) -> None:
    from fedvox.compare.plots import convergence, site_bars

    document = _document()
    for draw, name in ((convergence, "c.png"), (site_bars, "s.png")):
        path = draw(document, tmp_path / name)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
