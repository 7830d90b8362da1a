"""Per-example losses that attacks maximise.

Each loss maps logits (B, K) and labels (B,) to a (B,) float32 tensor; larger means "more
adversarial". Logits are cast to float32 first, so the losses are accurate under bf16/fp16
autocast.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional

from robustft.errors import UserError
from robustft.utils.registry import Registry

LossFn = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy ``-log softmax(logits)[y]``.

    Args:
        logits: (B, K) model outputs.
        y: (B,) int64 labels in ``[0, K)``.

    Returns:
        (B,) float32 losses in nats.
    """
    return functional.cross_entropy(logits.float(), y, reduction="none")


def dlr(logits: Tensor, y: Tensor) -> Tensor:
    """Untargeted Difference of Logits Ratio loss (Croce & Hein, ICML 2020).

    ``DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``, where ``z_pi1 >= z_pi2 >= ...``
    are the sorted logits. It is invariant to shifting and rescaling the logits; it is positive
    exactly when the example is misclassified.

    Args:
        logits: (B, K) model outputs, K >= 3.
        y: (B,) int64 labels in ``[0, K)``.

    Returns:
        (B,) float32 losses (dimensionless).

    Raises:
        UserError: the model has fewer than 3 classes (the denominator needs a third logit).
    """
    if logits.shape[-1] < 3:
        raise UserError(
            f"the DLR loss needs at least 3 classes, but the model outputs {logits.shape[-1]}; "
            "use a cross-entropy attack (e.g. 'apgd-ce') instead"
        )
    z = logits.float()
    z_sorted = z.sort(dim=1).values
    z_true = z.gather(1, y[:, None]).squeeze(1)
    true_is_top = z_sorted[:, -1] == z_true
    best_other = torch.where(true_is_top, z_sorted[:, -2], z_sorted[:, -1])
    return -(z_true - best_other) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


LOSSES: Registry[LossFn] = Registry("loss", {"ce": cross_entropy, "dlr": dlr})


def get_loss(name: str) -> LossFn:
    """Return the per-example loss called ``name``: ``"ce"`` or ``"dlr"``.

    Raises:
        UserError: unknown name.
    """
    return LOSSES.lookup(name)
