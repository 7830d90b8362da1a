"""Text formatting shared by the CLI, reports, model cards, trackers and tuning: the one markdown
table, the plain-text and CSV tables, and the one percentage formatter.

Percentages: accuracies are stored as fractions (0.9876) and shown in % without the sign
(``percent(0.9876)`` is ``98.76``; the text around it says "%"), with a fixed number of
decimals per place: 2 on the command line, in model cards, trackers and tuning tables, 1 in
report tables and diagnostics messages. None (not measured) is shown as ``-``. Metadata that
wants a number rather than text (the model card's YAML) takes :func:`percent_number`.

Markdown tables are GitHub-flavoured with a compact rule (``|---|---|``), and every ``|`` in a
header or a cell is escaped, so a cell such as a LoRA target ``qkv|proj`` stays one cell.
This module imports nothing heavy (no torch): ``robustft --help``, reports and
``benchmarks/table.py`` use it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence


def percent(value: float | None, digits: int = 2) -> str:
    """A fraction as a percentage with ``digits`` decimals and no sign (``percent(0.5)`` is
    ``50.00``, ``percent(0.5, 1)`` is ``50.0``); ``-`` for None."""
    return "-" if value is None else f"{100 * value:.{digits}f}"


def percent_number(value: float | None, digits: int = 2) -> float | None:
    """A fraction as a percentage rounded to ``digits`` decimals, as a number (for YAML or JSON
    metadata that wants numbers, such as the model card's ``model-index``); None stays None."""
    return None if value is None else round(100 * float(value), digits)


def short_number(value: object, digits: int = 4) -> str:
    """A float with ``digits`` significant digits (``0.9123``, ``1e-05``; search values and
    metrics in tuning tables); ``-`` for None; anything else as ``str()`` gives it."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def md_escape(text: str) -> str:
    """``text`` with every ``|`` escaped (``\\|``), so that it stays in one markdown table cell."""
    return text.replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (no trailing newline); ``|`` in headers and cells is
    escaped (:func:`md_escape`). Cells are text: format numbers first (:func:`percent`)."""
    lines = ["| " + " | ".join(md_escape(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An aligned plain-text table for a terminal: the first column left-aligned, the others
    right-aligned, a rule of dashes under the headers. Floats are shown with 2 decimals, None as
    ``-``, anything else as ``str()`` gives it."""
    cells = [[str(h) for h in headers]] + [[_plain(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _plain(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def csv_text(fields: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A CSV file's text: a header row of ``fields``, then ``rows`` (quoted where needed by
    Python's ``csv`` module), each line ending in ``\\n`` like every other text file robustft
    writes (CSV readers, pandas and spreadsheets included, accept it)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(fields)
    writer.writerows(rows)
    return buffer.getvalue()
