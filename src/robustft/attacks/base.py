"""The attack contract shared by every attack: ``attack(model, x, y, eps) -> x_adv``.

An attack object holds only hyperparameters and is never mutated by a call. The final
``__call__`` validates the inputs, skips examples with ``eps == 0`` at zero cost, puts the model
in eval mode with parameter gradients off (restored on exit), calls the subclass's
``_perturb``, projects the result into the eps-ball intersected with the input space's box
(``[0, 1]`` for images; for text, padding and special tokens and the kind channel at their clean
values: :mod:`robustft.attacks.space`) as a safety net (the wider ball of :meth:`Attack.reach`
for N-FGSM, which trains beyond eps by design and is refused by evaluation) and detaches it.

Evaluation asks a different question than training: not "where is a strong point?" but "is
this example still classified correctly under attack?". :meth:`Attack.evaluate` answers it
with *early exit* (``early_stop=True``): an example misclassified at any iterate is settled
(:class:`Settled`), its fooling point is its result, and the attack stops working on it (the
batch is compacted), so the remaining passes go to the examples still undecided. Training calls
the attack without early exit: the objective needs the point after every step.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from robustft.attacks.geometry import Geometry, get_geometry
from robustft.attacks.space import InputSpace
from robustft.errors import UserError, is_real


@contextlib.contextmanager
def evaluation_mode(model: nn.Module, *, enabled: bool = True) -> Iterator[nn.Module]:
    """Put every submodule of ``model`` in eval mode (when ``enabled``) and, on exit, set each
    submodule's ``training`` flag back to its own earlier value, even on error (a wrapper in
    train mode around a submodule in eval mode is restored exactly)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        if enabled:
            model.eval()
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def crafting_mode(model: nn.Module, *, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Put ``model`` in the state used to craft adversarial examples, and restore it on exit.

    Inside: every parameter has ``requires_grad=False`` (no parameter gradient is computed or
    left behind) and, when ``eval_mode`` is true, every submodule is in eval mode (BatchNorm
    statistics frozen, dropout off). On exit each submodule's ``training`` flag and each
    parameter's ``requires_grad`` are set back to what they were, even on error.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    with evaluation_mode(model, enabled=eval_mode):
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            yield model
        finally:
            for p, requires_grad in flags:
                p.requires_grad_(requires_grad)


def check_hyperparameter(name: str, value: object, valid: bool, expected: str) -> None:
    """Raise a :class:`UserError` naming a bad hyperparameter and its value unless ``valid``.

    Args:
        name: the hyperparameter, e.g. ``"steps"``.
        value: the value the user gave.
        valid: whether the value is acceptable.
        expected: what is accepted, e.g. ``"an integer >= 1"``.
    """
    if not valid:
        raise UserError(f"{name} must be {expected}, got {value!r}")


def as_eps_tensor(eps: float | Tensor, x: Tensor) -> Tensor:
    """Return eps as a float32 tensor of shape (B,) on ``x``'s device.

    Raises:
        UserError: eps is negative, non-finite, or a tensor of the wrong shape.
    """
    batch = x.shape[0]
    eps_t = torch.as_tensor(eps, dtype=torch.float32, device=x.device)
    if eps_t.ndim == 0:
        eps_t = eps_t.expand(batch)
    if eps_t.shape != (batch,):
        raise UserError(f"eps must be a scalar or shape ({batch},), got {tuple(eps_t.shape)}")
    if not bool(torch.isfinite(eps_t).all()) or bool((eps_t < 0).any()):
        raise UserError(f"eps must be finite and >= 0, got {eps_t.tolist()[:8]}")
    return eps_t.contiguous()


def input_gradient(
    model: nn.Module, x_adv: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """One forward and backward pass: per-example losses and their gradient w.r.t. the input.

    Only the input gradient is computed (``torch.autograd.grad``); inside
    :func:`crafting_mode` no parameter gradient is computed or stored. Works under autocast: the
    loss is computed in float32 and the gradient is returned as float32.

    Args:
        model: maps (B, C, H, W) to (B, K) logits.
        x_adv: (B, C, H, W) points at which to evaluate.
        y: (B,) labels.
        loss_fn: per-example loss, (B, K) logits and (B,) labels to (B,) float32.

    Returns:
        ``(losses, grad, logits)``: (B,) float32 losses, (B, C, H, W) float32 gradient of
        ``losses.sum()``, and the (B, K) logits, all detached.
    """
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_adv)
        losses = loss_fn(logits, y)
    (grad,) = torch.autograd.grad(losses.sum(), x_adv)
    return losses.detach(), grad.float(), logits.detach()


@dataclass(frozen=True)
class Outcome:
    """What one attack run crafted (the return value of ``_perturb``).

    Attributes:
        x_adv: (B, ...) adversarial points, inside the eps-ball and the input space's box.
        fooled: (B,) bool, the model misclassifies ``x_adv`` (judged by the attack's own
            forward passes), or None where the attack did not judge its points (training calls,
            and evaluation without early exit: the caller judges them with one forward pass).
    """

    x_adv: Tensor
    fooled: Tensor | None = None


@dataclass(frozen=True)
class Verdict:
    """What :meth:`Attack.evaluate` returns: the adversarial points and the judgement on each.

    Attributes:
        x_adv: (B, ...) adversarial points, inside the eps-ball and the input space's box.
        fooled: (B,) bool, the model misclassifies ``x_adv``: the example is not robust.
    """

    x_adv: Tensor
    fooled: Tensor


class Settled:
    """Early-exit bookkeeping of one evaluation call (made per call, never kept on an attack).

    An example misclassified at some iterate is *settled*: that iterate is its result, and the
    attack drops it from the batch it keeps working on. Its verdict cannot change afterwards,
    since the fooling point is already in hand; the examples still attacked follow exactly the
    iterates they would have followed in the full batch, because every attack's state is per
    example (random starts are drawn for the full batch before any example is dropped).

    Attributes:
        x_adv: (B, C, H, W) the fooling point of each settled example (``x`` elsewhere).
        fooled: (B,) bool, settled.
        rows: (A,) int64 positions in the batch of the examples still attacked, in order.
    """

    def __init__(self, x: Tensor) -> None:
        self.x_adv = x.clone()
        self.fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        self.rows = torch.arange(len(x), device=x.device)

    def settle(self, x_now: Tensor, misclassified: Tensor) -> Tensor | None:
        """Settle the examples of the current sub-batch (the ``rows``) misclassified at
        ``x_now``.

        Args:
            x_now: (A, C, H, W) the current iterates of the examples still attacked.
            misclassified: (A,) bool, the model misclassifies ``x_now``.

        Returns:
            None when no example settled (nothing to compact), else the (A',) positions within
            the sub-batch of the examples still attacked, to index every per-example tensor
            with. (Asking whether any settled is one device-to-host copy per step: evaluation
            only, and the price of knowing the new batch size.)
        """
        if not bool(misclassified.any()):
            return None
        settled = self.rows[misclassified]
        self.x_adv[settled] = x_now[misclassified]
        self.fooled[settled] = True
        keep = (~misclassified).nonzero().flatten()
        self.rows = self.rows[keep]
        return keep

    def outcome(self, x_adv: Tensor) -> Outcome:
        """The full batch: fooling points where settled, ``x_adv`` (the final points of the
        examples still attacked, in ``rows`` order) elsewhere, judged not fooled."""
        result = self.x_adv.clone()
        result[self.rows] = x_adv
        return Outcome(result, self.fooled.clone())


@torch.no_grad()
def misclassified(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """(B,) bool: ``model`` (in its current mode) misclassifies ``x`` (one forward pass)."""
    result: Tensor = model(x).argmax(dim=1) != y
    return result


@dataclass(frozen=True, kw_only=True)
class Attack(ABC):
    """Base class of all attacks. Subclasses are frozen dataclasses of hyperparameters.

    Attributes:
        norm: threat model, ``"linf"``, ``"l2"`` or (text) ``"l2-token"``; eps is measured in
            that norm, in the input space's units.
        eval_mode: craft with the model in eval mode (default, and always so in evaluation).
        space: the inputs attacked (:mod:`robustft.attacks.space`): ``"pixel"``, images
            (B, C, H, W) in [0, 1] (the default), or ``"embedding"``, packed text inputs
            (B, L, D + 1) whose padding and special tokens are never perturbed.
        training_only: the attack crafts training examples only (its points may leave the
            eps-ball, as N-FGSM's do, or it names a training method, as GradAlign): evaluation
            (:meth:`evaluate`) refuses it.
    """

    norm: str = "linf"
    eval_mode: bool = True
    space: str = "pixel"
    training_only: ClassVar[bool] = False

    def __post_init__(self) -> None:
        # raises UserError for an unknown norm or space, or a norm the space does not take
        get_geometry(self.norm, self.space)
        if not isinstance(self.eval_mode, bool):
            raise UserError(f"eval_mode must be true or false, got {self.eval_mode!r}")

    @property
    def geometry(self) -> Geometry:
        """The norm's geometry in the attack's input space (random init, ascent direction,
        projection)."""
        return get_geometry(self.norm, self.space)

    @property
    def input_space(self) -> InputSpace:
        """The input space (input checks, movable coordinates, box)."""
        return self.geometry.space

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        eps: float | Tensor,
        *,
        x_init: Tensor | None = None,
        generator: torch.Generator | None = None,
        early_stop: bool = False,
    ) -> Tensor:
        """Craft adversarial examples.

        Args:
            model: maps the inputs (images (B, C, H, W) in [0, 1], or packed text (B, L, D + 1)
                in the embedding space) to (B, K) logits.
            x: clean inputs of the attack's space: images (B, C, H, W), float in [0, 1], or
                packed text (B, L, D + 1) whose last channel is the token kind.
            y: labels, (B,), int64.
            eps: budget in ``self.norm``, in the space's units (pixels; for text, the model's
                unit scale): a float or a (B,) tensor.
            x_init: optional starting point shaped as ``x``, e.g. the adversarial example found at a
                smaller eps; projected into the ball first. Replaces the random start.
            generator: CPU ``torch.Generator`` for random starts and restarts; with the same
                seed the result is the same.
            early_stop: evaluation's early exit (see :meth:`evaluate`): an example misclassified
                at any iterate is returned at that point and no longer attacked. Off by default:
                training needs the point after the full step count.

        Returns:
            x_adv shaped as ``x``, detached, inside the eps-ball around x and the box; equal to
            ``x`` (the same values) wherever ``eps == 0``. (A training-only attack may go
            further, to its :meth:`reach`: N-FGSM's points lie within (k + 1) * eps.)
        """
        return self._attack(model, x, y, eps, x_init, generator, early_stop).x_adv

    def evaluate(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        eps: float | Tensor,
        *,
        x_init: Tensor | None = None,
        generator: torch.Generator | None = None,
        early_stop: bool = True,
    ) -> Verdict:
        """Attack and judge: the adversarial points and whether the model misclassifies each.

        With ``early_stop`` (the default) an example misclassified at any iterate is settled
        there: its fooling point is returned, it is no longer attacked, and its verdict comes
        from that iterate's forward pass; the examples still attacked run the full step count
        exactly as without early exit, and are judged at the point the attack returns. So the
        accuracy reported can only be lower than or equal to that of the final points alone:
        for APGD (which returns a fooling iterate whenever it found one) it is the same, for
        PGD an example fooled at an intermediate iterate counts as fooled even if a later step
        left the misclassified region. Without ``early_stop`` the attack runs to the end on
        every example and the points are judged with one more forward pass (the classic
        "attack, then predict", in eval mode).

        Args:
            model, x, y, eps, x_init, generator: as for :meth:`__call__`.
            early_stop: settle examples as soon as they are misclassified.

        Returns:
            A :class:`Verdict`.

        Raises:
            UserError: a training-only attack (:attr:`training_only`).
        """
        if self.training_only:
            raise UserError(
                f"attack '{self.name}' is for training only, not an evaluation attack (its "
                "examples may leave the eps-ball, or it names a training method); evaluate with "
                "apgd-ce, pgd or fgsm"
            )
        outcome = self._attack(model, x, y, eps, x_init, generator, early_stop)
        if outcome.fooled is not None:
            return Verdict(outcome.x_adv, outcome.fooled)
        with evaluation_mode(model):
            return Verdict(outcome.x_adv, misclassified(model, outcome.x_adv, y))

    def _attack(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        eps: float | Tensor,
        x_init: Tensor | None,
        generator: torch.Generator | None,
        early_stop: bool,
    ) -> Outcome:
        """Validate, skip examples with ``eps == 0`` and run the attack on the others."""
        self.input_space.check(x, y, x_init)
        if is_real(eps):  # one budget (training): checked on the host, no wait for the device
            value = float(eps)  # type: ignore[arg-type]
            if not math.isfinite(value) or value < 0:
                raise UserError(f"eps must be finite and >= 0, got {value}")
            if value == 0:
                return Outcome(x.detach())
            eps_t = torch.full((len(x),), value, dtype=torch.float32, device=x.device)
            return self._run(model, x.detach(), y, eps_t, x_init, generator, early_stop)
        eps_t = as_eps_tensor(eps, x)
        active = eps_t > 0
        if not bool(active.any()):
            return Outcome(x.detach())
        x = x.detach()
        if bool(active.all()):
            return self._run(model, x, y, eps_t, x_init, generator, early_stop)
        x_adv = x.clone()
        sub_init = None if x_init is None else x_init[active]
        sub = self._run(model, x[active], y[active], eps_t[active], sub_init, generator, early_stop)
        x_adv[active] = sub.x_adv
        return Outcome(x_adv)  # the eps == 0 examples were not judged

    def _run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        eps: Tensor,
        x_init: Tensor | None,
        generator: torch.Generator | None,
        early_stop: bool,
    ) -> Outcome:
        if x_init is not None:
            x_init = self.geometry.project(
                x_init.detach().to(x.device, x.dtype), x, self.start_radius(eps)
            )
        with crafting_mode(model, eval_mode=self.eval_mode):
            outcome = self._perturb(model, x, y, eps, x_init, generator, early_stop=early_stop)
        # the safety net leaves feasible points bit for bit unchanged, so verdicts stay valid
        x_adv = self.geometry.project(outcome.x_adv.detach(), x, self.reach(eps))
        return Outcome(x_adv, outcome.fooled)

    def start_radius(self, eps: Tensor) -> Tensor:
        """(B,) radius of the ball the random start (and ``x_init``) lies in: ``eps``, except
        for N-FGSM's wider noise."""
        return eps

    def reach(self, eps: Tensor) -> Tensor:
        """(B,) radius of the ball the returned points lie in: ``eps`` for every attack that
        evaluates; larger for a training-only attack such as N-FGSM."""
        return eps

    @abstractmethod
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
        """Adversarial examples for examples with eps > 0 (eps is (B,), all positive).

        With ``early_stop``, settle examples as they are misclassified (:class:`Settled`) and
        return their verdicts; without it, run every example to the end and leave ``fooled``
        None (the training path: no extra forward pass)."""

    def describe(self) -> dict[str, object]:
        """A JSON-serialisable description: the attack's registry name and hyperparameters.

        ``space`` is named only when it is not the pixel space, so that an image attack's
        description (in curve.json and result.json) is the one it had before text existed."""
        from dataclasses import asdict

        fields = asdict(self)
        if fields["space"] == "pixel":
            del fields["space"]
        return {"name": self.name, **fields}

    @property
    @abstractmethod
    def name(self) -> str:
        """The registry name, e.g. ``"pgd"``."""
