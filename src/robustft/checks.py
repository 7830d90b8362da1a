"""Evaluation hygiene: sanity checks that flag an evaluation which may be fooling itself.

Each check returns human-readable warnings; none raises. They are attached to every
:class:`~robustft.evaluate.RobustnessCurve` and shown by the CLI and reports.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from robustft.units import format_eps

if TYPE_CHECKING:
    from robustft.attacks import Attack
    from robustft.evaluate import RobustnessCurve

MASKING_ACCURACY = 0.10  # accuracy above this at a very large eps suggests gradient masking
PROBABILITY_TOLERANCE = 1e-3


def looks_like_probabilities(logits: Tensor) -> bool:
    """True if every row is non-negative and sums to 1: the model outputs softmax, not logits."""
    if logits.numel() == 0:
        return False
    sums = logits.sum(dim=1)
    return bool((logits >= 0).all()) and bool(((sums - 1).abs() < PROBABILITY_TOLERANCE).all())


def curve_warnings(curve: RobustnessCurve, logits_sample: Tensor) -> list[str]:
    """All warnings for a curve: above-clean, rising, masking check, probabilities."""
    warnings: list[str] = []
    clean = curve.clean_accuracy
    for eps, acc in zip(curve.epsilons[1:], curve.accuracy[1:]):
        if acc > clean + 1e-12:
            warnings.append(
                f"robust accuracy {100 * acc:.2f}% at eps {format_eps(eps)} is above clean "
                f"accuracy {100 * clean:.2f}%"
            )
    for (e0, a0), (e1, a1) in zip(
        zip(curve.epsilons, curve.accuracy), zip(curve.epsilons[1:], curve.accuracy[1:])
    ):
        if a1 > a0 + 1e-12:
            warnings.append(
                f"accuracy rises with eps: {100 * a0:.2f}% at {format_eps(e0)} -> "
                f"{100 * a1:.2f}% at {format_eps(e1)} (weak attack or gradient masking)"
            )
    if curve.masking_check is not None and curve.masking_check["accuracy"] > MASKING_ACCURACY:
        warnings.append(
            f"accuracy {100 * curve.masking_check['accuracy']:.1f}% at the very large eps "
            f"{format_eps(curve.masking_check['eps'])} is not near zero: possible gradient "
            "masking; try more steps/restarts or a gradient-free attack"
        )
    if looks_like_probabilities(logits_sample):
        warnings.append(
            "model outputs look like probabilities (rows >= 0 summing to 1), not logits; "
            "attacks on softmax outputs are weak: remove the final softmax"
        )
    return warnings


def masking_check(
    model: nn.Module,
    attack: Attack,
    batches: Iterable[tuple[Tensor, Tensor]],
    eps: float,
    n_examples: int,
    seed: int,
) -> dict[str, float]:
    """Attack up to ``n_examples`` clean-correct examples at a very large ``eps``.

    Returns:
        ``{"eps": eps, "accuracy": fraction still correct, "n": examples attacked}``.
    """
    device = next(model.parameters()).device
    xs, ys = [], []
    count = 0
    for x, y in batches:
        xs.append(x)
        ys.append(y)
        count += len(x)
        if count >= n_examples:
            break
    x = torch.cat(xs)[:n_examples].to(device).float()
    y = torch.cat(ys)[:n_examples].to(device)
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep], y[keep]
    if len(x) == 0:
        return {"eps": eps, "accuracy": 0.0, "n": 0.0}
    gen = torch.Generator().manual_seed(seed)
    x_adv = attack(model, x, y, eps, generator=gen)
    with torch.no_grad():
        acc = float((model(x_adv).argmax(1) == y).float().mean())
    return {"eps": eps, "accuracy": acc, "n": float(len(x))}
