"""Evaluation hygiene: sanity checks that flag an evaluation which may be fooling itself.

Each check returns human-readable warnings; none raises. They are attached to every
:class:`~robustft.robustness.RobustnessCurve` and shown by the CLI and reports.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from robustft.units import format_eps
from robustft.utils.text import percent

if TYPE_CHECKING:
    from robustft.attacks import Attack
    from robustft.robustness.curve import RobustnessCurve

MASKING_ACCURACY = 0.10  # accuracy above this at a very large eps suggests gradient masking
MASKING_MIN_CORRECT = 16  # ... on at least this many clean-correct examples (of 64 checked)
PROBABILITY_TOLERANCE = 1e-3
# The gradient-free check warns when Square breaks, among the examples the gradient attack left
# correct, at least this fraction of the checked examples and at least this many examples:
GRADIENT_FREE_GAP = 0.05
GRADIENT_FREE_MIN_EXAMPLES = 3


def looks_like_probabilities(logits: Tensor) -> bool:
    """True if every row is non-negative and sums to 1: the model outputs softmax, not logits."""
    if logits.numel() == 0:
        return False
    sums = logits.sum(dim=1)
    return bool((logits >= 0).all()) and bool(((sums - 1).abs() < PROBABILITY_TOLERANCE).all())


def curve_warnings(curve: RobustnessCurve, logits_sample: Tensor) -> list[str]:
    """All warnings for a curve: above-clean, rising, masking check, gradient-free check
    (Square beats the gradient attack), probabilities."""
    warnings: list[str] = []
    clean, norm = curve.clean_accuracy, str(curve.attack.get("norm", "linf"))
    for eps, acc in zip(curve.epsilons[1:], curve.accuracy[1:]):
        if acc > clean + 1e-12:
            warnings.append(
                f"robust accuracy {percent(acc)}% at eps {format_eps(eps, norm)} is above clean "
                f"accuracy {percent(clean)}%"
            )
    for (e0, a0), (e1, a1) in zip(
        zip(curve.epsilons, curve.accuracy), zip(curve.epsilons[1:], curve.accuracy[1:])
    ):
        if a1 > a0 + 1e-12:
            warnings.append(
                f"accuracy rises with eps: {percent(a0)}% at {format_eps(e0, norm)} -> "
                f"{percent(a1)}% at {format_eps(e1, norm)} (weak attack or gradient masking)"
            )
    masking = curve.masking_check
    if masking is not None and masking_suspected(masking):
        warnings.append(
            f"accuracy {percent(masking['accuracy'], 1)}% at the very large eps "
            f"{format_eps(masking['eps'], norm)} is not near zero: possible gradient "
            "masking; try more steps/restarts or a gradient-free attack (attacks.create('square'))"
        )
    gradient_free = gradient_free_warning(curve.gradient_free_check, curve.attack.get("name"))
    if gradient_free is not None:
        warnings.append(gradient_free)
    if looks_like_probabilities(logits_sample):
        warnings.append(
            "model outputs look like probabilities (rows >= 0 summing to 1), not logits; "
            "attacks on softmax outputs are weak: remove the final softmax"
        )
    return warnings


def masking_suspected(result: dict[str, Any] | None) -> bool:
    """Whether a :func:`masking_check` result points at gradient masking: accuracy above
    ``MASKING_ACCURACY`` on at least ``MASKING_MIN_CORRECT`` clean-correct examples from at
    least two classes. Fewer examples, or one class only, is what a near-constant predictor
    gives (its few correct examples are all of the class it always predicts, and no
    perturbation changes a constant output): robust, useless, and not masking."""
    if result is None:
        return False
    enough = int(result.get("n", 0)) >= MASKING_MIN_CORRECT
    varied = int(result.get("classes", 2)) >= 2  # curves written before "classes" existed
    return enough and varied and float(result["accuracy"]) > MASKING_ACCURACY


def masking_check(
    model: nn.Module,
    attack: Attack,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    seed: int,
    broken: Tensor | None = None,
) -> dict[str, Any]:
    """Attack the clean-correct examples of ``x`` at a very large ``eps``.

    An example the evaluation already broke at its largest eps (``broken``, (N,) bool) counts
    as broken here too: that adversarial example lies inside the larger ball. Without this an
    attack that does badly at a huge l2 radius (most of each step clipped off by the [0, 1] box)
    would "survive" on examples the curve had long broken.

    Returns:
        ``{"eps", "accuracy": fraction of the attacked examples still correct, "n": examples
        attacked (clean-correct), "classes": distinct labels among them}``.
    """
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    already = None if broken is None else broken.to(keep.device)[keep]
    x, y = x[keep], y[keep]
    if len(x) == 0:
        return {"eps": eps, "accuracy": 0.0, "n": 0, "classes": 0}
    gen = torch.Generator().manual_seed(seed)
    survived = ~attack.evaluate(model, x, y, eps, generator=gen).fooled  # with early exit
    if already is not None:
        survived &= ~already
    return {
        "eps": eps,
        "accuracy": float(survived.float().mean()),
        "n": len(x),
        "classes": len(torch.unique(y)),
    }


def gradient_free_check(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    gradient_correct: Tensor,
    eps: float,
    *,
    queries: int = 300,
    p_init: float = 0.8,
    seed: int = 0,
    standalone: bool = False,
) -> dict[str, Any]:
    """Attack examples the gradient attack left correct with the gradient-free Square attack.

    A gradient attack that leaves many examples correct which a random search, never looking
    at a gradient, breaks easily is being fooled by the gradient (masking/obfuscation). Only
    the gradient attack's survivors are attacked, so the check is cheap on honest models.

    Args:
        model: maps (N, C, H, W) images in [0, 1] to (N, K) logits (eval mode while crafting).
        x: (N, C, H, W) images in [0, 1]; y: (N,) labels.
        gradient_correct: (N,) bool, each example still correct under the gradient attack at
            ``eps`` (False for clean-misclassified examples).
        eps: l-inf budget in pixel units (the curve's largest eps).
        queries, p_init: Square attack budget and initial square size.
        seed: seed of the attack's random search.
        standalone: attack every clean-correct example instead, and also report Square's own
            accuracy (costlier; for comparing the attacks).

    Returns:
        ``{"attack": "square", "eps", "queries", "n", "attacked", "gradient_accuracy",
        "combined_accuracy", "missed_by_gradient"}`` (+ ``"gradient_free_accuracy"`` when
        ``standalone``): accuracies are fractions of the ``n`` examples, ``combined`` counts an
        example correct only if both attacks failed, ``missed_by_gradient`` counts examples
        Square broke and the gradient attack did not, ``attacked`` those Square attacked.
    """
    from robustft.attacks import Square

    gradient_correct = gradient_correct.bool().cpu()
    with torch.no_grad():
        square_correct = (model(x).argmax(1) == y).cpu()
    if not standalone:
        square_correct &= gradient_correct
    todo = square_correct.nonzero().flatten()
    if len(todo) and eps > 0:
        attack = Square(queries=queries, p_init=p_init)
        gen = torch.Generator().manual_seed(seed)
        index = todo.to(x.device)
        x_adv = attack(model, x[index], y[index], eps, generator=gen)
        with torch.no_grad():
            square_correct[todo] = (model(x_adv).argmax(1) == y[index]).cpu()
    combined = gradient_correct & square_correct
    result: dict[str, Any] = {
        "attack": "square",
        "eps": float(eps),
        "queries": queries,
        "n": len(x),
        "attacked": len(todo),
        "gradient_accuracy": float(gradient_correct.float().mean()),
        "combined_accuracy": float(combined.float().mean()),
        "missed_by_gradient": int((gradient_correct & ~square_correct).sum()),
    }
    if standalone:
        result["gradient_free_accuracy"] = float(square_correct.float().mean())
    return result


def gradient_free_warning(result: dict[str, Any] | None, attack_name: str | None) -> str | None:
    """The warning for a :func:`gradient_free_check` result, or None if there is nothing to say.

    Rule: warn when Square breaks at least ``max(GRADIENT_FREE_MIN_EXAMPLES,
    ceil(GRADIENT_FREE_GAP * n))`` examples that the gradient attack left correct, i.e. when
    adding Square lowers the accuracy on the ``n`` examples by at least 5 points *and* by at
    least 3 examples (4 of 64 by default).
    """
    if not result or "missed_by_gradient" not in result:
        return None
    n, missed = int(result["n"]), int(result["missed_by_gradient"])
    if missed < max(GRADIENT_FREE_MIN_EXAMPLES, math.ceil(GRADIENT_FREE_GAP * n - 1e-9)):
        return None
    grad, both = float(result["gradient_accuracy"]), float(result["combined_accuracy"])
    return (
        f"the gradient-free Square attack ({result['queries']} queries) broke {missed} of the "
        f"{round(grad * n)} examples that {attack_name or 'the gradient attack'} left correct "
        f"at eps {format_eps(result['eps'])} ({n} sampled examples: accuracy {percent(grad, 1)}% "
        f"-> {percent(both, 1)}%): likely gradient masking/obfuscation (non-differentiable or "
        "randomised preprocessing such as input quantisation, a saturated softmax, zero or NaN "
        "input gradients), so the curve overstates robustness. Evaluate with gradient-free or "
        "transfer attacks (attacks.create('square')) and remove non-differentiable "
        "preprocessing or attack through it (BPDA)"
    )
