"""Benchmark rows and their markdown tables.

A row is one contender of one comparison (a *case*): its median time, its speed-up over the
case's reference contender (reference median / its median: above 1 is faster), what it measured
(accuracy, expected robustness, passes) and the settings it ran with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from timing import Settings, Timing


def rows_of(
    section: str,
    case: str,
    timings: dict[str, Timing],
    reference: str,
    setup: dict[str, Settings],
    measured: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per contender of a case; ``measured[name]`` adds e.g. ``accuracy``."""
    base = timings[reference].median
    rows = []
    for name, timing in timings.items():
        rows.append(
            {
                "section": section,
                "case": case,
                "contender": name,
                "median_s": round(timing.median, 4),
                "times_s": [round(t, 4) for t in timing.seconds],
                "reference": reference,
                "speedup": round(base / timing.median, 3) if timing.median > 0 else None,
                **(measured or {}).get(name, {}),
                "settings": setup[name].as_dict(),
                "settings_label": setup[name].label(),
            }
        )
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def section_table(rows: Sequence[dict[str, Any]], measure: str, label: str) -> str:
    """Markdown of one section: case, contender, median, speed-up vs the case's reference,
    the section's measure (``measure`` key, column ``label``), settings."""
    headers = ["case", "contender", "median s", "speed-up", label, "settings"]
    body = [
        [
            r["case"],
            r["contender"] + (" (reference)" if r["contender"] == r["reference"] else ""),
            r["median_s"],
            f"{r['speedup']:.2f}x" if r.get("speedup") else "",
            r.get(measure),
            r["settings_label"],
        ]
        for r in rows
    ]
    return markdown(headers, body)
