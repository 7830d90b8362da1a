"""Report tables: paper-style results (markdown, HTML), per-run tables, CSV files.

Results tables follow the paper's Table 1: rows are backbone x method, columns are datasets,
each cell "clean / robust at eps_g / expected robustness" in %, here as mean ± sample standard
deviation over seeds (no ± when a cell has one seed; n is always stated). One table per
evaluation budget, a budget being a threat-model norm and an eps (:func:`budgets`): an l2 run
evaluated at 0.5 and an l-inf run evaluated at 8/255 never share a table. The cost tables put
each method's training compute (measured example-passes, wall time, trainable parameters) next
to its expected robustness, also one per budget. The CSV files are tidy: ``report.csv`` has one
row per run, and ``report_summary.csv`` one row per table cell (backbone, method, dataset, norm,
eval eps).

Every table that shows an eps or a robust accuracy names the norm: table titles print the
budget as ``8/255 (l-inf)`` or ``0.5 (l2)`` (:func:`budget_text`), and the per-run table and
both CSV files have a ``norm`` column (``linf``, ``l2``). l-inf eps are printed as ``k/255``
when they are multiples of 1/255; l2 (and any other norm) eps as plain decimals, never as
``k/255``, and their ``*_255`` CSV columns are left empty.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from robustft import diagnostics
from robustft.report import delay
from robustft.report.collect import (
    Cell,
    Collection,
    CostSummary,
    RunRecord,
    Stat,
    aggregate,
    method_order,
    same_eps,
)
from robustft.units import format_eps


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
    mean = f"{100 * stat.mean:.{digits}f}"
    return mean if stat.n == 1 else f"{mean}±{100 * stat.std:.{digits}f}"


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage text, ``-`` for None."""
    return "-" if value is None else f"{100 * value:.{digits}f}"


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
            pct(run.clean),
            pct(run.robust),
            pct(run.expected),
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
    return f"{pct(run.autoattack)} ({run.autoattack_version or '?'}, n={n})"


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
        f"{100 * diagnostics.COLLAPSE_DROP:.0f} points below an earlier peak at an epoch "
        "trained with a larger eps.",
        "suboptimal_transfer: clean accuracy more than "
        f"{100 * diagnostics.SUBOPTIMAL_TRANSFER_GAP:.0f} points below standard fine-tuning "
        "(eps_g = 0, same backbone and dataset, mean over seeds in this report).",
        f"no_robustness: clean above {100 * diagnostics.NO_ROBUSTNESS_CLEAN:.0f}% but robust "
        f"accuracy below {100 * diagnostics.NO_ROBUSTNESS_ROBUST:.0f}% (runs with eps_g > 0).",
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


# ---------------------------------------------------------------------------- cost

COST_HEADERS = (
    "backbone",
    "dataset",
    "method",
    "n",
    "trainable params (% of all)",
    "passes/step",
    "train example-passes (10^6)",
    "x standard FT",
    "s/epoch",
    "examples/s",
    "E.rob %",
    "E.rob gain (points per 10^6 extra example-passes)",
)


