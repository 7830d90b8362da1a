"""Auto-PGD: step-size-free projected gradient ascent with momentum.

F. Croce and M. Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (arXiv:2003.01690); reference code fra31/auto-attack
(``autopgd_base.py``), ported by torchattacks (``torchattacks/attacks/apgd.py``). The step-size
checks follow the reference code, where AutoAttack and RobustBench numbers come from: given the
same start, an l-inf run visits the same points as torchattacks' APGD (l2: up to rounding).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from robustft.attacks.base import (
    Attack,
    Outcome,
    Settled,
    check_hyperparameter,
    input_gradient,
)
from robustft.attacks.geometry import Geometry
from robustft.attacks.losses import LossFn, get_loss
from robustft.errors import is_int, is_real

logger = logging.getLogger(__name__)

INITIAL_REL_STEP = 2.0  # the first step size is 2 * eps, for l-inf and l2 (paper and reference)


def reference_checkpoints(steps: int) -> frozenset[int]:
    """APGD's checkpoints as the reference code places them (fra31/auto-attack, torchattacks).

    The first check comes after ``max(int(0.22 * steps), 1)`` iterations; each later window is
    ``max(int(0.03 * steps), 1)`` shorter than the one before, but at least
    ``max(int(0.06 * steps), 1)`` long. The same float expressions as the reference's, so the
    truncations agree. Equal to :func:`paper_checkpoints` at 100 steps, not at 10, 20 or 50.

    Args:
        steps: the number of iterations ``N_iter``.

    Returns:
        The checkpoint iterations in ``[1, steps]`` (1-based: the check follows that
        iteration's step); e.g. ``{2, 3, ..., 10}`` for 10 steps and
        ``{4, 7, 9, 10, 11, ..., 20}`` for 20 steps.
    """
    window = max(int(0.22 * steps), 1)
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    points: set[int] = set()
    at = window
    while at <= steps:
        points.add(at)
        window = max(window - shrink, shortest)
        at += window
    return frozenset(points)


def paper_checkpoints(steps: int) -> frozenset[int]:
    """APGD's checkpoints by the paper's formula (Croce & Hein 2020, section 3.2).

    ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``, ``p_1 = 0.22`` and
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``: the checks get denser towards the end.
    Computed in integer hundredths so that rounding cannot shift a checkpoint.

    Args:
        steps: the number of iterations ``N_iter``.

    Returns:
        The checkpoint iterations in ``[1, steps]``; e.g. ``{3, 5, 6, 7, 8, 9, 10}`` for 10 steps.
    """
    previous, current = 0, 22
    points: set[int] = set()
    while current <= 100:
        points.add(-(-current * steps // 100))  # ceil(current / 100 * steps)
        previous, current = current, current + max(current - previous - 3, 6)
    return frozenset(p for p in points if 1 <= p <= steps)


CHECKPOINT_RULES: dict[str, Callable[[int], frozenset[int]]] = {
    "reference": reference_checkpoints,
    "paper": paper_checkpoints,
}


def checkpoint_iterations(steps: int, rule: str = "reference") -> frozenset[int]:
    """The iterations after which APGD may halve its step size.

    Args:
        steps: the number of iterations ``N_iter``.
        rule: ``"reference"`` (:func:`reference_checkpoints`, the default) or ``"paper"``
            (:func:`paper_checkpoints`).

    Returns:
        The checkpoint iterations in ``[1, steps]``.
    """
    return CHECKPOINT_RULES[rule](steps)


@dataclass
class _Search:
    """Mutable per-example state of one APGD run; every tensor has batch dimension B.

    Attributes:
        x_now: current iterate x^(k), (B, C, H, W).
        x_before: previous iterate x^(k-1), for the momentum term.
        grad: loss gradient at ``x_now``, float32.
        loss: (B,) loss of the latest iterate, against which the next increase is counted.
            As in the reference: 0 before the first step (the reference compares the first
            iterate with an unfilled, zero entry of its loss history), and a restart from the
            best point keeps it.
        step: (B,) current step size eta in pixel units of the norm.
        x_best, grad_best, loss_best: the highest-loss iterate so far, its gradient and loss.
        x_fooling: the latest iterate that was misclassified (meaningful where ``fooled``).
        fooled: (B,) bool, some iterate was misclassified.
        increases: (B,) number of loss increases since the last checkpoint.
        loss_best_at_check: (B,) ``loss_best`` at the last checkpoint.
        halved_at_check: (B,) bool, the step was halved at the last checkpoint; true before
            the first one, which (as in the reference) only tests condition (1).
    """

    x_now: Tensor
    x_before: Tensor
    grad: Tensor
    loss: Tensor
    step: Tensor
    x_best: Tensor
    grad_best: Tensor
    loss_best: Tensor
    x_fooling: Tensor
    fooled: Tensor
    increases: Tensor
    loss_best_at_check: Tensor
    halved_at_check: Tensor

    def select(self, keep: Tensor) -> _Search:
        """The state of the examples at positions ``keep`` only (early exit's compaction)."""
        return _Search(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})


def _per_example(values: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1), broadcastable against ``like``."""
    return values.view(-1, *([1] * (like.ndim - 1)))


def _start_search(
    model: nn.Module, x_start: Tensor, y: Tensor, eps: Tensor, loss_fn: LossFn
) -> _Search:
    """Evaluate the starting point x^(0) and build the initial state (one forward+backward)."""
    loss, grad, logits = input_gradient(model, x_start, y, loss_fn)
    return _Search(
        x_now=x_start,
        x_before=x_start,
        grad=grad,
        loss=torch.zeros_like(loss),
        step=INITIAL_REL_STEP * eps.float(),
        x_best=x_start,
        grad_best=grad,
        loss_best=loss,
        x_fooling=x_start,
        fooled=logits.argmax(dim=1) != y,
        increases=torch.zeros_like(loss, dtype=torch.int64),
        loss_best_at_check=loss,
        halved_at_check=torch.ones_like(y, dtype=torch.bool),
    )


def _momentum_step(
    search: _Search, x: Tensor, eps: Tensor, geometry: Geometry, momentum: float
) -> Tensor:
    """The APGD update: a projected gradient step, averaged with the previous displacement.

    ``z = P(x_k + eta * dir(grad))`` and
    ``x_{k+1} = P(x_k + momentum * (z - x_k) + (1 - momentum) * (x_k - x_{k-1}))``.
    """
    x_now = search.x_now
    step = _per_example(search.step, x_now).to(x_now.dtype)
    z = geometry.project(x_now + step * geometry.ascent_direction(search.grad, x), x, eps)
    moved = x_now + momentum * (z - x_now) + (1.0 - momentum) * (x_now - search.x_before)
    return geometry.project(moved, x, eps)


def _record_iterate(
    search: _Search, x_next: Tensor, loss: Tensor, grad: Tensor, logits: Tensor, y: Tensor
) -> None:
    """Make ``x_next`` the current iterate; update the best-loss and misclassified iterates."""
    search.increases = search.increases + (loss > search.loss).long()
    search.x_before, search.x_now = search.x_now, x_next
    search.loss, search.grad = loss, grad

    improved = loss > search.loss_best
    improved_4d = _per_example(improved, x_next)
    search.x_best = torch.where(improved_4d, x_next, search.x_best)
    search.grad_best = torch.where(improved_4d, grad, search.grad_best)
    search.loss_best = torch.where(improved, loss, search.loss_best)

    misclassified = logits.argmax(dim=1) != y
    search.x_fooling = torch.where(_per_example(misclassified, x_next), x_next, search.x_fooling)
    search.fooled = search.fooled | misclassified


def _adapt_step_size(search: _Search, window: int, rho: float) -> None:
    """At a checkpoint: halve eta where progress stalled, and restart those from the best point.

    Halve where (1) the loss increased in at most ``rho * window`` of the last ``window``
    steps (the reference's ``<=``; the paper writes "fewer than"), or (2) eta was not halved at
    the previous checkpoint and the best loss has not improved since.
    """
    too_few_increases = search.increases <= rho * window
    stalled = ~search.halved_at_check & (search.loss_best <= search.loss_best_at_check)
    halve = too_few_increases | stalled
    halve_4d = _per_example(halve, search.x_now)

    search.step = torch.where(halve, search.step / 2.0, search.step)
    search.x_now = torch.where(halve_4d, search.x_best, search.x_now)
    search.grad = torch.where(halve_4d, search.grad_best, search.grad)

    search.increases = torch.zeros_like(search.increases)
    search.loss_best_at_check = search.loss_best
    search.halved_at_check = halve


@dataclass(frozen=True, kw_only=True)
class APGD(Attack):
    """APGD-CE / APGD-DLR, untargeted, l-inf or l2 (Croce & Hein, ICML 2020).

    F. Croce and M. Hein, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks", ICML 2020. Gradient ascent with momentum whose step size
    starts at ``2 * eps`` and is halved at checkpoints (after 22%, 41%, 57%, ... of 100
    iterations; see :func:`reference_checkpoints`) where the loss stopped increasing; a halving
    restarts from the best point.

    The run starts from a random point in the ball (or ``x_init``). Further restarts
    (new random starts) attack only the examples not yet misclassified, as in the reference.
    Each returned example is a misclassified iterate when one was found, else the iterate with
    the highest loss.

    Cost: ``(steps + 1) * restarts`` forward+backward passes at most.

    Attributes:
        steps: iterations per restart (``N_iter``; the reference AutoAttack uses 100,
            torchattacks and the expected-robustness metric use 10).
        loss: ``"ce"`` (cross-entropy) or ``"dlr"`` (difference of logits ratio, >= 3 classes).
        restarts: number of random starts.
        rho: the step is halved unless more than this fraction of the steps since the last
            checkpoint increased the loss (0.75 in the paper and the reference).
        momentum: weight ``alpha`` of the new gradient step against the previous displacement
            (0.75 in the paper; 1.0 disables momentum).
        checkpoints: where the step size is checked: ``"reference"`` (the reference code's
            rule, :func:`reference_checkpoints`; the default) or ``"paper"`` (the paper's
            formula, :func:`paper_checkpoints`). The two agree at 100 steps, not at 10 or 20.
    """

    steps: int = 10
    loss: str = "ce"
    restarts: int = 1
    rho: float = 0.75
    momentum: float = 0.75
    checkpoints: str = "reference"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_hyperparameter(
            "steps", self.steps, is_int(self.steps) and self.steps >= 1, "an integer >= 1"
        )
        get_loss(self.loss)
        check_hyperparameter(
            "restarts",
            self.restarts,
            is_int(self.restarts) and self.restarts >= 1,
            "an integer >= 1",
        )
        check_hyperparameter("rho", self.rho, is_real(self.rho) and 0 <= self.rho <= 1, "in [0, 1]")
        check_hyperparameter(
            "momentum",
            self.momentum,
            is_real(self.momentum) and 0 < self.momentum <= 1,
            "in (0, 1]",
        )
        check_hyperparameter(
            "checkpoints",
            self.checkpoints,
            isinstance(self.checkpoints, str) and self.checkpoints in CHECKPOINT_RULES,
            " or ".join(repr(rule) for rule in CHECKPOINT_RULES),
        )

    @property
    def name(self) -> str:
        """``"apgd-ce"`` or ``"apgd-dlr"``."""
        return f"apgd-{self.loss}"

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
        x_adv = x.clone()
        best_loss = torch.full_like(eps, -torch.inf)
        fooled = torch.zeros_like(y, dtype=torch.bool)
        for restart in range(self.restarts):
            # the examples not yet misclassified: the same set with and without early exit
            if settled is not None:
                todo = settled.rows
            elif restart == 0:
                todo = torch.arange(len(x), device=x.device)
            else:
                todo = (~fooled).nonzero()[:, 0]
            if len(todo) == 0:
                break
            x_sub, eps_sub = x[todo], eps[todo]
            start = (
                x_init
                if restart == 0 and x_init is not None
                else self.geometry.random_init(x_sub, eps_sub, generator)
            )
            search = self._run_once(model, x_sub, y[todo], eps_sub, start, loss_fn, settled)
            if settled is not None:
                todo = settled.rows  # the examples this run did not settle, in search's order
            better = search.fooled | (search.loss_best > best_loss[todo])
            result = torch.where(
                _per_example(search.fooled, search.x_best), search.x_fooling, search.x_best
            )
            x_adv[todo] = torch.where(_per_example(better, result), result, x_adv[todo])
            best_loss[todo] = torch.where(better, search.loss_best, best_loss[todo])
            fooled[todo] = search.fooled
            if logger.isEnabledFor(logging.DEBUG):
                done = fooled if settled is None else fooled | settled.fooled
                logger.debug(
                    "%s restart %d: fooled %d/%d", self.name, restart, int(done.sum()), len(x)
                )
        if settled is not None:
            return settled.outcome(x_adv[settled.rows])
        return Outcome(x_adv)

    def _run_once(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        eps: Tensor,
        start: Tensor,
        loss_fn: LossFn,
        settled: Settled | None = None,
    ) -> _Search:
        """One APGD run of ``steps`` iterations from ``start`` (``steps + 1`` gradient passes).

        With ``settled`` (early exit; ``x``, ``y``, ``eps`` and ``start`` are its ``rows``), an
        example misclassified at an iterate is settled there and dropped from the state: the
        returned state holds only the examples left (``settled.rows`` after the call)."""
        geometry = self.geometry
        checkpoints = checkpoint_iterations(self.steps, self.checkpoints)
        search = _start_search(model, start, y, eps, loss_fn)
        last_checkpoint = 0
        for iteration in range(self.steps + 1):
            if iteration > 0:
                momentum = 1.0 if iteration == 1 else self.momentum
                x_next = _momentum_step(search, x, eps, geometry, momentum)
                loss, grad, logits = input_gradient(model, x_next, y, loss_fn)
                _record_iterate(search, x_next, loss, grad, logits, y)
            if settled is not None:
                keep = settled.settle(search.x_fooling, search.fooled)
                if keep is not None:
                    search, x, y, eps = search.select(keep), x[keep], y[keep], eps[keep]
                    if len(keep) == 0:
                        break
            if iteration in checkpoints:
                _adapt_step_size(search, iteration - last_checkpoint, self.rho)
                last_checkpoint = iteration
        return search
