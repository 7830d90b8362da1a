"""Losses to train on: clean cross-entropy and adversarial cross-entropy (Madry et al. 2018).

An objective owns the attack call: ``objective(model, x, y, eps) -> ObjectiveOutput``. At
``eps == 0`` the attack is skipped and the objective is plain cross-entropy on clean inputs
(standard fine-tuning), at no extra cost.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robustft.attacks import Attack


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
    """Cross-entropy on adversarial examples only (the paper's RFT objective).

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
        steps = 0
        if eps > 0:
            crafter = model if crafting_model is None else crafting_model
            with self._autocast(x.device):
                x = self.attack(crafter, x, y, eps, x_init=x_init, generator=generator)
            steps = int(getattr(self.attack, "steps", 1)) * int(getattr(self.attack, "restarts", 1))
        with self._autocast(x.device):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits.float(), y)
        return ObjectiveOutput(loss=loss, logits=logits.detach(), x_used=x, attack_steps=steps)

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[None]:
        if not self.autocast_bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)
