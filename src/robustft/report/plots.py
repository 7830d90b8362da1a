"""Report plots (PNG and SVG). The only module of robustft that uses matplotlib.

matplotlib is imported inside the functions, so importing :mod:`robustft` never needs it. The
figures are built with the object-oriented API (``matplotlib.figure.Figure`` rendered by the Agg
canvas for PNG and the SVG canvas for SVG): pyplot and its global backend are never touched, so
a report can be made inside a notebook or a headless job alike.

A panel shows one evaluation budget, a norm and an eps (:func:`~robustft.report.tables.budgets`):
runs of different norms never share a panel. l-inf eps are drawn in /255 units, l2 eps as they
are, and every eps axis and title names its norm.

Plots:

* ``val_accuracy``: validation clean accuracy per epoch, one panel per (budget, backbone,
  dataset), one line per run coloured by method; the training eps schedule on a second y-axis;
  the task-adaptation delay marked with an X and given in the legend.
* ``robustness_curves``: accuracy under attack against eps, one panel per (budget, backbone,
  dataset), mean over seeds; the shaded area under each curve is the expected robustness (its
  value is in the legend).
* ``expected_robustness``: expected robustness per method as bars (mean over seeds, error bars
  = sample std when there are several seeds), one panel per budget. Every method has a legend
  entry, right of the axes; with one (backbone, dataset) and a few short method names the bars
  are named on the x axis instead.
* ``cost_vs_robustness``: expected robustness against training example-passes (forward +
  backward, measured; log scale), one panel per (budget, backbone, dataset): a small faded
  marker per run and, per method, the mean over seeds with sample-std error bars in both axes.
  Skipped when no run recorded its cost.

Layout: every panel's plotting area is :data:`AXES_SIZE` inches (wider for many bars). Legends
sit outside the axes, below them (right of them for bars), with one entry per plotted method;
long labels are wrapped. The figure is sized from the measured extent of each panel's tick
labels, titles and legend (:func:`fit_figure`), so constrained layout never has to squeeze an
axes. A method keeps its colour, marker and (past the tenth method) hatch across all figures.

Splitting: a figure that would hold more than :data:`MAX_PANELS` panels (expected_robustness:
more than :data:`MAX_PANELS` budgets or :data:`MAX_BARS` bars in a panel) is split into one
figure per (dataset, norm), named ``<plot>__<dataset>__<norm>``, e.g.
``robustness_curves__digits__linf.png`` or ``robustness_curves__imagefolder-x-birds__l2.png``
(the dataset name made file-safe, :func:`split_groups`). When the runs are all one dataset and
norm, or the figure fits, it keeps its plain name (``robustness_curves.png``).
"""

from __future__ import annotations

import io
import math
import re
import statistics
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from robustft.diagnostics import adaptation_threshold
from robustft.report.collect import Cell, RunRecord, aggregate, method_order
from robustft.report.tables import Budget, budget_text, budgets, eps_text, norm_name, runs_at

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.backend_bases import RendererBase
    from matplotlib.figure import Figure

PALETTE = (
    "#4d4d4d",  # grey: first method (standard fine-tuning when present)
    "#d62728",  # red
    "#1f77b4",  # blue
    "#2ca02c",  # green
    "#9467bd",  # purple
    "#ff7f0e",  # orange
    "#8c564b",  # brown
    "#e377c2",  # pink
    "#17becf",  # cyan
    "#bcbd22",  # olive
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
HATCHES = ("", "//", "..", "xx", "\\\\", "++", "oo", "--", "||", "**")
DPI = 150
AXES_SIZE = (4.8, 3.0)  # inches of each panel's plotting area
BAR_SLOT = 0.45  # inches of axes width per bar
MAX_PANELS = 4  # more panels than this: one figure per (dataset, norm)
MAX_BARS = 24  # more bars than this in a panel: one figure per (dataset, norm)
DIRECT_LABELS = (8, 14)  # at most 8 bars with names of at most 14 characters: named on x
WRAP = 56  # characters per legend line
GAP = 0.1  # inches between an axes' decorations and its legend
CELL_PAD = 0.25  # inches around each panel for constrained layout's padding
TITLE_HEIGHT = 0.5  # inches for the figure title
RC: dict[Any, Any] = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "svg.hashsalt": "robustft",
    "svg.fonttype": "none",
}

