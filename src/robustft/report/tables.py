"""Report tables: paper-style results (markdown, HTML), per-run tables, CSV files.

Results tables follow the paper's Table 1: rows are backbone x method, columns are datasets,
each cell "clean / robust at eps_g / expected robustness" in %, here as mean ± sample standard
deviation over seeds (no ± when a cell has one seed; n is always stated). One table per
evaluation budget. The CSV files are tidy: ``report.csv`` has one row per run, and
``report_summary.csv`` one row per table cell (backbone, method, dataset, eval eps).
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from robustft import diagnostics
from robustft.report.collect import (
    Cell,
    Collection,
    RunRecord,
    Stat,
    aggregate,
    eval_eps_values,
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
    """A paper-style table for one evaluation budget."""

    eval_eps: float
    datasets: tuple[str, ...]
    rows: tuple[ResultsRow, ...]
    attacks: tuple[str, ...]
    counts: tuple[int, ...]
    standard: tuple[str, ...] = ()
    trained_elsewhere: bool = False

    @property
    def title(self) -> str:
        """Heading naming the budget: ``eps_g = 8/255`` when every robust run was trained at it,
        else ``evaluated at eps = 8/255``."""
        if self.trained_elsewhere:
            return f"evaluated at eps = {format_eps(self.eval_eps)}"
        return f"eps_g = {format_eps(self.eval_eps)}"

    def caption(self) -> str:
        """What a cell holds, the attack, and how many seeds."""
        eps = format_eps(self.eval_eps)
        if self.counts == (1,):
            seeds = "one seed per cell (n = 1), so no ± std"
        elif len(self.counts) == 1:
            seeds = f"mean ± sample std over n = {self.counts[0]} seeds"
        else:
            seeds = "mean ± sample std over seeds, n per cell in parentheses"
        text = (
            f"Each cell: clean / robust at {eps} / expected robustness on [0, {eps}], accuracy "
            f"in % on the test split ({', '.join(self.attacks)}); {seeds}."
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


def eps_text(eps: float) -> str:
    """``16/255``, or ``0`` for no perturbation."""
    return "0" if eps == 0 else format_eps(eps)


def fmt_stat(stat: Stat, digits: int = 1) -> str:
    """A fraction statistic in %: ``81.7`` (n = 1) or ``81.7±1.2``."""
    mean = f"{100 * stat.mean:.{digits}f}"
    return mean if stat.n == 1 else f"{mean}±{100 * stat.std:.{digits}f}"


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage text, ``-`` for None."""
    return "-" if value is None else f"{100 * value:.{digits}f}"


def results_tables(runs: Sequence[RunRecord]) -> list[ResultsTable]:
    """One :class:`ResultsTable` per evaluation budget, budgets ascending."""
    cells = aggregate(runs)
    tables = []
    for eps in eval_eps_values(runs):
        here = [c for c in cells if same_eps(c.eval_eps, eps)]
        members = [r for r in runs if same_eps(r.eval_eps, eps)]
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
    "train eps_g",
    "schedule",
    "eval eps",
    "clean %",
    "robust %",
    "E.rob %",
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
            eps_text(run.eps_g),
            run.schedule,
            eps_text(run.eval_eps),
            pct(run.clean),
            pct(run.robust),
            pct(run.expected),
            "never" if run.delay is None else str(run.delay),
            _seconds(run.train_seconds),
            _seconds(run.eval_seconds),
            ", ".join(f.code for f in run.findings) or "none",
        ]
        for run in runs
    ]


def finding_lines(runs: Sequence[RunRecord]) -> list[tuple[RunRecord, str, str, str]]:
    """``(run, code, message, suggestion)`` for every finding and evaluation warning."""
    lines = []
    for run in runs:
        for finding in run.findings:
            lines.append((run, finding.code, finding.message, finding.suggestion))
        for warning in run.warnings:
            lines.append((run, "eval_warning", warning, "see the robustness curve"))
    return lines


