"""Square Attack: a gradient-free random search in the l-inf ball (forward passes only).

M. Andriushchenko, F. Croce, N. Flammarion and M. Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020 (arXiv:1912.00049); reference code
max-andr/square-attack. Because it never asks for a gradient, it is unaffected by gradient
masking (zero, ``None`` or NaN input gradients, non-differentiable preprocessing, saturated
softmax layers), which is what :func:`robustft.robustness.checks.gradient_free_check` uses it for.

Only the l-inf version is implemented; the paper's l2 variant is not (building the attack with
``norm="l2"`` is a :class:`~robustft.errors.UserError`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from robustft.attacks.base import Attack, Outcome, check_hyperparameter
from robustft.errors import UserError, is_int, is_real

logger = logging.getLogger(__name__)

# (rescaled iteration threshold, divisor of p_init) of the reference schedule; iterations are
# rescaled to a 10,000-query budget first, so the schedule keeps its shape for any budget.
_P_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
               (6000, 128), (8000, 256))  # fmt: skip
_RESAMPLE_TRIES = 4  # redraws of a square that would leave the current point unchanged


def square_fraction(p_init: float, iteration: int, iterations: int) -> float:
    """Fraction ``p`` of the image a square covers at ``iteration`` (of ``iterations``).

    The reference schedule: ``p_init`` halves at rescaled iterations 10, 50, 200, 500, 1000,
    2000, 4000, 6000 and 8000 of 10,000 (e.g. ``p_init / 2`` after 0.1% of the budget).
    """
    rescaled = int(iteration / max(iterations, 1) * 10000)
    for threshold, divisor in _P_SCHEDULE:
        if rescaled <= threshold:
            return p_init / divisor
    return p_init / 512


def square_side(p: float, height: int, width: int) -> int:
    """Side in pixels of a square covering a fraction ``p`` of the image (``sqrt(p * H * W)``,
    the reference's ``sqrt(p * n_features / C)``), between 1 and ``min(H, W) - 1``."""
    side = round(math.sqrt(p * height * width))
    return max(1, min(side, min(height, width) - 1))


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """``z_y - max_{j != y} z_j`` per example, float32 (B,); negative means misclassified."""
    z = logits.float()
    true = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], -torch.inf)
    return true - others.amax(dim=1)


def _random_signs(
    shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor
) -> Tensor:
    """Uniform +-1 of ``shape``, drawn on the generator's device (CPU by default), dtype of like."""
    source = generator.device if generator is not None else torch.device("cpu")
    draw = torch.rand(shape, generator=generator, device=source) < 0.5
    return (draw.to(like.device).to(like.dtype) * 2) - 1


def _square_masks(
    batch: int,
    side: int,
    height: int,
    width: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    """(B, 1, H, W) bool: one ``side`` x ``side`` square per example at a uniform position."""
    source = generator.device if generator is not None else torch.device("cpu")
    top = torch.randint(0, height - side + 1, (batch,), generator=generator, device=source)
    left = torch.randint(0, width - side + 1, (batch,), generator=generator, device=source)
    rows = torch.arange(height, device=source)[None, :]
    cols = torch.arange(width, device=source)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)  # (B, W)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None].to(device)


