"""The report's CSV files, tidy: ``report.csv`` has one row per run, ``report_summary.csv`` one
row per table cell (norm, eval eps, backbone, method, dataset), mean and sample std over seeds.

Accuracies are in % with four decimals; both files have a ``norm`` column (``linf``, ``l2``) and
eps as text (``8/255``, ``0.5``) next to eps in 1/255 units (``8.0000``), left empty for l2
and any other norm (those budgets are not counted in 1/255 steps). Empty fields mean "no data".
"""

from __future__ import annotations

from collections.abc import Sequence

from robustft.report.collect import CostSummary, RunRecord, Stat, aggregate
from robustft.report.tables import budgets, eps_text, runs_at
from robustft.units import format_eps
from robustft.utils.text import csv_text

RUN_CSV_FIELDS = (
    "run_id",
    "run_dir",
    "name",
    "method",
    "backbone",
    "dataset",
    "seed",
    "norm",
    "eps_g",
    "eps_g_255",
    "schedule",
    "eval_eps",
    "eval_eps_255",
    "eval_attack",
    "epochs",
    "num_classes",
    "clean_pct",
    "robust_pct",
    "expected_robustness_pct",
    "autoattack_pct",
    "autoattack_version",
    "autoattack_n",
    "final_val_pct",
    "adaptation_delay",
    "train_seconds",
    "eval_seconds",
    "findings",
    "trainable_parameters",
    "total_parameters",
    "train_forward_passes",
    "train_backward_passes",
    "train_example_forward_passes",
    "train_example_backward_passes",
    "train_example_passes",
    "train_steps",
    "passes_per_step",
    "seconds_per_epoch",
    "examples_per_second",
    "monitor_seconds",
    "stopped_reason",
    "stopped_onset",
    "stopped_action",
    "rolled_back_to",
)

SUMMARY_CSV_FIELDS = (
    "norm",
    "eval_eps",
    "eval_eps_255",
    "backbone",
    "method",
    "dataset",
    "n",
    "seeds",
    "clean_pct_mean",
    "clean_pct_std",
    "robust_pct_mean",
    "robust_pct_std",
    "expected_robustness_pct_mean",
    "expected_robustness_pct_std",
    "cost_n",
    "trainable_parameters",
    "trainable_pct",
    "passes_per_step",
    "train_example_passes_mean",
    "train_example_passes_std",
    "cost_vs_standard",
    "seconds_per_epoch_mean",
    "seconds_per_epoch_std",
    "examples_per_second_mean",
    "examples_per_second_std",
    "cost_expected_robustness_pct_mean",
    "erob_gain_points_per_1e6_extra_passes",
)


def _num(value: float | None, scale: float = 100.0) -> str:
    return "" if value is None else f"{scale * value:.4f}"


def _eps_csv(eps: float, norm: str) -> list[str]:
    """An eps as text and in 1/255 units (``8/255``, ``8.0000``); l2 and other norms: the plain
    decimal and an empty 1/255 column (those budgets are not counted in 1/255 steps)."""
    if norm == "linf":
        return [format_eps(eps), _num(eps, 255)]
    return [eps_text(eps, norm), ""]


def _opt(value: object) -> object:
    return "" if value is None else value


def _run_cost_fields(run: RunRecord) -> list[object]:
    """The cost and early-stop columns of ``report.csv`` (empty without data)."""
    cost, stop = run.cost, run.stopped
    if cost is None:
        values: list[object] = [""] * 12
    else:
        values = [
            _opt(cost.trainable_parameters),
            _opt(cost.total_parameters),
            _opt(cost.forward_passes),
            _opt(cost.backward_passes),
            cost.example_forward_passes,
            cost.example_backward_passes,
            cost.example_passes,
            _opt(cost.steps),
            _opt(cost.passes_per_step),
            _opt(cost.seconds_per_epoch),
            _opt(cost.examples_per_second),
            _opt(cost.monitor_seconds),
        ]
    if stop is None:
        return [*values, "", "", "", ""]
    return [*values, stop.reason, _opt(stop.onset), stop.action, _opt(stop.rolled_back_to)]


def _stat_fields(stat: Stat | None, scale: float = 1.0) -> list[str]:
    """Mean and sample std (empty when n = 1 or no data)."""
    if stat is None:
        return ["", ""]
    return [_num(stat.mean, scale), _num(stat.std, scale) if stat.n > 1 else ""]


def _cell_cost_fields(cost: CostSummary | None) -> list[object]:
    """The cost columns of ``report_summary.csv`` (empty without data)."""
    if cost is None:
        return [""] * 13
    return [
        cost.n,
        _num(None if cost.trainable_parameters is None else cost.trainable_parameters.mean, 1),
        _num(None if cost.trainable_fraction is None else cost.trainable_fraction.mean),
        _num(None if cost.passes_per_step is None else cost.passes_per_step.mean, 1),
        *_stat_fields(cost.example_passes),
        _num(cost.relative_cost, 1),
        *_stat_fields(cost.seconds_per_epoch),
        *_stat_fields(cost.examples_per_second),
        _num(cost.expected.mean),
        _num(cost.gain_per_million, 1),
    ]


def runs_csv(runs: Sequence[RunRecord]) -> str:
    """``report.csv``: one row per run; accuracies in %, the norm, eps as text and (l-inf) in
    1/255 units."""
    rows = [
        [
            run.run_id,
            str(run.path),
            run.name,
            run.method,
            run.backbone,
            run.dataset,
            run.seed,
            run.norm,
            eps_text(run.eps_g, run.norm),
            _eps_csv(run.eps_g, run.norm)[1],
            run.schedule,
            *_eps_csv(run.eval_eps, run.norm),
            run.eval_attack,
            run.epochs,
            run.num_classes,
            _num(run.clean),
            _num(run.robust),
            _num(run.expected),
            _num(run.autoattack),
            run.autoattack_version or "",
            "" if run.autoattack_n is None else run.autoattack_n,
            _num(run.final_val_acc),
            "" if run.delay is None else run.delay,
            "" if run.train_seconds is None else f"{run.train_seconds:.3f}",
            "" if run.eval_seconds is None else f"{run.eval_seconds:.3f}",
            ";".join(f.code for f in run.findings),
            *_run_cost_fields(run),
        ]
        for run in runs
    ]
    return csv_text(RUN_CSV_FIELDS, rows)


def summary_csv(runs: Sequence[RunRecord]) -> str:
    """``report_summary.csv``: one row per table cell (per budget, :func:`budgets` order), mean
    and sample std over seeds in % (std empty when n = 1)."""
    rows = []
    for norm, eps in budgets(runs):
        rows += _summary_rows(runs_at(runs, (norm, eps)), norm)
    return csv_text(SUMMARY_CSV_FIELDS, rows)


def _summary_rows(runs: Sequence[RunRecord], norm: str) -> list[list[object]]:
    """The ``report_summary.csv`` rows of the runs of one budget."""
    rows = []
    for cell in aggregate(runs):
        rows.append(
            [
                norm,
                *_eps_csv(cell.eval_eps, norm),
                cell.backbone,
                cell.method,
                cell.dataset,
                cell.clean.n,
                " ".join(str(s) for s in cell.seeds),
                *(
                    value
                    for stat in (cell.clean, cell.robust, cell.expected)
                    for value in (_num(stat.mean), _num(stat.std) if stat.n > 1 else "")
                ),
                *_cell_cost_fields(cell.cost),
            ]
        )
    return rows
