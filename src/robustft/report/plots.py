"""Report plots (PNG and SVG). The only module of robustft that uses matplotlib.

matplotlib is imported inside the functions, so importing :mod:`robustft` never needs it. The
figures are built with the object-oriented API (``matplotlib.figure.Figure`` rendered by the Agg
canvas for PNG and the SVG canvas for SVG): pyplot and its global backend are never touched, so
a report can be made inside a notebook or a headless job alike.

Plots:

* ``val_accuracy``: validation clean accuracy per epoch, one panel per (backbone, dataset), one
  line per run coloured by method; the training eps schedule on a second y-axis in /255 units;
  the task-adaptation delay marked with an X and given in the legend.
* ``robustness_curves``: accuracy under attack against eps (/255), one panel per (eval budget,
  backbone, dataset), mean over seeds; the shaded area under each curve is the expected
  robustness (its value is in the legend).
* ``expected_robustness``: expected robustness per method as bars (mean over seeds, error bars
  = sample std when there are several seeds), one panel per eval budget.
* ``cost_vs_robustness``: expected robustness against training example-passes (forward +
  backward, measured; log scale), one panel per (eval budget, backbone, dataset): a small faded
  marker per run and, per method, the mean over seeds with sample-std error bars in both axes.
  Skipped when no run recorded its cost.
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from robustft.diagnostics import adaptation_threshold
from robustft.report.collect import (
    Cell,
    RunRecord,
    aggregate,
    eval_eps_values,
    method_order,
    same_eps,
)
from robustft.units import format_eps

if TYPE_CHECKING:
    from matplotlib.axes import Axes
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
_NORMS = {"linf": "l-inf", "l2": "l2"}
DPI = 150
PANEL = (6.0, 4.0)
PANEL_LEGEND_BELOW = 5.2  # panel height when the legend sits under the axes
RC: dict[Any, Any] = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "svg.hashsalt": "robustft",
    "svg.fonttype": "none",
}


@dataclass(frozen=True)
class PlotFile:
    """One rendered plot: file stem, caption and its PNG and SVG bytes."""

    stem: str
    title: str
    png: bytes
    svg: bytes


def method_colors(runs: Sequence[RunRecord]) -> dict[str, str]:
    """A fixed colour per method, in :func:`~robustft.report.collect.method_order`."""
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(method_order(runs))}


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 2)
    return math.ceil(n / cols), cols


def _new_figure(
    panels: int, width: float = PANEL[0], height: float = PANEL[1]
) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    rows, cols = _grid(panels)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for extra in axes[panels:]:
        extra.set_visible(False)
    return fig, axes[:panels]


def _delay_text(delays: Sequence[int | None]) -> str:
    known = sorted(d for d in delays if d is not None)
    if not known:
        return "never adapts"
    if len(known) < len(delays):
        return f"delay {known[0]}-{known[-1]}, some never"
    return f"delay {known[0]}" if known[0] == known[-1] else f"delay {known[0]}-{known[-1]}"


def _val_panel(ax: Axes, runs: Sequence[RunRecord], colors: dict[str, str]) -> None:
    from matplotlib.ticker import MaxNLocator

    twin = ax.twinx()
    eps_top = 0.0
    labelled: set[str] = set()
    rank = {m: i for i, m in enumerate(colors)}
    for run in runs:
        color = colors[run.method]
        epochs = [r.epoch for r in run.history]
        acc = [math.nan if r.val_acc is None else 100 * r.val_acc for r in run.history]
        eps = [255 * r.eps for r in run.history]
        eps_top = max(eps_top, *eps)
        label = None
        if run.method not in labelled:
            delays = [r.delay for r in runs if r.method == run.method]
            label = f"{run.method} ({_delay_text(delays)})"
            labelled.add(run.method)
        # earlier methods drawn wider underneath, so identical curves (the same clean epochs
        # under standard FT and a hinge) stay visible
        width = 2.8 - 0.5 * min(rank[run.method], 3)
        ax.plot(epochs, acc, color=color, lw=width, label=label, zorder=3)
        twin.plot(epochs, eps, color=color, lw=1.2, ls="--", drawstyle="steps-mid", alpha=0.7)
        if run.delay is not None and run.delay in epochs:
            y = acc[epochs.index(run.delay)]
            ax.plot([run.delay], [y], "X", color=color, mec="black", mew=0.8, ms=9, zorder=4)
    threshold = 100 * adaptation_threshold(max(runs[0].num_classes, 1))
    ax.axhline(threshold, color="#999999", lw=1, ls=":", zorder=1)
    ax.set_ylim(0, 100)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation clean accuracy (%)")
    twin.set_ylabel("training eps (/255), dashed")
    # eps_g sits at ~83% of the height, below the typical final accuracy of an easy task
    twin.set_ylim(-0.03 * max(eps_top, 1), 1.2 * max(eps_top, 1))
    twin.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)
    _integer_ticks(ax)


def _integer_ticks(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _style_legend(ax: Axes, threshold: float) -> None:
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], color="black", lw=2),
        Line2D([], [], color="black", lw=1.3, ls="--"),
        Line2D([], [], color="black", ls="none", marker="X", ms=8),
        Line2D([], [], color="#999999", lw=1, ls=":"),
    ]
    labels += [
        "val. clean accuracy (left)",
        "training eps (right)",
        "adaptation delay",
        f"adaptation threshold ({threshold:.0f}%)",
    ]
    ax.legend(
        handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False
    )


def val_accuracy_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """Validation clean accuracy per epoch with the eps schedule; None without histories."""
    with_history = [r for r in runs if r.history]
    panels = _panels(with_history, lambda r: (round(r.eval_eps, 9), r.backbone, r.dataset))
    if not panels:
        return None
    colors = method_colors(runs)
    fig, axes = _new_figure(len(panels), height=PANEL_LEGEND_BELOW)
    budgets = len({key[0] for key, _ in panels})
    for ax, ((eps, backbone, dataset), members) in zip(axes, panels):
        _val_panel(ax, members, colors)
        where = f"; eval budget {format_eps(eps)}" if budgets > 1 else ""
        ax.set_title(f"{backbone} on {dataset}{where}")
        _style_legend(ax, 100 * adaptation_threshold(max(members[0].num_classes, 1)))
    fig.suptitle("Validation clean accuracy per epoch and training eps schedule")
    return fig


def _panels(runs: Sequence[RunRecord], key: Any) -> list[tuple[Any, list[RunRecord]]]:
    groups: dict[Any, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(key(run), []).append(run)
    order = {m: i for i, m in enumerate(method_order(runs))}
    return [
        (k, sorted(v, key=lambda r: (order[r.method], r.seed)))
        for k, v in sorted(groups.items(), key=lambda kv: kv[0])
    ]


def _mean_curve(runs: Sequence[RunRecord]) -> list[tuple[list[float], list[float], str]]:
    """Per method: eps (/255), mean accuracy (%), legend label. Unequal grids: per run."""
    out = []
    for method in method_order(runs):
        members = [r for r in runs if r.method == method and r.curve is not None]
        grids = {tuple(round(e, 9) for e in r.curve.epsilons) for r in members if r.curve}
        sets = [members] if len(grids) == 1 else [[r] for r in members]
        for group in sets:
            curves = [r.curve for r in group if r.curve is not None]
            eps = [255 * e for e in curves[0].epsilons]
            acc = [100 * statistics.fmean(c.accuracy[i] for c in curves) for i in range(len(eps))]
            values = [100 * c.expected_robustness for c in curves]
            stat = f"{statistics.fmean(values):.1f}%"
            if len(values) > 1:
                stat += f" ± {statistics.stdev(values):.1f} (n={len(values)})"
            out.append((eps, acc, f"{method}: E.rob {stat}"))
    return out


def robustness_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """Accuracy vs eps with the expected-robustness area shaded; None without curves."""
    with_curve = [r for r in runs if r.curve is not None]
    panels = _panels(with_curve, lambda r: (round(r.eval_eps, 9), r.backbone, r.dataset))
    if not panels:
        return None
    colors = method_colors(runs)
    fig, axes = _new_figure(len(panels), height=PANEL_LEGEND_BELOW)
    for ax, ((eps_max, backbone, dataset), members) in zip(axes, panels):
        for eps, acc, label in _mean_curve(members):
            color = colors[label.split(": E.rob")[0]]
            ax.plot(eps, acc, color=color, lw=2, marker="o", ms=3.5, label=label)
            ax.fill_between(eps, 0, acc, color=color, alpha=0.14, lw=0)
        attacks = ", ".join(sorted({r.eval_attack for r in members}))
        ax.set_title(f"{backbone} on {dataset}; eval {attacks}")
        norms = ", ".join(sorted({_NORMS.get(r.norm, r.norm) for r in members}))
        ax.set_xlabel(f"perturbation size eps (/255, {norms})")
        ax.set_ylabel("accuracy under attack (%)")
        right = max(round(255 * eps_max, 6), 1.0)
        ax.set_xlim(-0.02 * right, 1.02 * right)
        ax.set_ylim(0, 100)
        _integer_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
            frameon=False,
            title=f"E.rob = mean accuracy on [0, {format_eps(eps_max)}] (shaded area / eps_max)",
        )
    several = any(c.expected.n > 1 for c in aggregate(with_curve))
    fig.suptitle("Accuracy under attack vs eps" + (", mean over seeds" if several else ""))
    return fig


def _bar(
    ax: Axes, x: float, width: float, cell: Cell, color: str, label: str | None, *, std_text: bool
) -> float:
    """One bar with its mean (and std if ``std_text``) above it; returns its top (with error)."""
    mean, std = 100 * cell.expected.mean, 100 * cell.expected.std
    several = cell.expected.n > 1
    ax.bar(x, mean, width, color=color, label=label, yerr=std if several else None, capsize=3)
    text = f"{mean:.1f}" + (f"\n±{std:.1f}" if several and std_text else "")
    ax.text(x, mean + std + 1.0, text, ha="center", va="bottom", fontsize=8)
    return mean + std


def _bars_panel(ax: Axes, runs: Sequence[RunRecord], eps: float, colors: dict[str, str]) -> None:
    """Bars per method; with several (backbone, dataset) groups, grouped bars and a legend."""
    cells = [c for c in aggregate(runs) if same_eps(c.eval_eps, eps)]
    groups = sorted({(c.backbone, c.dataset) for c in cells})
    methods = [m for m in method_order(runs) if any(c.method == m for c in cells)]
    index = {(c.backbone, c.dataset, c.method): c for c in cells}
    single = len(groups) == 1
    width = 0.8 if single else 0.8 / len(methods)
    top = 0.0
    for j, method in enumerate(methods):
        for i, (backbone, dataset) in enumerate(groups):
            cell = index.get((backbone, dataset, method))
            if cell is None:
                continue
            x = float(j) if single else i - 0.4 + width * (j + 0.5)
            label = None if single or i else method
            bar = _bar(ax, x, 0.9 * width, cell, colors[method], label, std_text=single)
            top = max(top, bar)
    budget = format_eps(eps)
    if single:
        ax.set_xticks(range(len(methods)), methods)
        ax.set_title(f"{groups[0][0]} on {groups[0][1]}; eval budget {budget}")
    else:
        ax.set_xticks(range(len(groups)), [f"{b}\n{d}" for b, d in groups])
        ax.set_title(f"eval budget {budget}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_ylabel(f"expected robustness on [0, {budget}] (%)")
    ax.set_ylim(0, min(100.0, top * 1.25 + 5))


def expected_robustness_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """Bars of expected robustness per method (error bars: std over seeds)."""
    if not runs:
        return None
    colors = method_colors(runs)
    budgets = eval_eps_values(runs)
    cells = aggregate(runs)
    bars = max(sum(same_eps(c.eval_eps, eps) for c in cells) for eps in budgets)
    fig, axes = _new_figure(len(budgets), width=max(PANEL[0], 0.55 * bars + 2.0))
    for ax, eps in zip(axes, budgets):
        _bars_panel(ax, runs, eps, colors)
    counts = sorted({c.expected.n for c in cells})
    if counts == [1]:
        seeds = "one seed each, no error bars"
    else:
        n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        seeds = f"mean over n = {n} seeds, error bars: sample std"
    fig.suptitle(f"Expected robustness per method ({seeds})")
    return fig


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cost_panel(ax: Axes, runs: Sequence[RunRecord], colors: dict[str, str]) -> bool:
    """Runs and method means of E.rob (%) against example-passes; True if a method has
    several seeds."""
    shapes = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(colors)}
    several = False
    xs_all: list[float] = []
    top = 0.0
    for method in method_order(runs):
        members = [r for r in runs if r.method == method and r.cost is not None]
        xs = [float(r.cost.example_passes) for r in members if r.cost is not None]
        ys = [100 * r.expected for r in members]
        color, shape = colors[method], shapes[method]
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


def cost_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """Expected robustness against measured training example-passes; None without cost data."""
    with_cost = [r for r in runs if r.cost is not None and r.cost.example_passes > 0]
    panels = _panels(with_cost, lambda r: (round(r.eval_eps, 9), r.backbone, r.dataset))
    if not panels:
        return None
    colors = method_colors(runs)
    fig, axes = _new_figure(len(panels), height=PANEL_LEGEND_BELOW)
    several = False
    for ax, ((eps, backbone, dataset), members) in zip(axes, panels):
        several = _cost_panel(ax, members, colors) or several
        budget = format_eps(eps)
        ax.set_title(f"{backbone} on {dataset}; eval budget {budget}")
        ax.set_xlabel("training example-passes, 10^6 (forward + backward, measured; log scale)")
        ax.set_ylabel(f"expected robustness on [0, {budget}] (%)")
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
            frameon=False,
            title="per method: mean" + (" ± sample std over seeds" if several else ""),
        )
    seeds = "; faded markers: single runs, error bars: sample std" if several else ""
    fig.suptitle(f"Expected robustness vs training compute{seeds}")
    return fig


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """Render ``fig`` as ``png`` or ``svg`` bytes (deterministic metadata)."""
    import matplotlib

    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    with matplotlib.rc_context(RC):
        fig.savefig(buffer, format=fmt, dpi=DPI, bbox_inches="tight", metadata=metadata)
    return buffer.getvalue()


PLOTS = (
    ("val_accuracy", "Validation clean accuracy per epoch and eps schedule", val_accuracy_figure),
    ("robustness_curves", "Accuracy under attack vs eps (shaded: E.rob)", robustness_figure),
    ("expected_robustness", "Expected robustness per method", expected_robustness_figure),
    ("cost_vs_robustness", "Expected robustness vs training example-passes", cost_figure),
)


def render_plots(runs: Sequence[RunRecord]) -> list[PlotFile]:
    """Every plot that has data, as PNG and SVG bytes."""
    import matplotlib

    out = []
    with matplotlib.rc_context(RC):
        for stem, title, build in PLOTS:
            fig = build(runs)
            if fig is None:
                continue
            out.append(PlotFile(stem, title, figure_bytes(fig, "png"), figure_bytes(fig, "svg")))
    return out
