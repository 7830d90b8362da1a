"""Compute accounting: forward and backward passes through a model, counted as they happen.

A *pass* is one batched call of the model's forward (or one backward pass through it). Counts
are measured, not derived from hyperparameters: a forward hook on the model counts every call
and, when the output is part of an autograd graph, a tensor hook on it counts the backward pass
that reaches it. So one adversarial training step with FGSM costs 2 forward + 2 backward passes
(one to craft, one to update) and with PGD-7 costs 8 + 8, whatever the attack's internals.

``example_*`` counters weigh each pass by its batch size, which makes runs with different batch
sizes comparable: a full epoch of FGSM training over N images costs ``2 N`` example-forwards.

Example:
    >>> with count_passes(model) as passes:
    ...     loss = objective(model, x, y, eps).loss
    ...     loss.backward()
    >>> passes.forward, passes.backward
    (2, 2)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn


@dataclass
class PassCount:
    """Running counts (mutable accumulator; snapshot with :meth:`as_dict`).

    Attributes:
        forward, backward: batched forward calls / backward passes through the model.
        example_forward, example_backward: the same weighted by batch size (examples).
    """

    forward: int = 0
    backward: int = 0
    example_forward: int = 0
    example_backward: int = 0

    def as_dict(self, prefix: str = "") -> dict[str, int]:
        """The counts as a plain dict, keys prefixed (e.g. ``train_forward_passes``)."""
        return {
            f"{prefix}forward_passes": self.forward,
            f"{prefix}backward_passes": self.backward,
            f"{prefix}example_forward_passes": self.example_forward,
            f"{prefix}example_backward_passes": self.example_backward,
        }


def _batch_size(output: Any) -> int:
    tensor = output if isinstance(output, Tensor) else None
    if tensor is None and isinstance(output, (tuple, list)) and output:
        tensor = output[0] if isinstance(output[0], Tensor) else None
    return int(tensor.shape[0]) if tensor is not None and tensor.ndim > 0 else 1


@contextlib.contextmanager
def count_passes(model: nn.Module, into: PassCount | None = None) -> Iterator[PassCount]:
    """Count the forward and backward passes through ``model`` inside the block.

    Args:
        model: the module whose top-level ``forward`` calls are counted (hooks are removed on
            exit; nested calls of submodules are not counted separately).
        into: an accumulator to add to (a new one by default).

    Yields:
        The :class:`PassCount`, updated live.
    """
    count = into if into is not None else PassCount()

    def on_forward(_module: nn.Module, _inputs: Any, output: Any) -> None:
        n = _batch_size(output)
        count.forward += 1
        count.example_forward += n
        if isinstance(output, Tensor) and output.requires_grad:
            output.register_hook(lambda grad: _on_backward(n))

    def _on_backward(n: int) -> None:
        count.backward += 1
        count.example_backward += n

    handle = model.register_forward_hook(on_forward)
    try:
        yield count
    finally:
        handle.remove()
