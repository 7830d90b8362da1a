"""Task-adaptation delay against final clean accuracy (Ngnawé et al. 2025, Figure 3: across
runs, the later a run starts to adapt, the lower its clean accuracy ends; the paper reports
correlations below -0.9).

One correlation per (backbone, dataset) over all its runs (methods, seeds, budgets). A run that
never adapted has no delay; it counts with a delay of its length + 1 epochs (censored: it adapted,
if ever, after the run ended), so the runs that fail worst are not left out; the table says how
many there were. Pearson's r needs at least three runs and a spread in both values.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from robustft.report.collect import RunRecord
from robustft.utils.text import markdown_table


@dataclass(frozen=True)
class DelayPoint:
    """One run: its delay (censored at epochs + 1 when it never adapted) and clean accuracy."""

    run: RunRecord
    delay: int
    clean: float
    censored: bool


@dataclass(frozen=True)
class DelayCorrelation:
    """Pearson's r between delay and clean accuracy for the runs of one backbone and dataset
    (None when it is undefined: fewer than three runs, or no spread)."""

    backbone: str
    dataset: str
    points: tuple[DelayPoint, ...]
    r: float | None

    @property
    def censored(self) -> int:
        return sum(p.censored for p in self.points)


def delay_point(run: RunRecord) -> DelayPoint:
    censored = run.delay is None
    delay = run.epochs + 1 if run.delay is None else run.delay
    return DelayPoint(run, delay, run.clean, censored)


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson's correlation coefficient, or None with fewer than 3 points or no spread."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return statistics.correlation(xs, ys)


def delay_correlations(runs: Sequence[RunRecord]) -> list[DelayCorrelation]:
    """One :class:`DelayCorrelation` per (backbone, dataset), in sorted order."""
    out = []
    for backbone, dataset in sorted({(r.backbone, r.dataset) for r in runs}):
        members = [r for r in runs if (r.backbone, r.dataset) == (backbone, dataset)]
        points = tuple(delay_point(r) for r in members)
        r = pearson([p.delay for p in points], [p.clean for p in points])
        out.append(DelayCorrelation(backbone, dataset, points, r))
    return out


def markdown_section(runs: Sequence[RunRecord]) -> str:
    """The report's "Adaptation delay and clean accuracy" table."""
    rows = [
        [
            c.backbone,
            c.dataset,
            str(len(c.points)),
            str(c.censored),
            "-" if c.r is None else f"{c.r:+.2f}",
        ]
        for c in delay_correlations(runs)
    ]
    headers = ["backbone", "dataset", "runs", "never adapted", "r"]
    return (
        "Pearson's r between the task-adaptation delay (epochs) and the final clean accuracy, "
        "over all runs of a backbone and dataset (the paper reports r < -0.9); runs that never "
        "adapted count with a delay of their length + 1.\n\n" + markdown_table(headers, rows) + "\n"
    )
