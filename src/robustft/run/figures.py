"""The figure of one run: its robustness curve, for model cards and experiment trackers.

It takes a curve (the contents of ``robustness.json``), not a run directory, and draws it as
reports draw a run's curve: accuracy under attack against eps, the area under it (expected
robustness times eps_max) shaded. matplotlib is imported on first use, headless.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from robustft.units import format_eps

DPI = 150
RC: dict[Any, Any] = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
}


def curve_png(curve: Mapping[str, Any], *, title: str = "") -> bytes | None:
    """PNG bytes of the robustness curve ``curve`` (``robustness.json``: ``epsilons``,
    ``accuracy``, ``attack``); None when it has fewer than two grid points."""
    epsilons: Sequence[float] = curve.get("epsilons") or []
    accuracy: Sequence[float] = curve.get("accuracy") or []
    if len(epsilons) < 2 or len(epsilons) != len(accuracy):
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    attack = curve.get("attack") or {}
    norm = str(attack.get("norm", "linf"))
    scale, unit = (255.0, "/255") if norm == "linf" else (1.0, "")
    xs = [scale * float(e) for e in epsilons]
    ys = [100 * float(a) for a in accuracy]
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(5.0, 3.4))
        ax = fig.add_subplot()
        ax.plot(xs, ys, color="#1f77b4", lw=2, marker="o", ms=4)
        ax.fill_between(xs, 0, ys, color="#1f77b4", alpha=0.14, lw=0)
        label = f"{attack.get('name', 'attack')}, {norm}"
        ax.set_title(title or f"Accuracy under attack ({label})")
        ax.set_xlabel(f"perturbation size eps ({'k' + unit if unit else norm})")
        ax.set_ylabel("accuracy under attack (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        expected = curve.get("expected_robustness")
        if expected is not None:
            top = format_eps(float(epsilons[-1]), norm)
            ax.text(
                0.98,
                0.95,
                f"expected robustness on [0, {top}]: {100 * float(expected):.2f}%",
                transform=ax.transAxes,
                ha="right",
                va="top",
            )
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()
