"""One-step training attacks meant to resist catastrophic overfitting (CO): N-FGSM, and the FGSM
of GradAlign training. Both are for training only: evaluation refuses them.

* N-FGSM (de Jorge et al., NeurIPS 2022, "Make Some Noise"; code pdejorge/N-FGSM): noise
  uniform in ``[-k eps, k eps]`` (``noise_factor`` k, 2 by default) clamped to ``[0, 1]``, then
  one signed-gradient step of ``rel_step * eps`` (1 by default) from the noisy point, and *no*
  projection back to the eps-ball, only the clamp to ``[0, 1]``. The perturbation so reaches
  ``(k + rel_step) * eps`` in l-inf (3 eps by default): by design, the stronger noise and the
  missing projection are what avoid CO; its examples are training examples, not an evaluation of
  robustness at eps. In l2 (not in the paper) the noise is the l2 geometry's random start at
  radius ``k * eps`` and the step the unit-l2 gradient times ``rel_step * eps``. On text
  (embedding space) the clamp is the space's box instead: padding and special tokens stay put.
  Cost: one forward and one backward pass to craft, as FGSM-RS.
* GradAlign (Andriushchenko & Flammarion, NeurIPS 2020; code tml-epfl/understanding-fast-adv-
  training): FGSM examples (one step of eps from the clean input, as ``fgsm``), trained on with
  the regulariser ``lambda * (1 - cos(grad at x, grad at x + eta))``, eta uniform in the
  eps-ball, added to the loss by :class:`robustft.objectives.AdversarialCE`
  (:func:`robustft.objectives.grad_align_penalty`). :class:`GradAlign` is that FGSM carrying
  ``grad_align_lambda``; lambda 0.2 is the paper's value for CIFAR-10 at 8/255 (its scripts use
  ``0.02 * 10 ** (eps / 8)``, eps in /255: 0.063 at 4/255, 0.632 at 12/255, 2.0 at 16/255).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from robustft.attacks.base import Attack, Outcome, check_hyperparameter, input_gradient
from robustft.attacks.losses import cross_entropy
from robustft.attacks.pgd import PGD
from robustft.errors import is_real


def _positive(name: str, value: float) -> None:
    check_hyperparameter(name, value, is_real(value) and value > 0, "a number > 0")


@dataclass(frozen=True, kw_only=True)
class NFGSM(Attack):
    """N-FGSM: uniform noise of ``noise_factor * eps``, one step of ``rel_step * eps``, no
    projection to the eps-ball (training only; see the module docstring).

    Attributes:
        noise_factor: k, the noise's half-width as a multiple of eps (the paper's default 2).
        rel_step: the step as a multiple of eps (the paper's default 1).
    """

    noise_factor: float = 2.0
    rel_step: float = 1.0
    training_only: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("noise_factor", self.noise_factor)
        _positive("rel_step", self.rel_step)

    @property
    def name(self) -> str:
        return "n-fgsm"

    def start_radius(self, eps: Tensor) -> Tensor:
        return self.noise_factor * eps

    def reach(self, eps: Tensor) -> Tensor:
        return (self.noise_factor + self.rel_step) * eps

    def _perturb(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        eps: Tensor,
        x_init: Tensor | None,
        generator: torch.Generator | None,
        *,
        early_stop: bool = False,
    ) -> Outcome:
        geometry = self.geometry
        if x_init is None:
            x_init = geometry.random_init(x, self.start_radius(eps), generator)
        _, grad, _ = input_gradient(model, x_init, y, cross_entropy)
        step = (self.rel_step * eps).view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        x_adv = x_init + step * geometry.ascent_direction(grad, x)
        return Outcome(geometry.space.clamp(x_adv, x))


@dataclass(frozen=True, kw_only=True)
class GradAlign(PGD):
    """The FGSM of GradAlign training (one step of eps from ``x``) and the regulariser's weight.

    Crafting is :class:`PGD`'s one step; the regulariser is the objective's
    (:class:`robustft.objectives.AdversarialCE` adds ``grad_align_lambda`` times
    :func:`robustft.objectives.grad_align_penalty`). Training only: as an evaluation it would be
    plain ``fgsm``.

    Attributes:
        grad_align_lambda: the regulariser's weight, >= 0 (0.2: the paper's CIFAR-10 value at
            8/255; 0 trains as plain FGSM).
    """

    steps: int = 1
    rel_step: float = 1.0
    random_init: bool = False
    grad_align_lambda: float = 0.2
    training_only: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        value = self.grad_align_lambda
        check_hyperparameter(
            "grad_align_lambda", value, is_real(value) and value >= 0, "a number >= 0"
        )

    @property
    def name(self) -> str:
        return "grad-align"
