"""Report tables: paper-style results tables and the per-run table, as text cells, with the
definitions of their numbers.

Results tables follow the paper's Table 1: rows are backbone x method, columns are datasets,
each cell "clean / robust at eps_g / expected robustness" in %, here as mean ± sample standard
deviation over seeds (no ± when a cell has one seed; n is always stated). One table per
evaluation budget, a budget being a threat-model norm and an eps (:func:`budgets`): an l2 run
evaluated at 0.5 and an l-inf run evaluated at 8/255 never share a table. The cost tables
(:mod:`robustft.report.cost`) use the same budgets; :mod:`robustft.report.render` writes the
tables into ``report.md`` and ``report.html``, :mod:`robustft.report.csvfiles` the CSV files.

Every table that shows an eps or a robust accuracy names the norm: table titles print the
budget as ``8/255 (l-inf)`` or ``0.5 (l2)`` (:func:`budget_text`), and the per-run table and
both CSV files have a ``norm`` column (``linf``, ``l2``). l-inf eps are printed as ``k/255``
when they are multiples of 1/255; l2 (and any other norm) eps as plain decimals, never as
``k/255``, and their ``*_255`` CSV columns are left empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from robustft import diagnostics
from robustft.report.collect import Cell, RunRecord, Stat, aggregate, method_order, same_eps
from robustft.units import format_eps
from robustft.utils.text import percent


@dataclass(frozen=True)
class ResultsRow:
    """One row of a results table: a backbone, a method and one cell per dataset column."""

    backbone: str
    method: str
    cells: tuple[Cell | None, ...]


@dataclass(frozen=True)
class ResultsTable:
    """A paper-style table for one evaluation budget (``norm`` and ``eval_eps``)."""

    eval_eps: float
    datasets: tuple[str, ...]
    rows: tuple[ResultsRow, ...]
    attacks: tuple[str, ...]
    counts: tuple[int, ...]
    standard: tuple[str, ...] = ()
    trained_elsewhere: bool = False
    norm: str = "linf"

    @property
    def title(self) -> str:
        """Heading naming the budget: ``eps_g = 8/255 (l-inf)`` when every robust run was
        trained at it, else ``evaluated at eps = 8/255 (l-inf)``."""
        if self.trained_elsewhere:
            return f"evaluated at eps = {budget_text(self.eval_eps, self.norm)}"
        return f"eps_g = {budget_text(self.eval_eps, self.norm)}"

    def caption(self) -> str:
        """What a cell holds, the attack, and how many seeds."""
        eps = eps_text(self.eval_eps, self.norm)
        if self.counts == (1,):
            seeds = "one seed per cell (n = 1), so no ± std"
        elif len(self.counts) == 1:
            seeds = f"mean ± sample std over n = {self.counts[0]} seeds"
        else:
            seeds = "mean ± sample std over seeds, n per cell in parentheses"
        text = (
            f"Each cell: clean / robust at {eps} / expected robustness on [0, {eps}] "
            f"({norm_name(self.norm)} norm), accuracy in % on the test split "
            f"({', '.join(self.attacks)}); {seeds}."
        )
        if self.standard:
            text += f" Trained with eps_g = 0 (standard fine-tuning): {', '.join(self.standard)}."
        return text

    def cell_text(self, cell: Cell | None) -> str:
        """``clean / robust / E.rob`` with ± std when n > 1 (and n when it varies)."""
        if cell is None:
            return "-"
        text = " / ".join(fmt_stat(s) for s in (cell.clean, cell.robust, cell.expected))
        return text if len(self.counts) == 1 else f"{text} (n={cell.clean.n})"

    def headers(self) -> list[str]:
        """Column headers: backbone, method, then one per dataset."""
        return ["backbone", "method", *self.datasets]

    def body(self) -> list[list[str]]:
        """Rows of text cells."""
        return [
            [row.backbone, row.method, *(self.cell_text(c) for c in row.cells)] for row in self.rows
        ]


NORM_NAMES = {"linf": "l-inf", "l2": "l2"}
"""How each threat-model norm (config ``attack.norm``) is written for readers."""

Budget = tuple[str, float]
"""An evaluation budget: (norm, eval eps rounded to 1e-9)."""


def norm_name(norm: str) -> str:
    """``l-inf`` for ``linf``; other norms as they are (``l2``)."""
    return NORM_NAMES.get(norm, norm)


def eps_text(eps: float, norm: str = "linf") -> str:
    """``16/255`` (l-inf), ``0.5`` (l2 and other norms: a plain decimal), ``0`` for none."""
    if eps == 0:
        return "0"
    return format_eps(eps) if norm == "linf" else f"{eps:.4g}"


def budget_text(eps: float, norm: str) -> str:
    """The eps with its norm: ``8/255 (l-inf)``, ``0.5 (l2)``."""
    return f"{eps_text(eps, norm)} ({norm_name(norm)})"


def budget_of(run: RunRecord) -> Budget:
    """The run's evaluation budget (norm, eval eps)."""
    return (run.norm, round(run.eval_eps, 9))