@dataclass(frozen=True)
class CostTable:
    """Training compute next to expected robustness, per (backbone, dataset, method), for one
    evaluation budget (``norm``, ``eval_eps``); ``missing`` runs of that budget had no cost
    data."""

    eval_eps: float
    cells: tuple[Cell, ...]
    missing: int = 0
    norm: str = "linf"

    @property
    def title(self) -> str:
        """Heading naming the budget at which E.rob was measured: ``E.rob on [0, 8/255]
        (l-inf)``."""
        return f"E.rob on [0, {eps_text(self.eval_eps, self.norm)}] ({norm_name(self.norm)})"

    def caption(self) -> str:
        """What the columns hold and how they were averaged."""
        text = (
            "Training compute per method, mean over the n runs with cost data (± sample std when "
            "the runs differ). Example-passes: forward + backward passes through the model "
            "during training, weighted by batch size (measured, hardware-independent). "
            "'x standard FT' and 'E.rob gain' compare with standard fine-tuning (eps_g = 0) of "
            "the same backbone, dataset and fine-tuning mode; '-' when there is none or the "
            "method used no extra passes. s/epoch and examples/s are wall-clock (hardware-"
            "dependent)."
        )
        if self.missing:
            runs = "run has" if self.missing == 1 else "runs have"
            text += f" {self.missing} {runs} no cost data (made before cost accounting), left out."
        return text

    def body(self) -> list[list[str]]:
        """Rows of text cells (headers in :data:`COST_HEADERS`)."""
        rows = []
        for cell in self.cells:
            cost = cell.cost
            assert cost is not None  # cells without cost are not in the table
            rows.append(
                [
                    cell.backbone,
                    cell.dataset,
                    cell.method,
                    str(cost.n),
                    _params_text(cost),
                    _stat_text(cost.passes_per_step, lambda v, _: f"{v:.3g}"),
                    _stat_text(cost.example_passes, _sig, scale=1e-6),
                    "-" if cost.relative_cost is None else f"{cost.relative_cost:.3g}x",
                    _stat_text(cost.seconds_per_epoch, _sig),
                    _stat_text(cost.examples_per_second, _sig),
                    fmt_stat(cost.expected),
                    "-" if cost.gain_per_million is None else _sig(cost.gain_per_million),
                ]
            )
        return rows


def _digits(value: float) -> int:
    """Decimals that show three significant digits of ``value`` (0 for |value| >= 100)."""
    if value == 0 or not math.isfinite(value):
        return 0
    return max(0, 2 - math.floor(math.log10(abs(value))))


def _sig(value: float, digits: int | None = None) -> str:
    """``value`` with three significant digits and no exponent: 0.0560, 5.60, 560, 5600."""
    return f"{value:.{_digits(value) if digits is None else digits}f}"


def _stat_text(stat: Stat | None, fmt: Callable[[float, int], str], scale: float = 1.0) -> str:
    """Mean (and ±std at the mean's precision when n > 1 and the values differ); ``-`` for
    None. ``fmt(value, digits)`` formats a number."""
    if stat is None:
        return "-"
    mean = scale * stat.mean
    text = fmt(mean, _digits(mean))
    if stat.n > 1 and stat.std > 0:
        text += "±" + fmt(scale * stat.std, _digits(mean))
    return text


