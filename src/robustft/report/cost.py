"""Cost tables of a report: each method's training compute (measured example-passes, wall
time, trainable parameters) next to its expected robustness, per (backbone, dataset, method),
one table per evaluation budget (:func:`robustft.report.tables.budgets`), and the definitions
of those numbers.

Numbers are shown with three significant digits and no exponent (0.0560, 5.60, 560, 5600);
a mean gets ``±`` its sample standard deviation, at the mean's precision, when its runs differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from robustft.report.collect import (
    Cell,
    CostSummary,
    RunRecord,
    Stat,
    aggregate,
    method_order,
)
from robustft.report.tables import budgets, eps_text, fmt_stat, norm_name, runs_at

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
    data; ``switched`` runs switched to a multi-step attack (``monitor.action: switch``)."""

    eval_eps: float
    cells: tuple[Cell, ...]
    missing: int = 0
    norm: str = "linf"
    switched: int = 0

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
        if self.switched:
            runs, its = ("run", "its") if self.switched == 1 else ("runs", "their")
            text += (
                f" {self.switched} {runs} switched to a multi-step attack after catastrophic "
                f"overfitting (monitor.action=switch): {its} passes and time include the epochs "
                "rolled back and those trained after the switch (result.json cost.switch)."
            )
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
            switched = sum(bool(r.result.get("switched")) for r in members if r.cost is not None)
            tables.append(CostTable(eps, tuple(here), missing, norm, switched))
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