def budgets(runs: Sequence[RunRecord]) -> list[Budget]:
    """The distinct evaluation budgets: l-inf first, then by norm and eps ascending."""
    return sorted({budget_of(r) for r in runs}, key=lambda b: (b[0] != "linf", b[0], b[1]))


def runs_at(runs: Sequence[RunRecord], budget: Budget) -> list[RunRecord]:
    """The runs evaluated at ``budget``."""
    norm, eps = budget
    return [r for r in runs if r.norm == norm and same_eps(r.eval_eps, eps)]


def fmt_stat(stat: Stat, digits: int = 1) -> str:
    """A fraction statistic in %: ``81.7`` (n = 1) or ``81.7±1.2``."""
    mean = percent(stat.mean, digits)
    return mean if stat.n == 1 else f"{mean}±{percent(stat.std, digits)}"


def results_tables(runs: Sequence[RunRecord]) -> list[ResultsTable]:
    """One :class:`ResultsTable` per evaluation budget (:func:`budgets` order)."""
    tables = []
    for norm, eps in budgets(runs):
        members = runs_at(runs, (norm, eps))
        here = aggregate(members)
        datasets = tuple(sorted({c.dataset for c in here}))
        index = {(c.backbone, c.method, c.dataset): c for c in here}
        rows = []
        for backbone in sorted({c.backbone for c in here}):
            for method in method_order(members):
                row = tuple(index.get((backbone, method, d)) for d in datasets)
                if any(c is not None for c in row):
                    rows.append(ResultsRow(backbone, method, row))
        tables.append(
            ResultsTable(
                eval_eps=eps,
                datasets=datasets,
                rows=tuple(rows),
                attacks=tuple(sorted({r.eval_attack for r in members})),
                counts=tuple(sorted({c.clean.n for c in here})),
                standard=tuple(m for m in method_order(members) if _all_standard(members, m)),
                trained_elsewhere=any(r.eps_g > 0 and not same_eps(r.eps_g, eps) for r in members),
                norm=norm,
            )
        )
    return tables


def _all_standard(runs: Sequence[RunRecord], method: str) -> bool:
    return all(r.eps_g == 0 for r in runs if r.method == method)


RUN_HEADERS = (
    "run",
    "method",
    "backbone",
    "dataset",
    "seed",
    "norm",
    "train eps_g",
    "schedule",
    "eval eps",
    "clean %",
    "robust %",
    "E.rob %",
    "AutoAttack %",
    "delay (epoch)",
    "train (s)",
    "eval (s)",
    "findings",
)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def run_rows(runs: Sequence[RunRecord]) -> list[list[str]]:
    """The per-run table as text cells (headers in :data:`RUN_HEADERS`)."""
    return [
        [
            run.label,
            run.method,
            run.backbone,
            run.dataset,
            str(run.seed),
            norm_name(run.norm),
            eps_text(run.eps_g, run.norm),
            run.schedule,
            eps_text(run.eval_eps, run.norm),
            percent(run.clean, 1),
            percent(run.robust, 1),
            percent(run.expected, 1),
            _autoattack_text(run),
            "never" if run.delay is None else str(run.delay),
            _seconds(run.train_seconds),
            _seconds(run.eval_seconds),
            _findings_text(run),
        ]
        for run in runs
    ]


