"""Catastrophic-overfitting monitor for fast (FGSM) adversarial training.

Catastrophic overfitting (Wong et al., 2020): during FGSM training the model suddenly becomes
robust to FGSM but not to a multi-step attack; PGD accuracy collapses within an epoch or two
while FGSM accuracy stays high (often above clean accuracy). The monitor measures both, every
epoch trained with eps > 0, on a fixed validation subset, at the epoch's training eps:

* ``co_pgd_acc``: accuracy under PGD-10 (random start, step 0.25 eps);
* ``co_fgsm_acc``: accuracy under FGSM (no random start, step eps).

An epoch is flagged when all hold (accuracies are fractions):

* ``fgsm_acc - pgd_acc >= gap`` (default 0.20: twenty points; a healthy robust model has FGSM
  within a few points of PGD at the eps it trains on),
* ``pgd_acc <= ratio * best`` (default 0.5), where ``best`` is the highest PGD accuracy of the
  earlier monitored epochs: PGD accuracy *collapsed* to at most half of what it had reached, and
* ``best >= MIN_BEST_PGD`` (0.10): there was robustness to lose (below that the drop is noise),

so a model that is simply not robust yet (PGD never above 10%), or one where FGSM is merely a
weaker attack than PGD at a large eps (a steady gap, no collapse), is never flagged. The first
flagged epoch is the onset. The actions (config ``monitor.action``): ``flag`` records it in the
metrics and the result's findings; ``stop`` ends training there and evaluates that model;
``rollback`` ends training and restores the last epoch before the onset; ``switch`` restores
the last epoch before the onset (weights and optimizer state, from its checkpoint) and trains the
rest of the planned epochs with a multi-step attack (``monitor.switch_attack``, PGD-7 by
default), once: a run that switched does not switch again.

The early detector (:class:`DetectorRule`, :data:`DETECTOR`), beside that collapse rule: every
monitored epoch also records clean accuracy on the same sample (``co_clean_acc``), gradient
alignment (``co_grad_align``: the mean cosine between the input gradients at x and at a uniform
random point of the eps-ball, Andriushchenko & Flammarion 2020) and :func:`derived_signals`
(``co_gap``, ``co_pgd_fgsm_ratio``, ``co_fgsm_above_clean``); the detector fires
(``co_detected``) when one signal stays on the overfitting side of a threshold while FGSM
accuracy is high, for some consecutive monitored epochs: a run that overfit from its first
epochs never had PGD accuracy to collapse from, so the collapse rule misses it. The actions act
on the collapse rule only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the rule is torch-free (reports import it); measuring needs torch
    from torch import nn
    from torch.utils.data import Dataset

    from robustft.attacks import Attack

PGD_KEY = "co_pgd_acc"
FGSM_KEY = "co_fgsm_acc"
CLEAN_KEY = "co_clean_acc"
ALIGN_KEY = "co_grad_align"
GAP_KEY = "co_gap"
RATIO_KEY = "co_pgd_fgsm_ratio"
ABOVE_CLEAN_KEY = "co_fgsm_above_clean"


MIN_BEST_PGD = 0.10
"""The earlier PGD accuracy below which a drop is not called a collapse."""


@dataclass(frozen=True)
class OverfitRule:
    """Thresholds of the flag (fractions, see the module docstring)."""

    gap: float = 0.20
    ratio: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.gap <= 1:
            raise ValueError(f"gap must be in (0, 1], got {self.gap}")
        if not 0 < self.ratio < 1:
            raise ValueError(f"ratio must be in (0, 1), got {self.ratio}")

    def flags(self, pgd_acc: float, fgsm_acc: float, best_pgd_before: float | None) -> bool:
        """Whether a measurement shows catastrophic overfitting, given the best PGD accuracy of
        the earlier monitored epochs (None: this is the first)."""
        if best_pgd_before is None or best_pgd_before < MIN_BEST_PGD:
            return False
        return fgsm_acc - pgd_acc >= self.gap and pgd_acc <= self.ratio * best_pgd_before


def best_pgd(history: Sequence[Mapping[str, Any]]) -> float | None:
    """The highest monitored PGD accuracy in ``history`` (None if nothing was monitored)."""
    values = [float(row[PGD_KEY]) for row in history if row.get(PGD_KEY) is not None]
    return max(values) if values else None


def overfit_onset(history: Sequence[Mapping[str, Any]], rule: OverfitRule) -> int | None:
    """The first epoch (1-based, from the rows' ``epoch``) whose monitor values are flagged.

    Rows without monitor values (eps 0, monitor off) are skipped.
    """
    best: float | None = None
    for row in history:
        pgd, fgsm = row.get(PGD_KEY), row.get(FGSM_KEY)
        if pgd is None or fgsm is None:
            continue
        if rule.flags(float(pgd), float(fgsm), best):
            return int(row["epoch"])
        best = float(pgd) if best is None else max(best, float(pgd))
    return None


def last_good_epoch(history: Sequence[Mapping[str, Any]], onset: int) -> int | None:
    """The last epoch before ``onset`` (None if the onset is the first epoch)."""
    earlier = [int(row["epoch"]) for row in history if int(row["epoch"]) < onset]
    return max(earlier) if earlier else None


DETECTED_KEY = "co_detected"
SIGNALS = (RATIO_KEY, ABOVE_CLEAN_KEY, GAP_KEY, ALIGN_KEY)
"""The detector's candidate signals, recorded in every monitored row."""


@dataclass(frozen=True)
class DetectorRule:
    """The early detector (see the module docstring): a monitored epoch *matches* when
    ``signal`` is below ``threshold`` (``below``) or above it (not ``below``) while the
    monitor's FGSM accuracy is at least ``min_fgsm`` (the model resists the one-step attack: a
    model that is not robust yet is not overfitting to it); the detector *fires* at the epoch
    that ends ``epochs`` consecutive matching monitored epochs (a multi-step run also resists
    FGSM but not PGD in its first epochs; it grows out of it, an overfit run does not)."""

    signal: str = RATIO_KEY
    threshold: float = 0.5
    below: bool = True
    min_fgsm: float = 0.25
    epochs: int = 1

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(SIGNALS)}, got {self.signal!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")

    def matches(self, row: Mapping[str, Any]) -> bool:
        """Whether a monitored row (its ``co_*`` values) matches; False when a value is missing
        (an unmonitored epoch, or a row written before the signal existed)."""
        value, fgsm = row.get(self.signal), row.get(FGSM_KEY)
        if value is None or fgsm is None or float(fgsm) < self.min_fgsm:
            return False
        return float(value) < self.threshold if self.below else float(value) > self.threshold

    def fires(self, history: Sequence[Mapping[str, Any]]) -> bool:
        """Whether the last ``epochs`` monitored rows of ``history`` all match."""
        monitored = [row for row in history if row.get(FGSM_KEY) is not None]
        last = monitored[-self.epochs :]
        return len(last) == self.epochs and all(self.matches(row) for row in last)

    def describe(self) -> str:
        """The rule in words, e.g. ``co_pgd_fgsm_ratio < 0.5 and co_fgsm_acc >= 0.25 in 3
        consecutive monitored epochs``."""
        op = "<" if self.below else ">"
        text = f"{self.signal} {op} {self.threshold:g} and {FGSM_KEY} >= {self.min_fgsm:g}"
        return text if self.epochs == 1 else f"{text} in {self.epochs} consecutive monitored epochs"


DETECTOR = DetectorRule(RATIO_KEY, 0.285, below=True, min_fgsm=0.5, epochs=4)
"""The detector's rule: PGD accuracy below 0.285 of FGSM accuracy while FGSM accuracy is at least
50%, in 4 consecutive monitored epochs. Chosen by leave-one-setting-out on 5 labelled runs in 3
settings (``scripts/co_detector_study.py``, docs/reproduction.md "Fast and safe"): the form the
folds chose most, at the median of their thresholds (0.2852, rounded)."""


def detected_onset(
    history: Sequence[Mapping[str, Any]], rule: DetectorRule = DETECTOR
) -> int | None:
    """The first epoch (1-based) at which ``rule`` fires (None: never)."""
    for i, row in enumerate(history):
        if row.get(FGSM_KEY) is not None and rule.fires(history[: i + 1]):
            return int(row["epoch"])
    return None


def attack_accuracy(
    model: nn.Module,
    data: Dataset,
    attack: Attack,
    eps: float,
    *,
    examples: int,
    seed: int,
    batch_size: int = 128,
) -> float:
    """Accuracy (fraction) of ``model`` in eval mode under ``attack`` at ``eps`` on a seeded,
    stratified sample of ``examples`` items of ``data`` (:mod:`robustft.subset`; the sample and
    the random starts are drawn from ``seed``), with early exit
    (:meth:`~robustft.attacks.base.Attack.evaluate`)."""
    import torch
    from torch.utils.data import DataLoader

    from robustft.attacks.base import evaluation_mode
    from robustft.subset import subset
    from robustft.utils.device import model_device
    from robustft.utils.memory_format import as_format, model_format

    device, layout = model_device(model), model_format(model)
    sample, _ = subset(data, examples, seed)
    n = len(sample)  # type: ignore[arg-type]
    loader = DataLoader(sample, batch_size=batch_size)
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    with evaluation_mode(model):
        for x, y in loader:
            x, y = as_format(x.to(device).float(), layout), y.to(device)
            # early exit: an example is settled at its first fooling iterate
            verdict = attack.evaluate(model, x, y, eps, generator=generator)
            correct += int((~verdict.fooled).sum())
    return correct / max(n, 1)


def sample_signals(
    model: nn.Module,
    data: Dataset,
    eps: float,
    *,
    norm: str,
    examples: int,
    seed: int,
    batch_size: int = 128,
    space: str = "pixel",
) -> dict[str, float | None]:
    """Clean accuracy and gradient alignment of ``model`` in eval mode on the monitor's sample
    (the same seeded, stratified ``examples`` items of ``data`` as :func:`attack_accuracy`):
    ``{co_clean_acc, co_grad_align}``. Gradient alignment is the mean cosine between the input
    gradients of the loss at ``x`` and at a uniform random point of the eps-ball
    (:func:`robustft.objectives.gradient_cosines`, drawn from ``seed``), over the examples whose
    gradients are non-zero (None when none is). Cost: one forward pass, then one forward and
    one backward pass at ``x`` and at the random point. ``space``: the input space
    (``embedding`` for text: the cosine over the coordinates its attacks move)."""
    import torch
    from torch.utils.data import DataLoader

    from robustft.attacks import get_geometry
    from robustft.attacks.base import crafting_mode
    from robustft.objectives import gradient_cosines
    from robustft.subset import subset
    from robustft.utils.device import model_device
    from robustft.utils.memory_format import as_format, model_format

    device, layout = model_device(model), model_format(model)
    geometry = get_geometry(norm, space)
    sample, _ = subset(data, examples, seed)
    n = len(sample)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(seed)
    correct, cosines, counted = 0, 0.0, 0.0
    with crafting_mode(model):
        for x, y in DataLoader(sample, batch_size=batch_size):
            x, y = as_format(x.to(device).float(), layout), y.to(device)
            with torch.no_grad():
                correct += int((model(x).argmax(1) == y).sum())
            cosine, counts = gradient_cosines(
                model, x, y, eps, geometry=geometry, generator=generator
            )
            cosines += float((cosine * counts).sum())
            counted += float(counts.sum())
    return {
        CLEAN_KEY: correct / max(n, 1),
        ALIGN_KEY: cosines / counted if counted else None,
    }


def derived_signals(pgd_acc: float, fgsm_acc: float, clean_acc: float) -> dict[str, float | None]:
    """The signals computed from the three accuracies: ``co_gap`` (FGSM minus PGD),
    ``co_pgd_fgsm_ratio`` (PGD over FGSM; None when FGSM accuracy is 0) and
    ``co_fgsm_above_clean`` (FGSM minus clean), fractions."""
    return {
        GAP_KEY: fgsm_acc - pgd_acc,
        RATIO_KEY: pgd_acc / fgsm_acc if fgsm_acc > 0 else None,
        ABOVE_CLEAN_KEY: fgsm_acc - clean_acc,
    }


def measure(
    model: nn.Module,
    data: Dataset,
    eps: float,
    *,
    norm: str,
    examples: int,
    pgd_steps: int,
    seed: int,
    space: str = "pixel",
) -> dict[str, float | None]:
    """The monitor's measurements at ``eps`` on its sample (fractions): ``co_pgd_acc``,
    ``co_fgsm_acc``, ``co_clean_acc``, ``co_grad_align`` and the :func:`derived_signals`;
    ``space``: the attacks' input space (``embedding`` for text)."""
    from robustft import attacks

    pgd = attacks.create("pgd", norm=norm, steps=pgd_steps, space=space)
    fgsm = attacks.create("fgsm", norm=norm, space=space)
    kwargs: dict[str, Any] = {"examples": examples, "seed": seed}
    pgd_acc = attack_accuracy(model, data, pgd, eps, **kwargs)
    fgsm_acc = attack_accuracy(model, data, fgsm, eps, **kwargs)
    out: dict[str, float | None] = {PGD_KEY: pgd_acc, FGSM_KEY: fgsm_acc}
    out.update(sample_signals(model, data, eps, norm=norm, space=space, **kwargs))
    out.update(derived_signals(pgd_acc, fgsm_acc, float(out[CLEAN_KEY] or 0.0)))
    return out
