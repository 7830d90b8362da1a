"""The report's documents: ``report.md`` and the self-contained ``report.html`` (inline CSS,
plots as base64 PNG data URIs). Both hold the results tables, the cost tables, the plots, the
per-run table, the findings, the definitions and the run directories that were skipped;
``report.md`` also the adaptation-delay table (:mod:`robustft.report.delay`).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

from robustft.report import delay
from robustft.report.collect import Collection, RunRecord
from robustft.report.cost import COST_HEADERS, cost_definitions, cost_tables
from robustft.report.tables import (
    RUN_HEADERS,
    ResultsTable,
    definitions,
    finding_lines,
    results_tables,
    run_rows,
)
from robustft.utils.text import markdown_table, md_escape


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
        parts += [f"- {md_escape(line)}" for line in collection.skipped]
    return "\n".join(parts) + "\n"


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
    """An HTML table of escaped text, in a ``<div class="wide">`` (which :data:`CSS` lets
    scroll sideways)."""
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
