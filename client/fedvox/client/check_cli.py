"""`fedvox check-data DIR...`: vet sites' CT data before they join a federation.

DIR is a site's data root (a dataset.json, or imagesTr/ and labelsTr/ folders of NIfTI files and
DICOM series folders), or a folder of such sites. Prints, per site, the counts, shapes, spacings,
orientations, HU percentiles, label values and lesion volumes of every case, then each problem
with the file it concerns. Exits 1 when any site has a problem, so scripts can gate on it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedvox.admin import format_site_data
from fedvox.client.checks import INFO_SUMMARY, CaseStats, SiteReport, check_site
from fedvox.client.layout import DATASET_JSON


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="site data root(s)")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")


def site_roots(path: Path) -> list[Path]:
    """`path` itself if it is a site, else its sub-folders that are sites."""
    if _is_site(path) or not path.is_dir():
        return [path]
    subsites = sorted(p for p in path.iterdir() if p.is_dir() and _is_site(p))
    return subsites or [path]  # no site anywhere: check `path` to say what is missing


def _is_site(path: Path) -> bool:
    return (path / DATASET_JSON).is_file() or (path / "imagesTr").is_dir()


def run(args: argparse.Namespace) -> int:
    reports = [check_site(root) for path in args.dirs for root in site_roots(path)]
    if args.json:
        print(json.dumps([report_dict(r) for r in reports], indent=2))
    else:
        print("\n\n".join(format_report(r) for r in reports))
    return 0 if all(r.ok for r in reports) else 1


def report_dict(report: SiteReport) -> dict[str, object]:
    return {
        "root": str(report.layout.root),
        "ok": report.ok,
        "summary": report.summary(),
        "cases": [vars(c) for c in report.cases],
        "errors": report.errors,
        "warnings": report.warnings,
    }


def format_report(report: SiteReport) -> str:
    verdict = "OK" if report.ok else f"{len(report.errors)} PROBLEM(S)"
    lines = [
        f"site {report.layout.root} ({report.layout.source or 'no layout'}): {verdict}",
        "  " + format_site_data({INFO_SUMMARY: json.dumps(report.summary())}),
    ]
    if report.cases:
        lines.append(
            f"  {'split':<11}{'case':<28}{'shape (RAS)':<14}{'spacing mm':<19}{'stored':<7}"
            f"{'HU p5/p50/p95':<17}{'labels':<8}lesion ml"
        )
        lines += [_case_line(c) for c in report.cases]
    lines += [f"  error: {e}" for e in report.errors]
    lines += [f"  warning: {w}" for w in report.warnings]
    return "\n".join(lines)


def _case_line(c: CaseStats) -> str:
    name = Path(c.image).name
    shape = "x".join(str(n) for n in c.shape)
    spacing = "x".join(f"{v:.2f}" for v in c.spacing)
    hu = f"{c.hu['p5']:.0f}/{c.hu['p50']:.0f}/{c.hu['p95']:.0f}"
    labels = ",".join(str(v) for v in c.label_values)
    return (
        f"  {c.split:<11}{name[:27]:<28}{shape:<14}{spacing:<19}{c.axcodes:<7}{hu:<17}"
        f"{labels:<8}{c.lesion_ml:g}"
    )