@dataclass(frozen=True, kw_only=True)
class Square(Attack):
    """Square Attack, untargeted, l-inf (Andriushchenko et al., ECCV 2020). Gradient-free.

    Starts from vertical stripes (each column of each channel at ``+-eps``), then repeatedly
    sets one random square (the same random sign per channel over the square) to ``+-eps`` and
    keeps the change when the margin ``z_y - max_{j != y} z_j`` decreases. An example stops
    being queried once misclassified. Squares shrink over the budget (see
    :func:`square_fraction`). Works on models whose input gradient is zero, ``None`` or NaN.
    Like any score-based search it needs outputs that vary: on exactly flat outputs (e.g. a
    softmax saturated to one-hot) only a change of the predicted class is ever accepted.

    Cost: at most ``queries`` forward passes per example (one for the start, then one per
    iteration for the examples not yet misclassified); no backward pass.

    Attributes:
        queries: forward passes per example (the paper uses 10,000; a sanity check a few
            hundred).
        p_init: initial fraction of the image covered by a square (0.05 in the paper's l-inf
            ImageNet setting, 0.8 in torchattacks' default; larger is better for small images
            and budgets).
    """

    # robustness_curve draws uniform random starts for attacks whose ``random_init`` is true;
    # Square draws its own start (stripes at +-eps, much stronger), so it opts out.
    random_init: ClassVar[bool] = False

    queries: int = 300
    p_init: float = 0.8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm != "linf":
            raise UserError(
                f"the square attack supports only norm 'linf' (got '{self.norm}'); its l2 "
                "variant is not implemented"
            )
        if self.space != "pixel":
            raise UserError(
                f"the square attack supports only images (space 'pixel', got '{self.space}'): "
                "its squares are image patches"
            )
        check_hyperparameter(
            "queries", self.queries, is_int(self.queries) and self.queries >= 1, "an integer >= 1"
        )
        check_hyperparameter(
            "p_init", self.p_init, is_real(self.p_init) and 0 < self.p_init <= 1, "in (0, 1]"
        )

    @property
    def name(self) -> str:
        """``"square"``."""
        return "square"

    @torch.no_grad()
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
        # the search always stops querying an example once it is misclassified (early exit is
        # built in); with early_stop its verdicts are returned too
        radius = eps.to(x.dtype).view(-1, 1, 1, 1)
        if x_init is None:
            stripes = _random_signs((len(x), x.shape[1], 1, x.shape[3]), generator, x)
            x_init = (x + radius * stripes).clamp(0.0, 1.0)
        x_best = x_init.clone()
        logits = model(x_best)
        best = margin(logits, y)
        fooled = logits.argmax(dim=1) != y
        for iteration in range(self.queries - 1):
            todo = (~fooled).nonzero().flatten()
            if len(todo) == 0:
                break
            p = square_fraction(self.p_init, iteration, self.queries - 1)
            side = square_side(p, x.shape[2], x.shape[3])
            candidate = self._candidate(x[todo], x_best[todo], radius[todo], side, generator)
            logits = model(candidate)
            new = margin(logits, y[todo])
            better = new < best[todo]
            x_best[todo[better]] = candidate[better]
            best[todo[better]] = new[better]
            fooled[todo] = fooled[todo] | (better & (logits.argmax(dim=1) != y[todo]))
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("square: fooled %d/%d", int(fooled.sum()), len(x))
        return Outcome(x_best, fooled if early_stop else None)

    @staticmethod
    def _candidate(
        x: Tensor, x_best: Tensor, radius: Tensor, side: int, generator: torch.Generator | None
    ) -> Tensor:
        """``x_best`` with one random square per example set to ``x +- eps`` (per channel).

        A square that would leave ``x_best`` unchanged is redrawn (a few times at most).

        Args:
            x: clean images (B, C, H, W); x_best: current points; radius: (B, 1, 1, 1) eps.
        """
        _, channels, height, width = x.shape
        candidate = x_best.clone()
        redraw = torch.arange(len(x), device=x.device)
        for _ in range(_RESAMPLE_TRIES):
            mask = _square_masks(len(redraw), side, height, width, generator, x.device)
            signs = _random_signs((len(redraw), channels, 1, 1), generator, x)
            window = (x[redraw] + radius[redraw] * signs).clamp(0.0, 1.0)
            candidate[redraw] = torch.where(mask, window, x_best[redraw])
            same = (candidate[redraw] == x_best[redraw]).flatten(1).all(dim=1)
            redraw = redraw[same]
            if len(redraw) == 0:
                break
        return candidate
