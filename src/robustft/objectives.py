"""Losses to train on: clean cross-entropy and adversarial cross-entropy (Madry et al. 2018),
with GradAlign's gradient-alignment regulariser when the attack is
:class:`~robustft.attacks.GradAlign` (Andriushchenko & Flammarion 2020).

An objective owns the attack call: ``objective(model, x, y, eps) -> ObjectiveOutput``. At
``eps == 0`` the attack is skipped and the objective is plain cross-entropy on clean inputs
(standard fine-tuning), at no extra cost.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robustft.attacks import Attack, Geometry, GradAlign

_TINY = 1e-12  # guards the cosine's division by a gradient norm that may be zero


@dataclass(frozen=True)
class ObjectiveOutput:
    """loss: scalar to backpropagate; logits: (B, K) on the inputs trained on; x_used: those
    inputs (adversarial or clean), (B, C, H, W); attack_steps: gradient steps the attack took."""

    loss: Tensor
    logits: Tensor
    x_used: Tensor
    attack_steps: int


@dataclass(frozen=True)
class AdversarialCE:
    """Cross-entropy on adversarial examples only (the paper's RFT objective); with a
    :class:`~robustft.attacks.GradAlign` attack, plus ``grad_align_lambda`` times
    :func:`grad_align_penalty` at the step's eps (skipped when lambda is 0).

    Args:
        attack: crafts the training examples (its ``eval_mode`` decides BN/dropout while
            crafting); the update itself runs with the model in train mode.
        autocast_bf16: run the forward/backward of the update under bf16 autocast.
    """

    attack: Attack
    autocast_bf16: bool = False

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        eps: float,
        *,
        generator: torch.Generator | None = None,
        x_init: Tensor | None = None,
        crafting_model: nn.Module | None = None,
    ) -> ObjectiveOutput:
        """The loss of ``model`` on adversarial examples of ``x`` at ``eps``.

        Args:
            generator: the attack's source of random starts.
            x_init: the attack's starting points instead of a random start.
            crafting_model: the module the attack runs through, when not ``model`` (a
                data-parallel run crafts through the unwrapped module, without DDP's
                gradient all-reduce).
        """
        steps, x_used, penalty = 0, x, None
        if eps > 0:
            crafter = model if crafting_model is None else crafting_model
            with self._autocast(x.device):
                x_used = self.attack(crafter, x, y, eps, x_init=x_init, generator=generator)
            steps = int(getattr(self.attack, "steps", 1)) * int(getattr(self.attack, "restarts", 1))
            attack = self.attack
            if isinstance(attack, GradAlign) and attack.grad_align_lambda > 0:
                with self._autocast(x.device):
                    cosine_gap = grad_align_penalty(
                        crafter, x, y, eps, geometry=attack.geometry, generator=generator
                    )
                penalty = attack.grad_align_lambda * cosine_gap
        with self._autocast(x.device):
            logits = model(x_used)
            loss = nn.functional.cross_entropy(logits.float(), y)
        if penalty is not None:
            loss = loss + penalty
        return ObjectiveOutput(loss=loss, logits=logits.detach(), x_used=x_used, attack_steps=steps)

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[None]:
        if not self.autocast_bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)


def grad_align_penalty(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    geometry: Geometry,
    generator: torch.Generator | None = None,
) -> Tensor:
    """GradAlign's regulariser without its weight: ``1 - mean cos(g(x), g(x + eta))``.

    ``g`` is the input gradient of the cross-entropy, ``eta`` a random point of the eps-ball
    (``geometry.random_init``: uniform in the l-inf cube, clamped to [0, 1]), the cosine taken
    per example over all input dimensions the threat model moves (every pixel; for text, the
    embeddings of ordinary tokens) and averaged over the examples whose two gradients are
    non-zero (0 when none is). As in the paper's code, the gradient at ``x`` is a constant
    and the one at ``x + eta`` is differentiated through (double backpropagation,
    ``create_graph=True``). Both are taken in the model's current mode, the update's (train
    mode), so that the cosine compares gradients of one function: the attack's FGSM gradient,
    taken in eval mode (``attack.eval_mode``), is not reused.

    Cost: 2 forward and 3 backward passes as :mod:`robustft.cost` counts them: one of each at
    ``x``, one of each at ``x + eta``, and the backward through that gradient's graph during the
    update (a double backward, which takes more time than a plain one).

    Args:
        model: the module trained (parameters requiring gradients), in train mode.
        x: (B, C, H, W) clean images in [0, 1].
        y: (B,) labels.
        eps: the step's budget (> 0), pixel units.
        geometry: the threat model's geometry (the ball eta is drawn from).
        generator: source of eta.

    Returns:
        A scalar in [0, 2], differentiable in the model's parameters.
    """
    cosine, counted = gradient_cosines(
        model, x, y, eps, geometry=geometry, generator=generator, create_graph=True
    )
    return ((1.0 - cosine) * counted).sum() / counted.sum().clamp_min(1.0)


def gradient_cosines(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    geometry: Geometry,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per-example ``cos(g(x), g(x + eta))`` and whether it counts (both (B,), float).

    ``g`` is the input gradient of the cross-entropy, ``eta`` a random point of the eps-ball
    (``geometry.random_init``), the cosine taken over all input dimensions; an example counts
    when both its gradients are non-zero (its cosine is then meaningful). With
    ``create_graph`` the gradient at ``x + eta`` keeps its graph (GradAlign's update
    differentiates through it); without, this is a measurement (the overfitting monitor's
    ``co_grad_align``, :mod:`robustft.monitor`). Cost: one forward and one backward pass at
    ``x`` and at ``x + eta``, in the model's current mode.
    """
    radius = torch.full((len(x),), float(eps), dtype=torch.float32, device=x.device)
    # over the coordinates the threat model moves (every pixel; not text's frozen tokens)
    restrict = geometry.space.restrict
    at_x = restrict(_input_gradient(model, x, y, create_graph=False), x).flatten(1)
    noisy = geometry.random_init(x.detach(), radius, generator)
    at_noise = restrict(_input_gradient(model, noisy, y, create_graph=create_graph), x).flatten(1)
    norms = at_x.norm(dim=1) * at_noise.norm(dim=1)
    cosine = (at_x * at_noise).sum(dim=1) / norms.clamp_min(_TINY)
    return cosine, (norms > 0).to(cosine.dtype)


def _input_gradient(model: nn.Module, x: Tensor, y: Tensor, *, create_graph: bool) -> Tensor:
    """(B, C, H, W) float32 gradient of the summed cross-entropy w.r.t. the input ``x``; with
    ``create_graph`` its graph is kept, to differentiate through in the parameters."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = nn.functional.cross_entropy(model(x).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x, create_graph=create_graph)
    return grad.float()
