"""``robustft report PATH``: tables, plots and diagnostics over finished runs."""

from __future__ import annotations

import argparse
from typing import Any

HELP = """\
Collect every finished run below PATH (any directory holding result.json: one run, a folder of
runs, or a sweep directory; several PATHs make one report over all of them, with --out) and
write a report: paper-style tables (rows backbone x method,
columns dataset; cells clean / robust at eps_g / expected robustness in %, mean +- std over
seeds) as markdown, CSV and a self-contained HTML page; a cost table (measured training
example-passes, time per epoch, trainable parameters next to expected robustness); plots (PNG
and SVG) of validation accuracy per epoch with the eps schedule, accuracy-vs-eps curves,
expected robustness and expected robustness vs training compute; and per-run diagnostics
(never_adapts, catastrophic_overfitting, co_detected, collapse_on_ramp, suboptimal_transfer,
no_robustness) with a suggestion each, and runs the overfitting monitor stopped early.

examples:
  robustft report runs/demo
  robustft report sweeps/cars-4 --out reports/cars-4
  robustft report sweeps/cars-4 sweeps/cars-8 --out reports/cars
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="tables, plots and diagnostics over finished runs",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", metavar="RUNS_OR_SWEEP_DIR", nargs="+")
    p.add_argument(
        "--out", metavar="DIR", help="output directory (default: PATH/report for one PATH)"
    )
    p.add_argument("--no-plots", action="store_true", help="skip the plots (no matplotlib)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from robustft.report import build_report

    report = build_report(args.paths, args.out or None, plots=not args.no_plots)
    collection, out = report.collection, report.out_dir
    print(report.main_table)
    findings = [(r, f) for r in collection.runs for f in r.findings]
    if findings:
        print("findings:")
    for run_record, finding in findings:
        print(f"  {run_record.label} ({run_record.context}) {finding.code}: {finding.message}")
        print(f"    -> {finding.suggestion}")
    if not findings:
        print(f"findings: none in {len(collection.runs)} runs")
    for run_record in collection.runs:
        for warning in run_record.warnings:
            print(f"warning: {run_record.label}: {warning}")
    for line in collection.skipped:
        print(f"warning: {line}")
    print(f"{len(collection.runs)} runs; report written to {out}/ ({len(report.files)} files:")
    print("  " + ", ".join(p.name for p in report.files) + ")")
    return 0