def _count_text(value: float) -> str:
    """``4.01M``, ``12.3k``, ``830``."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return _sig(value / size) + suffix
    return f"{value:.0f}"


def _params_text(cost: CostSummary) -> str:
    if cost.trainable_parameters is None:
        return "-"
    text = _count_text(cost.trainable_parameters.mean)
    if cost.trainable_fraction is not None:
        text += f" ({100 * cost.trainable_fraction.mean:.3g}%)"
    return text


def cost_tables(runs: Sequence[RunRecord]) -> list[CostTable]:
    """One :class:`CostTable` per evaluation budget that has runs with cost data."""
    tables = []
    for norm, eps in budgets(runs):
        members = runs_at(runs, (norm, eps))
        rank = {m: i for i, m in enumerate(method_order(members))}
        here = sorted(
            (c for c in aggregate(members) if c.cost is not None),
            key=lambda c: (c.backbone, c.dataset, rank[c.method]),
        )
        if here:
            missing = sum(r.cost is None for r in members)
            tables.append(CostTable(eps, tuple(here), missing, norm))
    return tables


def cost_definitions(runs: Sequence[RunRecord]) -> list[str]:
    """Definitions of the cost numbers (none when no run has cost data)."""
    if all(r.cost is None for r in runs):
        return []
    return [
        "Training example-passes: forward plus backward passes through the model during "
        "training (attack crafting and parameter updates), each weighted by its batch size, "
        "counted by hooks on the model as they happen; the overfitting monitor and the "
        "evaluation are not included. Passes are not FLOPs: a backward pass costs about two "
        "forwards, and with a frozen backbone (linear probe, LoRA, BitFit, partial) it skips "
        "most weight gradients (an attack's input gradient still crosses the whole network).",
        "Passes per step: forward passes per optimizer step (1 for standard fine-tuning, 2 for "
        "FGSM, k + 1 for PGD-k).",
        "Pass counts are measured and hardware-independent: they depend only on the data, the "
        "epochs actually trained, the batch and the attack. Seconds per epoch and examples per "
        "second are wall-clock: they depend on the hardware, data loading and other load on "
        "the machine, and compare only runs made on the same machine under the same load.",
        "Trainable parameters: parameters the optimizer updates, with their share of all "
        "parameters of the model (head included).",
        "Robustness per compute: E.rob is not divided by cost (a ratio would favour standard "
        "fine-tuning, cheap and with E.rob above zero). The Cost table shows E.rob next to the "
        "cost, the cost as a multiple of standard fine-tuning (eps_g = 0, same backbone, "
        "dataset, fine-tuning mode and eval budget, mean over its seeds), and the E.rob gain "
        "over it per unit of extra compute: (E.rob - E.rob of standard FT) in points / "
        "((example-passes - those of standard FT) / 10^6). The gain is the average rate "
        "between two points, not a slope; compare methods of similar cost, or read the "
        "cost_vs_robustness plot.",
    ]


# ---------------------------------------------------------------------------- markdown


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(_md_escape(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_results(tables: Sequence[ResultsTable]) -> str:
    """The results tables with their headings and captions."""
    parts = []
    for table in tables:
        parts.append(f"### {table.title}\n\n{table.caption()}\n")
        parts.append(markdown_table(table.headers(), table.body()) + "\n")
    return "\n".join(parts)


def markdown_cost(runs: Sequence[RunRecord]) -> str:
    """The cost tables with headings and captions (a note when no run has cost data)."""
    tables = cost_tables(runs)
    if not tables:
        return "No run recorded its compute cost (runs made before cost accounting).\n"
    parts = []
    for table in tables:
        parts.append(f"### {table.title}\n\n{table.caption()}\n")
        parts.append(markdown_table(COST_HEADERS, table.body()) + "\n")
    return "\n".join(parts)


def render_markdown(collection: Collection, plots: Sequence[tuple[str, str]]) -> str:
    """The whole ``report.md``.

    Args:
        collection: the diagnosed runs.
        plots: ``(file name, title)`` of each PNG written next to the report.
    """
    runs = collection.runs
    parts = [
        "# robustft report\n",
        f"{len(runs)} runs from {', '.join(f'`{r}`' for r in collection.roots)}.\n",
        "## Results\n",
        markdown_results(results_tables(runs)),
        "## Cost\n",
        markdown_cost(runs),
        "## Adaptation delay and clean accuracy\n",
        delay.markdown_section(runs),
        "## Runs\n",
        markdown_table(RUN_HEADERS, run_rows(runs)) + "\n",
        "## Findings\n",
    ]
    lines = finding_lines(runs)
    if not lines:
        parts.append(f"No failure signature in {len(runs)} runs.\n")
    for run, code, message, suggestion in lines:
        parts.append(f"- `{run.label}` ({run.context}) **{code}**: {message}.")
        parts.append(f"  Suggestion: {suggestion}.")
    parts.append("\n## Plots\n")
    parts += [f"![{title}]({name})\n" for name, title in plots] or ["No plots rendered.\n"]
    parts.append("## Definitions\n")
    parts += [f"- {line}" for line in definitions(runs) + cost_definitions(runs)]
    if collection.skipped:
        parts.append("\n## Skipped\n")
        parts += [f"- {_md_escape(line)}" for line in collection.skipped]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- CSV

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


def _csv(fields: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(fields)
    writer.writerows(rows)
    return buffer.getvalue()


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
    return _csv(RUN_CSV_FIELDS, rows)


def summary_csv(runs: Sequence[RunRecord]) -> str:
    """``report_summary.csv``: one row per table cell (per budget, :func:`budgets` order), mean
    and sample std over seeds in % (std empty when n = 1)."""
    rows = []
    for norm, eps in budgets(runs):
        rows += _summary_rows(runs_at(runs, (norm, eps)), norm)
    return _csv(SUMMARY_CSV_FIELDS, rows)


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


# ---------------------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }
th { background: #f3f3f3; } td:first-child, td:nth-child(2), th:first-child { text-align: left; }
.caption { color: #555; font-size: 0.9rem; } .wide { overflow-x: auto; }
code { background: #f5f5f5; padding: 0 0.2rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9rem; }
.finding { margin: 0.4rem 0; } .code { font-weight: 600; }
"""