def _autoattack_text(run: RunRecord) -> str:
    """``12.5 (standard, n=40)``: AutoAttack accuracy at the run's eval eps and the examples it
    was measured on, '-' when not measured."""
    if run.autoattack is None:
        return "-"
    n = "?" if run.autoattack_n is None else run.autoattack_n
    return f"{percent(run.autoattack, 1)} ({run.autoattack_version or '?'}, n={n})"


def _findings_text(run: RunRecord) -> str:
    """Finding codes, and the early stop when the overfitting monitor ended training."""
    parts = [f.code for f in run.findings]
    if run.stopped is not None:
        parts.append(run.stopped.text())
    return ", ".join(parts) or "none"


def finding_lines(runs: Sequence[RunRecord]) -> list[tuple[RunRecord, str, str, str]]:
    """``(run, code, message, suggestion)`` for every finding and evaluation warning."""
    lines = []
    for run in runs:
        for finding in run.findings:
            lines.append((run, finding.code, finding.message, finding.suggestion))
        for warning in run.warnings:
            lines.append((run, "eval_warning", warning, "see the robustness curve"))
        if run.stopped is not None:
            lines.append((run, "early_stop", run.stopped.text(), _stop_suggestion(run)))
    return lines


def _stop_suggestion(run: RunRecord) -> str:
    stop = run.stopped
    if stop is not None and stop.rolled_back_to is not None:
        which = f"the model of epoch {stop.rolled_back_to}"
    elif stop is not None and stop.onset is not None:
        which = f"the model of epoch {stop.onset}"
    else:
        which = "the model at the stop"
    return (
        f"its numbers are for {which}, trained for fewer epochs than configured; compare it "
        "with other runs at equal cost (Cost table)"
    )


def definitions(runs: Sequence[RunRecord]) -> list[str]:
    """Plain-language definitions of the numbers and thresholds used in the report."""
    thresholds = sorted(
        {diagnostics.adaptation_threshold(max(r.num_classes, 1)) for r in runs}, reverse=True
    )
    shown = ", ".join(f"{100 * t:.3g}%" for t in thresholds)
    return [
        "Expected robustness (E.rob): accuracy averaged over eps uniform on [0, eps_g], "
        "trapezoid rule on the evaluation grid; it lies between robust and clean accuracy.",
        "AutoAttack %: accuracy under AutoAttack (the reference implementation, version and "
        "examples in brackets; the RobustBench number) at the eval eps, when measured "
        "(eval.autoattack or robustft eval --autoattack) on the curve's examples; a separate "
        "number, not a point of the APGD curve.",
        "Task-adaptation delay: first epoch whose validation clean accuracy exceeds "
        f"{diagnostics.THRESHOLD_TEXT}, chance = 1 / classes ({shown} here); 'never' if it "
        "did not.",
        "never_adapts: validation accuracy never exceeded that threshold.",
        "collapse_on_ramp: validation accuracy fell more than "
        f"{percent(diagnostics.COLLAPSE_DROP, 0)} points below an earlier peak at an epoch "
        "trained with a larger eps.",
        "suboptimal_transfer: clean accuracy more than "
        f"{percent(diagnostics.SUBOPTIMAL_TRANSFER_GAP, 0)} points below standard fine-tuning "
        "(eps_g = 0, same backbone and dataset, mean over seeds in this report).",
        f"no_robustness: clean above {percent(diagnostics.NO_ROBUSTNESS_CLEAN, 0)}% but robust "
        f"accuracy below {percent(diagnostics.NO_ROBUSTNESS_ROBUST, 0)}% (runs with eps_g > 0).",
        *_norm_definitions(runs),
    ]


def _norm_definitions(runs: Sequence[RunRecord]) -> list[str]:
    """How eps values are written, when the report holds runs of a norm other than l-inf."""
    if all(r.norm == "linf" for r in runs):
        return []
    return [
        "Norm: the threat model of a budget. l-inf eps bound every pixel change and are written "
        "k/255; l2 eps bound the Euclidean length of the whole perturbation (pixels in [0, 1]) "
        "and are written as plain decimals (0.5). Runs of different norms are never in the "
        "same table or plot panel."
    ]
