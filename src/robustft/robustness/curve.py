"""Robustness curves and expected robustness.

A robustness curve is the accuracy of a model under attack at every perturbation size of a grid
``0 = eps_0 < eps_1 < ... < eps_K = eps_g`` (pixel units). *Expected robustness* (Ngnawé et al.
2025) is the accuracy averaged over eps uniform on ``[0, eps_g]``: the trapezoid rule over the
grid divided by ``eps_g``, i.e. the mean of the trapezoid heights. It always lies between the
robust accuracy at ``eps_g`` and the clean accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor


def expected_robustness(epsilons: Sequence[float], accuracies: Sequence[float]) -> float:
    """Accuracy averaged over eps uniform on ``[0, eps_max]`` (trapezoid rule / eps_max).

    Args:
        epsilons: ascending grid starting at 0 (pixel units), at least two points.
        accuracies: accuracy at each grid point (any unit: fraction or %).

    Returns:
        The mean accuracy, in the unit of ``accuracies``.

    Example:
        >>> expected_robustness([0, 1/255, 2/255, 3/255, 4/255], [80, 60, 50, 40, 30])
        51.25
    """
    if len(epsilons) != len(accuracies) or len(epsilons) < 2:
        raise ValueError(f"need >= 2 matching points, got {len(epsilons)} and {len(accuracies)}")
    if epsilons[0] != 0 or any(b <= a for a, b in pairwise(epsilons)):
        raise ValueError(f"grid must start at 0 and ascend, got {list(epsilons)}")
    area = sum(
        (e1 - e0) * (a0 + a1) / 2
        for (e0, e1), (a0, a1) in zip(pairwise(epsilons), pairwise(accuracies))
    )
    return round(area / epsilons[-1], 12)


def _pack_bits(row: Sequence[bool]) -> str:
    return "".join("1" if v else "0" for v in row)


@dataclass(frozen=True)
class RobustnessCurve:
    """Accuracy under attack over an eps grid, with per-example results and provenance.

    Attributes:
        epsilons: the grid, ascending, first point 0 (clean), pixel units.
        accuracy: accuracy (fraction in [0, 1]) at each eps; ``accuracy[0]`` is clean.
        correct: per eps, per example correctness as a string of '0'/'1' (N characters).
        expected_robustness: mean accuracy for eps uniform on [0, eps_max] (fraction).
        attack: the attack's description (name, norm, hyperparameters).
        mode: "cascade" or "independent".
        seed: seed of the attacks' random starts.
        attacked: number of examples attacked at each eps (cost; 0 at eps = 0).
        seconds: wall time of the evaluation.
        warnings: sanity-check findings (robust above clean, rising curve, masking, gradient-free
            check, probabilities).
        masking_check: accuracy at a very large eps on a stratified sample (see
            :func:`robustft.robustness.checks.masking_check`), or None if not run.
        gradient_free_check: on a stratified sample of ``n`` examples at ``eps_max``, the
            gradient attack's accuracy and the accuracy once the gradient-free Square attack
            also attacks its survivors (see :func:`robustft.robustness.checks.gradient_free_check`);
            ``{"skipped": reason}`` where it cannot run (l2), None if not run (or written before
            it existed).
        examples: which examples were evaluated: ``{"method": "all" | "stratified" |
            "uniform", "seed", "n", "of"}`` plus ``"indices"`` (dataset order) for a subset
            (:class:`robustft.subset.Selection`); None in curves written before it existed.
        early_stop: whether attacks settled examples at their first fooling iterate (see the
            module docstring); None in curves written before it existed.
        passes: the forward and backward passes the curve's clean predictions and attacks
            made through the model (:class:`robustft.cost.PassCount`, checks excluded), plain
            and weighted by batch size; None in curves written before it existed.
        autoattack: AutoAttack at ``eps_max`` on the same examples, when measured
            (:meth:`robustft.robustness.autoattack.AutoAttackResult.to_dict`: version, norm,
            eps, accuracy, n, seed, seconds, per-example ``correct``, ...); a separate number,
            not a point of the curve.
    """

    epsilons: tuple[float, ...]
    accuracy: tuple[float, ...]
    correct: tuple[str, ...]
    expected_robustness: float
    attack: dict[str, Any]
    mode: str
    seed: int
    attacked: tuple[int, ...]
    seconds: float
    warnings: tuple[str, ...] = ()
    masking_check: dict[str, Any] | None = None
    gradient_free_check: dict[str, Any] | None = None
    examples: dict[str, Any] | None = None
    version: int = field(default=1)
    early_stop: bool | None = None
    passes: dict[str, int] | None = None
    autoattack: dict[str, Any] | None = None

    @property
    def n_examples(self) -> int:
        return len(self.correct[0]) if self.correct else 0

    @property
    def clean_accuracy(self) -> float:
        return self.accuracy[0]

    @property
    def robust_accuracy(self) -> float:
        """Accuracy at the largest eps of the grid (eps_g)."""
        return self.accuracy[-1]

    @property
    def eps_max(self) -> float:
        return self.epsilons[-1]

    def correct_tensor(self) -> Tensor:
        """Per-example correctness, (K, N) bool."""
        return torch.tensor([[c == "1" for c in row] for row in self.correct], dtype=torch.bool)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["clean_accuracy"] = self.clean_accuracy
        out["robust_accuracy"] = self.robust_accuracy
        out["n_examples"] = self.n_examples
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RobustnessCurve:
        names = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in names}
        for key in ("epsilons", "accuracy", "correct", "attacked", "warnings"):
            kwargs[key] = tuple(kwargs.get(key, ()))
        return cls(**kwargs)