PanelKey = tuple[str, float, str, str]
"""(norm, eval eps, backbone, dataset): what one panel shows."""


@dataclass(frozen=True)
class PlotFile:
    """One rendered plot: file stem, caption and its PNG and SVG bytes."""

    stem: str
    title: str
    png: bytes
    svg: bytes


@dataclass(frozen=True)
class PlotFigure:
    """One laid-out figure before rendering: file stem, caption and the Figure."""

    stem: str
    title: str
    figure: Figure


@dataclass(frozen=True)
class Style:
    """How a method is drawn. ``cycle`` counts the times the palette wrapped before it (0 for
    the first ten methods); later cycles draw markers on lines and hatch their bars."""

    color: str
    marker: str
    hatch: str
    cycle: int


def method_styles(runs: Sequence[RunRecord]) -> dict[str, Style]:
    """A fixed style per method, in :func:`~robustft.report.collect.method_order`; no two of
    the first 100 methods share both colour and marker."""
    n = len(PALETTE)
    return {
        method: Style(
            PALETTE[i % n],
            MARKERS[(i + i // n) % len(MARKERS)],
            HATCHES[i // n % len(HATCHES)],
            i // n,
        )
        for i, method in enumerate(method_order(runs))
    }


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 2)
    return math.ceil(n / cols), cols


def _new_figure(panels: int, size: tuple[float, float] = AXES_SIZE) -> tuple[Figure, list[Axes]]:
    """A constrained-layout figure with ``panels`` axes, 2 per row (sized by fit_figure)."""
    from matplotlib.figure import Figure

    rows, cols = _grid(panels)
    fig = Figure(figsize=(cols * (size[0] + 3), rows * (size[1] + 3)), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for extra in axes[panels:]:
        extra.set_visible(False)
    return fig, axes[:panels]


def _wrap(text: str) -> str:
    return textwrap.fill(text, WRAP, subsequent_indent="  ", break_on_hyphens=False)


def _legend(
    ax: Axes, side: str, title: str | None = None, extra: Sequence[tuple[Artist, str]] = ()
) -> None:
    """The legend of ``ax``'s labelled artists (and ``extra`` keys) outside the axes: ``below``
    (centred) or ``right`` (top-aligned); :func:`fit_figure` moves it clear of tick labels."""
    handles, labels = ax.get_legend_handles_labels()
    handles += [h for h, _ in extra]
    labels = [_wrap(label) for label in [*labels, *(text for _, text in extra)]]
    ncol = 2 if side == "below" and len(labels) > 4 and max(map(len, labels)) <= 30 else 1
    place: dict[str, Any] = (
        {"loc": "upper center", "bbox_to_anchor": (0.5, 0.0)}
        if side == "below"
        else {"loc": "upper left", "bbox_to_anchor": (1.0, 1.0)}
    )
    ax.legend(handles, labels, borderaxespad=0.0, frameon=False, ncol=ncol, title=title, **place)


def fit_figure(
    fig: Figure, axes: Sequence[Axes], title: str, side: str, size: tuple[float, float] = AXES_SIZE
) -> None:
    """Give ``fig`` its ``title`` and the size that leaves every panel's plotting area ``size``
    inches: each column and row gets the widest margins its panels' decorations and legends
    (on ``side``: ``below`` or ``right``) measure, so constrained layout needs no shrinking."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    heading = fig.suptitle(title)
    renderer = FigureCanvasAgg(fig).get_renderer()
    rows, cols = _grid(len(axes))
    left, right, top, bottom = [0.0] * cols, [0.0] * cols, [0.0] * rows, [0.0] * rows
    for i, ax in enumerate(axes):
        row, col = divmod(i, cols)
        margins = _margins(fig, ax, renderer, side, size)
        left[col], right[col] = max(left[col], margins[0]), max(right[col], margins[1])
        top[row], bottom[row] = max(top[row], margins[2]), max(bottom[row], margins[3])
    width = sum(left) + sum(right) + cols * (size[0] + CELL_PAD)
    height = sum(top) + sum(bottom) + rows * (size[1] + CELL_PAD) + TITLE_HEIGHT
    heading_width = heading.get_window_extent(renderer).width / fig.dpi + CELL_PAD
    fig.set_size_inches(max(width, heading_width), height)


def _margins(
    fig: Figure, ax: Axes, renderer: RendererBase, side: str, size: tuple[float, float]
) -> tuple[float, float, float, float]:
    """Inches that ``ax``'s decorations (twin axes included) and legend take left of, right of,
    above and below its plotting area; anchors the legend just outside the decorations."""
    from matplotlib.transforms import Bbox, offset_copy

    legend = ax.get_legend()
    if legend is not None:
        legend.set_visible(False)
    frame = ax.get_window_extent(renderer)
    where = ax.get_position().bounds
    boxes = [
        a.get_tightbbox(renderer)
        for a in fig.axes
        if a.get_visible() and a.get_position().bounds == where
    ]
    box = Bbox.union([b for b in boxes if b is not None])
    dpi = fig.dpi
    left, right = (frame.x0 - box.x0) / dpi, (box.x1 - frame.x1) / dpi
    top, bottom = (box.y1 - frame.y1) / dpi, (frame.y0 - box.y0) / dpi
    if legend is None:
        return left, right, top, bottom
    legend.set_visible(True)
    extent = legend.get_window_extent(renderer)
    width, height = extent.width / dpi, extent.height / dpi
    if side == "below":
        shift = offset_copy(ax.transAxes, fig=fig, y=-(bottom + GAP), units="inches")
        legend.set_bbox_to_anchor((0.5, 0.0), transform=shift)
        overflow = max(0.0, (width - size[0]) / 2)
        return max(left, overflow), max(right, overflow), top, bottom + GAP + height
    shift = offset_copy(ax.transAxes, fig=fig, x=right + GAP, units="inches")
    legend.set_bbox_to_anchor((1.0, 1.0), transform=shift)
    return left, right + GAP + width, top, max(bottom, height - size[1])


def _panel_key(run: RunRecord) -> PanelKey:
    return (run.norm, round(run.eval_eps, 9), run.backbone, run.dataset)


def _panels(runs: Sequence[RunRecord]) -> list[tuple[PanelKey, list[RunRecord]]]:
    """Runs by panel (l-inf budgets first), each sorted by method order and seed."""
    groups: dict[PanelKey, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(_panel_key(run), []).append(run)
    order = {m: i for i, m in enumerate(method_order(runs))}
    return [
        (key, sorted(members, key=lambda r: (order[r.method], r.seed)))
        for key, members in sorted(groups.items(), key=lambda kv: (kv[0][0] != "linf", kv[0]))
    ]


def _eps_unit(norm: str) -> tuple[float, str, str]:
    """Scale, unit and axis text of eps values: 255, ``/255``, ``/255, l-inf`` for l-inf;
    1 and the norm's name for l2 (plain values)."""
    if norm == "linf":
        return 255.0, "/255", "/255, l-inf"
    return 1.0, norm_name(norm), norm_name(norm)


def _delay_text(delays: Sequence[int | None]) -> str:
    known = sorted(d for d in delays if d is not None)
    if not known:
        return "never adapts"
    if len(known) < len(delays):
        return f"delay {known[0]}-{known[-1]}, some never"
    return f"delay {known[0]}" if known[0] == known[-1] else f"delay {known[0]}-{known[-1]}"


def _val_panel(ax: Axes, runs: Sequence[RunRecord], styles: Mapping[str, Style]) -> None:
    from matplotlib.ticker import MaxNLocator

    twin = ax.twinx()
    norm = runs[0].norm
    scale, unit, _ = _eps_unit(norm)
    eps_top = 0.0
    labelled: set[str] = set()
    rank = {m: i for i, m in enumerate(styles)}
    for run in runs:
        style = styles[run.method]
        epochs = [r.epoch for r in run.history]
        acc = [math.nan if r.val_acc is None else 100 * r.val_acc for r in run.history]
        eps = [scale * r.eps for r in run.history]
        eps_top = max(eps_top, *eps)
        label = None
        if run.method not in labelled:
            delays = [r.delay for r in runs if r.method == run.method]
            label = f"{run.method} ({_delay_text(delays)})"
            labelled.add(run.method)
        # earlier methods drawn wider underneath, so identical curves (the same clean epochs
        # under standard FT and a hinge) stay visible
        width = 2.8 - 0.5 * min(rank[run.method] % len(PALETTE), 3)
        marker = style.marker if style.cycle else None
        ax.plot(epochs, acc, color=style.color, lw=width, marker=marker, label=label, zorder=3)
        twin.plot(epochs, eps, color=style.color, lw=1.2, ls="--", drawstyle="steps-mid", alpha=0.7)
        if run.delay is not None and run.delay in epochs:
            y = acc[epochs.index(run.delay)]
            ax.plot([run.delay], [y], "X", color=style.color, mec="black", mew=0.8, ms=9, zorder=4)
    threshold = 100 * adaptation_threshold(max(runs[0].num_classes, 1))
    ax.axhline(threshold, color="#999999", lw=1, ls=":", zorder=1)
    ax.set_ylim(0, 100)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation clean accuracy (%)")
    twin.set_ylabel(f"training eps ({unit}), dashed")
    # eps_g sits at ~83% of the height, below the typical final accuracy of an easy task
    high = max(eps_top, 1.0) if norm == "linf" else eps_top or 1.0
    twin.set_ylim(-0.03 * high, 1.2 * high)
    if norm == "linf":
        twin.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)
    _integer_ticks(ax)
    _val_legend(ax, threshold)


def _integer_ticks(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _val_legend(ax: Axes, threshold: float) -> None:
    """One entry per method, then the keys of the line styles and markers."""
    from matplotlib.lines import Line2D

    keys = [
        (Line2D([], [], color="black", lw=2), "val. clean accuracy (left)"),
        (Line2D([], [], color="black", lw=1.3, ls="--"), "training eps (right)"),
        (Line2D([], [], color="black", ls="none", marker="X", ms=8), "adaptation delay"),
        (Line2D([], [], color="#999999", lw=1, ls=":"), f"adaptation threshold ({threshold:.3g}%)"),
    ]
    _legend(ax, "below", extra=keys)


def val_accuracy_figure(
    runs: Sequence[RunRecord], styles: Mapping[str, Style] | None = None
) -> Figure | None:
    """Validation clean accuracy per epoch with the eps schedule; None without histories."""
    panels = _panels([r for r in runs if r.history])
    if not panels:
        return None
    styles = styles or method_styles(runs)
    fig, axes = _new_figure(len(panels))
    # the budget when it tells panels apart or is not l-inf (the eps axis is in its units)
    several = len({key[:2] for key, _ in panels}) > 1 or panels[0][0][0] != "linf"
    for ax, ((norm, eps, backbone, dataset), members) in zip(axes, panels):
        where = f"; eval budget {budget_text(eps, norm)}" if several else ""
        ax.set_title(f"{backbone} on {dataset}{where}")
        _val_panel(ax, members, styles)
    fit_figure(fig, axes, "Validation clean accuracy per epoch and training eps schedule", "below")
    return fig


def _mean_curves(runs: Sequence[RunRecord]) -> list[tuple[str, list[float], list[float], str]]:
    """Per method: the method, eps, mean accuracy (%), legend label. Unequal grids: per run."""
    out = []
    for method in method_order(runs):
        members = [r for r in runs if r.method == method and r.curve is not None]
        grids = {tuple(round(e, 9) for e in r.curve.epsilons) for r in members if r.curve}
        sets = [members] if len(grids) == 1 else [[r] for r in members]
        for group in sets:
            curves = [r.curve for r in group if r.curve is not None]
            eps = list(curves[0].epsilons)
            acc = [100 * statistics.fmean(c.accuracy[i] for c in curves) for i in range(len(eps))]
            values = [100 * c.expected_robustness for c in curves]
            stat = f"{statistics.fmean(values):.1f}%"
            if len(values) > 1:
                stat += f" ± {statistics.stdev(values):.1f} (n={len(values)})"
            out.append((method, eps, acc, f"{method}: E.rob {stat}"))
    return out


def _curve_panel(
    ax: Axes, key: PanelKey, runs: Sequence[RunRecord], styles: Mapping[str, Style]
) -> None:
    norm, eps_max, backbone, dataset = key
    scale, _, axis_text = _eps_unit(norm)
    for method, eps, acc, label in _mean_curves(runs):
        style = styles[method]
        xs = [scale * e for e in eps]
        ax.plot(xs, acc, color=style.color, lw=2, marker=style.marker, ms=4, label=label)
        ax.fill_between(xs, 0, acc, color=style.color, alpha=0.14, lw=0)
    attacks = ", ".join(sorted({r.eval_attack for r in runs}))
    ax.set_title(f"{backbone} on {dataset}; eval {attacks}")
    ax.set_xlabel(f"perturbation size eps ({axis_text})")
    ax.set_ylabel("accuracy under attack (%)")
    right = max(round(scale * eps_max, 6), 1.0) if norm == "linf" else eps_max or 1.0
    ax.set_xlim(-0.02 * right, 1.02 * right)
    ax.set_ylim(0, 100)
    if norm == "linf":
        _integer_ticks(ax)
    ax.grid(alpha=0.3)
    budget = eps_text(eps_max, norm)
    _legend(ax, "below", f"E.rob = mean accuracy on [0, {budget}] (shaded area / eps_max)")


def robustness_figure(
    runs: Sequence[RunRecord], styles: Mapping[str, Style] | None = None
) -> Figure | None:
    """Accuracy vs eps with the expected-robustness area shaded; None without curves."""
    with_curve = [r for r in runs if r.curve is not None]
    panels = _panels(with_curve)
    if not panels:
        return None
    styles = styles or method_styles(runs)
    fig, axes = _new_figure(len(panels))
    for ax, (key, members) in zip(axes, panels):
        _curve_panel(ax, key, members, styles)
    several = any(c.expected.n > 1 for c in aggregate(with_curve))
    title = "Accuracy under attack vs eps" + (", mean over seeds" if several else "")
    fit_figure(fig, axes, title, "below")
    return fig


def _bar(
    ax: Axes, x: float, width: float, cell: Cell, style: Style, label: str | None, *, std_text: bool
) -> float:
    """One bar with its mean (and std if ``std_text``) above it; returns its top (with error)."""
    mean, std = 100 * cell.expected.mean, 100 * cell.expected.std
    several = cell.expected.n > 1
    hatch: dict[str, Any] = (
        {"hatch": style.hatch, "edgecolor": "white", "lw": 0} if style.hatch else {}
    )
    err = std if several else None
    ax.bar(x, mean, width, color=style.color, label=label, yerr=err, capsize=3, **hatch)
    text = f"{mean:.1f}" + (f"\n±{std:.1f}" if several and std_text else "")
    ax.text(x, mean + std + 1.0, text, ha="center", va="bottom", fontsize=8)
    return mean + std


def _bar_layout(runs: Sequence[RunRecord]) -> tuple[list[Cell], list[tuple[str, str]], list[str]]:
    """The cells of one budget's runs, their (backbone, dataset) groups and methods."""
    cells = aggregate(runs)
    groups = sorted({(c.backbone, c.dataset) for c in cells})
    methods = [m for m in method_order(runs) if any(c.method == m for c in cells)]
    return cells, groups, methods


def _direct(groups: Sequence[tuple[str, str]], methods: Sequence[str]) -> bool:
    """Whether the bars are few and short-named enough to be named on the x axis."""
    count, length = DIRECT_LABELS
    return len(groups) == 1 and len(methods) <= count and max(map(len, methods)) <= length


def _bar_slots(runs: Sequence[RunRecord]) -> int:
    """Bar positions one budget's panel needs (empty places in a group included)."""
    _, groups, methods = _bar_layout(runs)
    return len(methods) if _direct(groups, methods) else len(groups) * len(methods)


def _bars_panel(
    ax: Axes, runs: Sequence[RunRecord], budget: Budget, styles: Mapping[str, Style]
) -> None:
    """Bars per method: named on the x axis (a few short names, one group), else grouped by
    (backbone, dataset) with one legend entry per method."""
    cells, groups, methods = _bar_layout(runs)
    index = {(c.backbone, c.dataset, c.method): c for c in cells}
    direct = _direct(groups, methods)
    width = 0.8 if direct else 0.8 / len(methods)
    top = 0.0
    labelled: set[str] = set()
    for j, method in enumerate(methods):
        for i, (backbone, dataset) in enumerate(groups):
            cell = index.get((backbone, dataset, method))
            if cell is None:
                continue
            x = float(j) if direct else i - 0.4 + width * (j + 0.5)
            label = None if direct or method in labelled else method
            labelled.add(method)
            style = styles[method]
            top = max(top, _bar(ax, x, 0.9 * width, cell, style, label, std_text=len(groups) == 1))
    norm, eps = budget
    where = f"{groups[0][0]} on {groups[0][1]}; " if len(groups) == 1 else ""
    ax.set_title(f"{where}eval budget {budget_text(eps, norm)}")
    ax.set_ylabel(f"expected robustness on [0, {eps_text(eps, norm)}] (%)")
    ax.set_ylim(0, min(100.0, top * 1.25 + 5))
    if direct:
        ax.set_xticks(range(len(methods)), methods)
        return
    ax.set_xticks(range(len(groups)), [f"{b}\n{d}" for b, d in groups])
    ax.set_xlim(-0.5, len(groups) - 0.5)
    _legend(ax, "right")


def expected_robustness_figure(
    runs: Sequence[RunRecord], styles: Mapping[str, Style] | None = None
) -> Figure | None:
    """Bars of expected robustness per method (error bars: std over seeds)."""
    if not runs:
        return None
    styles = styles or method_styles(runs)
    found = budgets(runs)
    slots = max(_bar_slots(runs_at(runs, b)) for b in found)
    size = (max(AXES_SIZE[0], BAR_SLOT * slots + 1.0), AXES_SIZE[1])
    fig, axes = _new_figure(len(found), size)
    counts: set[int] = set()
    for ax, budget in zip(axes, found):
        members = runs_at(runs, budget)
        _bars_panel(ax, members, budget, styles)
        counts |= {c.expected.n for c in aggregate(members)}
    if counts == {1}:
        seeds = "one seed each, no error bars"
    else:
        n = str(min(counts)) if len(counts) == 1 else f"{min(counts)}-{max(counts)}"
        seeds = f"mean over n = {n} seeds, error bars: sample std"
    fit_figure(fig, axes, f"Expected robustness per method ({seeds})", "right", size)
    return fig


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cost_panel(ax: Axes, runs: Sequence[RunRecord], styles: Mapping[str, Style]) -> bool:
    """Runs and method means of E.rob (%) against example-passes; True if a method has
    several seeds."""
    several = False
    xs_all: list[float] = []
    top = 0.0
    for method in method_order(runs):
        members = [r for r in runs if r.method == method and r.cost is not None]
        xs = [float(r.cost.example_passes) for r in members if r.cost is not None]
        ys = [100 * r.expected for r in members]
        color, shape = styles[method].color, styles[method].marker
        (mx, sx), (my, sy) = _mean_std(xs), _mean_std(ys)
        label = f"{method}: {mx / 1e6:.3g}M passes, E.rob {my:.1f}%"
        if len(members) > 1:
            several = True
            label += f" ± {sy:.1f} (n={len(members)})"
            ax.plot(xs, ys, shape, color=color, alpha=0.45, ms=5, mew=0, zorder=2)
            # asymmetric x error so the bar stays positive on the log axis
            ax.errorbar(
                [mx],
                [my],
                xerr=[[min(sx, 0.9 * mx)], [sx]],
                yerr=[sy],
                fmt=shape,
                color=color,
                mec="black",
                mew=0.8,
                ms=8,
                capsize=3,
                label=label,
                zorder=3,
            )
        else:
            ax.plot(xs, ys, shape, color=color, mec="black", mew=0.8, ms=8, label=label, zorder=3)
        xs_all += xs
        top = max(top, my + sy, *ys)
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    low, high = min(xs_all), max(xs_all)
    ax.set_xlim(low / 1.8, high * 1.8)
    # ticks at 1, 2, 5 x 10^k labelled in 10^6 example-passes, the Cost table's unit
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0, min(100.0, 1.2 * top + 5))
    ax.grid(alpha=0.3, which="both")
    return several


def cost_figure(
    runs: Sequence[RunRecord], styles: Mapping[str, Style] | None = None
) -> Figure | None:
    """Expected robustness against measured training example-passes; None without cost data."""
    panels = _panels([r for r in runs if _has_cost(r)])
    if not panels:
        return None
    styles = styles or method_styles(runs)
    fig, axes = _new_figure(len(panels))
    several = False
    for ax, ((norm, eps, backbone, dataset), members) in zip(axes, panels):
        several = _cost_panel(ax, members, styles) or several
        ax.set_title(f"{backbone} on {dataset}; eval budget {budget_text(eps, norm)}")
        ax.set_xlabel("training example-passes, 10^6\n(forward + backward, measured; log scale)")
        ax.set_ylabel(f"expected robustness on [0, {eps_text(eps, norm)}] (%)")
    for ax in axes:
        spread = " ± sample std over seeds" if several else ""
        _legend(ax, "below", f"per method: mean{spread}")
    seeds = "; faded markers: single runs, error bars: sample std" if several else ""
    fit_figure(fig, axes, f"Expected robustness vs training compute{seeds}", "below")
    return fig


def delay_figure(
    runs: Sequence[RunRecord], styles: Mapping[str, Style] | None = None
) -> Figure | None:
    """Final clean accuracy against the task-adaptation delay, one panel per (backbone,
    dataset), Pearson's r in the title (:mod:`robustft.report.delay`); None with < 3 runs."""
    from robustft.report.delay import delay_correlations

    found = [c for c in delay_correlations(runs) if len(c.points) >= 3]
    if not found:
        return None
    styles = styles or method_styles(runs)
    fig, axes = _new_figure(len(found))
    for ax, corr in zip(axes, found):
        for method in method_order([p.run for p in corr.points]):
            mine = [p for p in corr.points if p.run.method == method]
            style = styles[method]
            ax.plot(
                [p.delay for p in mine],
                [100 * p.clean for p in mine],
                style.marker,
                color=style.color,
                mec="black",
                mew=0.6,
                ms=7,
                ls="none",
                label=method,
            )
        never = [p for p in corr.points if p.censored]
        if never:
            ax.axvline(never[0].delay - 0.5, color="0.6", ls=":", lw=1)
        r = "undefined" if corr.r is None else f"{corr.r:+.2f}"
        ax.set_title(f"{corr.backbone} on {corr.dataset}: r = {r} (n = {len(corr.points)})")
        ax.set_xlabel("task-adaptation delay (epoch; right of the dotted line: never adapted)")
        ax.set_ylabel("final clean accuracy (%)")
        _integer_ticks(ax)
        ax.grid(alpha=0.3)
        _legend(ax, "below", "method")
    fit_figure(fig, axes, "Adaptation delay vs final clean accuracy", "below")
    return fig


def _has_cost(run: RunRecord) -> bool:
    return run.cost is not None and run.cost.example_passes > 0


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """Render ``fig`` as ``png`` or ``svg`` bytes (deterministic metadata)."""
    import matplotlib

    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    with matplotlib.rc_context(RC):
        fig.savefig(buffer, format=fmt, dpi=DPI, bbox_inches="tight", metadata=metadata)
    return buffer.getvalue()


Builder = Callable[[Sequence[RunRecord], Mapping[str, Style]], "Figure | None"]


@dataclass(frozen=True)
class PlotSpec:
    """A plot: file stem, caption, builder, which runs it draws and whether one figure of
    them fits (else :func:`split_groups` splits it per dataset and norm)."""

    stem: str
    title: str
    build: Builder
    has_data: Callable[[RunRecord], bool]
    fits: Callable[[Sequence[RunRecord]], bool]


def _few_panels(runs: Sequence[RunRecord]) -> bool:
    return len({_panel_key(r) for r in runs}) <= MAX_PANELS


def _few_bars(runs: Sequence[RunRecord]) -> bool:
    found = budgets(runs)
    return len(found) <= MAX_PANELS and all(_bar_slots(runs_at(runs, b)) <= MAX_BARS for b in found)


PLOTS = (
    PlotSpec(
        "val_accuracy",
        "Validation clean accuracy per epoch and eps schedule",
        val_accuracy_figure,
        lambda r: bool(r.history),
        _few_panels,
    ),
    PlotSpec(
        "robustness_curves",
        "Accuracy under attack vs eps (shaded: E.rob)",
        robustness_figure,
        lambda r: r.curve is not None,
        _few_panels,
    ),
    PlotSpec(
        "expected_robustness",
        "Expected robustness per method",
        expected_robustness_figure,
        lambda r: True,
        _few_bars,
    ),
    PlotSpec(
        "delay_vs_clean",
        "Task-adaptation delay vs final clean accuracy (Pearson's r)",
        delay_figure,
        lambda r: True,
        lambda runs: len({(r.backbone, r.dataset) for r in runs}) <= MAX_PANELS,
    ),
    PlotSpec(
        "cost_vs_robustness",
        "Expected robustness vs training example-passes",
        cost_figure,
        _has_cost,
        _few_panels,
    ),
)


def _slug(text: str) -> str:
    """``imagefolder:/x/birds`` -> ``imagefolder-x-birds``: safe in a file name."""
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "-", text)
    return re.sub(r"_{2,}", "_", slug).strip("-._") or "data"


def _slugs(names: Sequence[str]) -> dict[str, str]:
    """A distinct file-safe slug per distinct name (``-2``, ``-3`` on a collision)."""
    out: dict[str, str] = {}
    for name in sorted(set(names)):
        slug, n = _slug(name), 1
        while slug in out.values():
            n += 1
            slug = f"{_slug(name)}-{n}"
        out[name] = slug
    return out


def split_groups(
    runs: Sequence[RunRecord], fits: Callable[[Sequence[RunRecord]], bool]
) -> list[tuple[str, str, list[RunRecord]]]:
    """``(stem suffix, caption suffix, runs)`` per figure: one ``("", "", runs)`` when the runs
    ``fits`` one figure or are all one (dataset, norm); else one per (dataset, norm), such as
    ``("__digits__linf", " (digits, l-inf)", ...)``."""
    keys = sorted({(r.dataset, r.norm) for r in runs}, key=lambda k: (k[0], k[1] != "linf", k[1]))
    if len(keys) <= 1 or fits(runs):
        return [("", "", list(runs))]
    datasets = _slugs([d for d, _ in keys])
    return [
        (
            f"__{datasets[dataset]}__{_slug(norm)}",
            f" ({dataset}, {norm_name(norm)})",
            [r for r in runs if (r.dataset, r.norm) == (dataset, norm)],
        )
        for dataset, norm in keys
    ]


def iter_figures(runs: Sequence[RunRecord]) -> Iterator[PlotFigure]:
    """Every plot that has data as a laid-out Figure, one at a time (so a report holds one in
    memory), split per (dataset, norm) where one figure would not fit (:func:`split_groups`)."""
    import matplotlib

    styles = method_styles(runs)
    with matplotlib.rc_context(RC):
        for spec in PLOTS:
            members = [r for r in runs if spec.has_data(r)]
            for suffix, caption, group in split_groups(members, spec.fits):
                fig = spec.build(group, styles) if group else None
                if fig is not None:
                    yield PlotFigure(spec.stem + suffix, spec.title + caption, fig)


def render_plots(runs: Sequence[RunRecord]) -> list[PlotFile]:
    """Every plot that has data, as PNG and SVG bytes."""
    return [
        PlotFile(p.stem, p.title, figure_bytes(p.figure, "png"), figure_bytes(p.figure, "svg"))
        for p in iter_figures(runs)
    ]
