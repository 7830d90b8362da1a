"""Projected gradient descent (ascent) on the loss: PGD, and FGSM / FGSM-RS as one-step cases.

One gradient loop serves all three (Madry et al., ICLR 2018; Goodfellow et al., ICLR 2015;
Wong, Rice & Kolter, ICLR 2020):

* ``PGD()``: 10 steps of size ``0.25 * eps`` from a random start in the ball.
* FGSM: ``PGD(steps=1, rel_step=1.0, random_init=False)``.
* FGSM-RS ("fast is better than free"): ``PGD(steps=1, rel_step=1.25, random_init=True)``.

The step size is relative to the *current* eps of each example, so an eps schedule scales the
step with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robustft.attacks.base import (
    Attack,
    Outcome,
    Settled,
    check_hyperparameter,
    input_gradient,
)
from robustft.attacks.losses import LossFn, get_loss
from robustft.errors import is_int, is_real


@dataclass(frozen=True, kw_only=True)
class PGD(Attack):
    """Projected gradient ascent in an l-inf or l2 ball (pixel units), with optional restarts.

    Each step moves ``rel_step * eps`` along the norm's steepest-ascent direction (the sign of the
    gradient for l-inf, the unit-l2 gradient for l2) and projects back into the eps-ball
    intersected with [0, 1]. The final iterate of each restart is kept; with several restarts
    each example keeps the restart whose final point fools the model, or else the one with the
    highest loss.

    Cost: ``steps * restarts`` forward+backward passes, plus one forward pass per restart when
    ``restarts > 1``.

    Attributes:
        steps: gradient steps per restart (1 for FGSM / FGSM-RS).
        rel_step: step size as a multiple of eps (0.25 with 10 steps is 2/255 at eps 8/255).
        random_init: start from a random point in the ball (see ``Geometry.random_init``), else
            from ``x``.
        restarts: independent runs from different random starts (needs ``random_init``).
        loss: the loss ascended, ``"ce"`` or ``"dlr"``.
    """

    steps: int = 10
    rel_step: float = 0.25
    random_init: bool = True
    restarts: int = 1
    loss: str = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_hyperparameter(
            "steps", self.steps, is_int(self.steps) and self.steps >= 1, "an integer >= 1"
        )
        check_hyperparameter(
            "rel_step", self.rel_step, is_real(self.rel_step) and self.rel_step > 0, "a number > 0"
        )
        check_hyperparameter(
            "random_init", self.random_init, isinstance(self.random_init, bool), "true or false"
        )
        check_hyperparameter(
            "restarts",
            self.restarts,
            is_int(self.restarts) and self.restarts >= 1,
            "an integer >= 1",
        )
        check_hyperparameter(
            "restarts",
            self.restarts,
            self.restarts == 1 or self.random_init,
            "1 without random_init (every restart would be identical)",
        )
        get_loss(self.loss)

    @property
    def name(self) -> str:
        """``"fgsm"`` / ``"fgsm-rs"`` for one step without / with a random start, else ``"pgd"``."""
        if self.steps == 1:
            return "fgsm-rs" if self.random_init else "fgsm"
        return "pgd"

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
        loss_fn = get_loss(self.loss)
        settled = Settled(x) if early_stop else None
        best: tuple[Tensor, Tensor, Tensor] | None = None  # without early exit: (x, fooled, loss)
        best_x, best_loss = x.clone(), torch.full_like(eps, -torch.inf)  # with it: survivors'
        for restart in range(self.restarts):
            # drawn for the full batch: a start never depends on which examples are settled
            start = self._starting_point(x, eps, x_init if restart == 0 else None, generator)
            x_end = self._ascend(model, x, y, eps, start, loss_fn, settled)
            if settled is not None and len(settled.rows) == 0:
                break
            if settled is None:
                if self.restarts == 1:
                    return Outcome(x_end)
                best = _keep_stronger(best, x_end, *_judge(model, x_end, y, loss_fn))
                continue
            # early exit: judge the final iterates of the examples still attacked; settle the
            # fooled ones, keep the highest-loss final point of the others over the restarts
            rows = settled.rows
            fooled, loss = _judge(model, x_end, y[rows], loss_fn)
            settled.settle(x_end, fooled)
            alive = ~fooled
            rows, x_end, loss = rows[alive], x_end[alive], loss[alive]
            better = loss > best_loss[rows]
            best_x[rows[better]], best_loss[rows[better]] = x_end[better], loss[better]
            if len(settled.rows) == 0:
                break
        if settled is not None:
            return settled.outcome(best_x[settled.rows])
        assert best is not None
        return Outcome(best[0])

    def _starting_point(
        self, x: Tensor, eps: Tensor, x_init: Tensor | None, generator: torch.Generator | None
    ) -> Tensor:
        """``x_init`` if given, else a random point in the ball, else ``x`` itself."""
        if x_init is not None:
            return x_init
        if self.random_init:
            return self.geometry.random_init(x, eps, generator)
        return x

    def _ascend(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        eps: Tensor,
        start: Tensor,
        loss_fn: LossFn,
        settled: Settled | None,
    ) -> Tensor:
        """The shared gradient loop: ``steps`` projected steps of ``rel_step * eps`` each.

        With ``settled`` only its ``rows`` are attacked, and an example misclassified at an
        iterate (judged by the forward pass that gives the gradient there) is settled at it
        and dropped. Returns the final iterates of the examples still attacked (all of them
        without ``settled``)."""
        geometry = self.geometry
        if settled is not None:
            rows = settled.rows
            x, y, eps, start = x[rows], y[rows], eps[rows], start[rows]
        step_size = (self.rel_step * eps).view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        x_adv = start
        for _ in range(self.steps):
            _, grad, logits = input_gradient(model, x_adv, y, loss_fn)
            if settled is not None:
                keep = settled.settle(x_adv, logits.argmax(dim=1) != y)
                if keep is not None:
                    if len(keep) == 0:
                        break
                    x, y, eps, x_adv = x[keep], y[keep], eps[keep], x_adv[keep]
                    grad, step_size = grad[keep], step_size[keep]
            x_adv = geometry.project(x_adv + step_size * geometry.ascent_direction(grad, x), x, eps)
        return x_adv


@torch.no_grad()
def _judge(model: nn.Module, x_adv: Tensor, y: Tensor, loss_fn: LossFn) -> tuple[Tensor, Tensor]:
    """(B,) bool "misclassified" and (B,) float32 loss at ``x_adv`` (one forward pass)."""
    logits = model(x_adv)
    return logits.argmax(dim=1) != y, loss_fn(logits, y)


def _keep_stronger(
    best: tuple[Tensor, Tensor, Tensor] | None, x_adv: Tensor, fooled: Tensor, loss: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per example, keep the candidate that fools the model, else the one with higher loss."""
    if best is None:
        return x_adv, fooled, loss
    best_x, best_fooled, best_loss = best
    better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
    mask = better.view(-1, *([1] * (x_adv.ndim - 1)))
    return (
        torch.where(mask, x_adv, best_x),
        best_fooled | fooled,
        torch.where(better, loss, best_loss),
    )