def definitions(runs: Sequence[RunRecord]) -> list[str]:
    """Plain-language definitions of the numbers and thresholds used in the report."""
    thresholds = sorted(
        {diagnostics.adaptation_threshold(max(r.num_classes, 1)) for r in runs}, reverse=True
    )
    shown = ", ".join(f"{100 * t:.0f}%" for t in thresholds)
    return [
        "Expected robustness (E.rob): accuracy averaged over eps uniform on [0, eps_g], "
        "trapezoid rule on the evaluation grid; it lies between robust and clean accuracy.",
        "Task-adaptation delay: first epoch whose validation clean accuracy exceeds "
        f"max(5%, 2 x chance) ({shown} here); 'never' if it did not.",
        "never_adapts: validation accuracy never exceeded that threshold.",
        "collapse_on_ramp: validation accuracy fell more than "
        f"{100 * diagnostics.COLLAPSE_DROP:.0f} points below an earlier peak at an epoch "
        "trained with a larger eps.",
        "suboptimal_transfer: clean accuracy more than "
        f"{100 * diagnostics.SUBOPTIMAL_TRANSFER_GAP:.0f} points below standard fine-tuning "
        "(eps_g = 0, same backbone and dataset, mean over seeds in this report).",
        f"no_robustness: clean above {100 * diagnostics.NO_ROBUSTNESS_CLEAN:.0f}% but robust "
        f"accuracy below {100 * diagnostics.NO_ROBUSTNESS_ROBUST:.0f}% (runs with eps_g > 0).",
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


def render_markdown(collection: Collection, plots: Sequence[tuple[str, str]]) -> str:
    """The whole ``report.md``.

    Args:
        collection: the diagnosed runs.
        plots: ``(file name, title)`` of each PNG written next to the report.
    """
    runs = collection.runs
    parts = [
        "# robustft report\n",
        f"{len(runs)} runs from `{collection.root}`.\n",
        "## Results\n",
        markdown_results(results_tables(runs)),
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
    parts += [f"- {line}" for line in definitions(runs)]
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
    "final_val_pct",
    "adaptation_delay",
    "train_seconds",
    "eval_seconds",
    "findings",
)

SUMMARY_CSV_FIELDS = (
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
)


def _num(value: float | None, scale: float = 100.0) -> str:
    return "" if value is None else f"{scale * value:.4f}"


def _csv(fields: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(fields)
    writer.writerows(rows)
    return buffer.getvalue()


def runs_csv(runs: Sequence[RunRecord]) -> str:
    """``report.csv``: one row per run; accuracies in %, eps as text and in 1/255 units."""
    rows = [
        [
            run.run_id,
            str(run.path),
            run.name,
            run.method,
            run.backbone,
            run.dataset,
            run.seed,
            eps_text(run.eps_g),
            _num(run.eps_g, 255),
            run.schedule,
            format_eps(run.eval_eps),
            _num(run.eval_eps, 255),
            run.eval_attack,
            run.epochs,
            run.num_classes,
            _num(run.clean),
            _num(run.robust),
            _num(run.expected),
            _num(run.final_val_acc),
            "" if run.delay is None else run.delay,
            "" if run.train_seconds is None else f"{run.train_seconds:.3f}",
            "" if run.eval_seconds is None else f"{run.eval_seconds:.3f}",
            ";".join(f.code for f in run.findings),
        ]
        for run in runs
    ]
    return _csv(RUN_CSV_FIELDS, rows)


def summary_csv(runs: Sequence[RunRecord]) -> str:
    """``report_summary.csv``: one row per table cell, mean and sample std over seeds in %
    (std empty when n = 1)."""
    rows = []
    for cell in aggregate(runs):
        rows.append(
            [
                format_eps(cell.eval_eps),
                _num(cell.eval_eps, 255),
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
            ]
        )
    return _csv(SUMMARY_CSV_FIELDS, rows)


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
        f"<p>{len(runs)} runs from <code>{html.escape(str(collection.root))}</code>.</p>",
        "<h2>Results</h2>",
    ]
    for table in results_tables(runs):
        parts.append(f"<h3>{html.escape(table.title)}</h3>")
        parts.append(f'<p class="caption">{html.escape(table.caption())}</p>')
        parts.append(html_table(table.headers(), table.body()))
    parts.append("<h2>Plots</h2>" + ("" if images else "<p>No plots rendered.</p>"))
    for stem, data in images.items():
        title = html.escape(titles.get(stem, stem))
        parts.append(
            f'<figure><img alt="{title}" src="data:image/png;base64,{data}">'
            f"<figcaption>{title}</figcaption></figure>"
        )
    parts += ["<h2>Runs</h2>", html_table(RUN_HEADERS, run_rows(runs))]
    parts += ["<h2>Findings</h2>", _html_findings(runs), "<h2>Definitions</h2><ul>"]
    parts += [f"<li>{html.escape(line)}</li>" for line in definitions(runs)]
    parts.append("</ul>")
    if collection.skipped:
        parts.append("<h2>Skipped</h2><ul>")
        parts += [f"<li>{html.escape(line)}</li>" for line in collection.skipped]
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