def html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table with escaped text."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<div class="wide"><table><tr>{head}</tr>{body}</table></div>'


def _html_findings(runs: Sequence[RunRecord]) -> str:
    lines = finding_lines(runs)
    if not lines:
        return f"<p>No failure signature in {len(runs)} runs.</p>"
    items = [
        f'<li class="finding"><code>{html.escape(run.label)}</code> '
        f"({html.escape(run.context)}) "
        f'<span class="code">{html.escape(code)}</span>: {html.escape(message)}.<br>'
        f"Suggestion: {html.escape(suggestion)}.</li>"
        for run, code, message, suggestion in lines
    ]
    return "<ul>" + "".join(items) + "</ul>"


def render_html(
    collection: Collection, images: Mapping[str, str], titles: Mapping[str, str]
) -> str:
    """The self-contained ``report.html``: inline CSS, plots as base64 PNG data URIs.

    Args:
        collection: the diagnosed runs.
        images: plot stem -> base64-encoded PNG.
        titles: plot stem -> caption.
    """
    runs = collection.runs
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f"<title>robustft report</title><style>{CSS}</style></head><body>",
        "<h1>robustft report</h1>",
        f"<p>{len(runs)} runs from "
        + ", ".join(f"<code>{html.escape(str(r))}</code>" for r in collection.roots)
        + ".</p>",
        "<h2>Results</h2>",
    ]
    for table in results_tables(runs):
        parts.append(f"<h3>{html.escape(table.title)}</h3>")
        parts.append(f'<p class="caption">{html.escape(table.caption())}</p>')
        parts.append(html_table(table.headers(), table.body()))
    parts.append("<h2>Cost</h2>")
    tables = cost_tables(runs)
    if not tables:
        parts.append("<p>No run recorded its compute cost (runs made before cost accounting).</p>")
    for cost in tables:
        parts.append(f"<h3>{html.escape(cost.title)}</h3>")
        parts.append(f'<p class="caption">{html.escape(cost.caption())}</p>')
        parts.append(html_table(COST_HEADERS, cost.body()))
    parts.append("<h2>Plots</h2>" + ("" if images else "<p>No plots rendered.</p>"))
    for stem, data in images.items():
        title = html.escape(titles.get(stem, stem))
        parts.append(
            f'<figure><img alt="{title}" src="data:image/png;base64,{data}">'
            f"<figcaption>{title}</figcaption></figure>"
        )
    parts += ["<h2>Runs</h2>", html_table(RUN_HEADERS, run_rows(runs))]
    parts += ["<h2>Findings</h2>", _html_findings(runs), "<h2>Definitions</h2><ul>"]
    lines = definitions(runs) + cost_definitions(runs)
    parts += [f"<li>{html.escape(line)}</li>" for line in lines]
    parts.append("</ul>")
    if collection.skipped:
        parts.append("<h2>Skipped</h2><ul>")
        parts += [f"<li>{html.escape(line)}</li>" for line in collection.skipped]
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
