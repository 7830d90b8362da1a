"""The memory format a network computes in: NCHW (``torch.contiguous_format``) or channels_last
(NHWC), chosen for the user or as asked (``train.channels_last``, ``eval.channels_last``:
``auto``, true or false), applied to the network and to its inputs, and a network given from
Python handed back in the layout it came in.

The rule of ``auto`` (:func:`choose`), from the architecture family, the device and the dtype:
channels_last for a convolutional network (its 4-D convolution weights hold at least half of its
parameters) on a CPU, in fp32 or bf16, and on a CUDA GPU with bf16 autocast; NCHW for the rest
(a ViT, whose one 4-D weight is the patch embedding: 3% of ViT-Tiny's parameters; fp32 on a
GPU, not measured faster here; other devices). It is a rule, not a timing taken at start-up,
so the same config on the same kind of device always computes in the same format (and gives
the same numbers). The evidence, one CPU thread, an attack step (forward and input gradient,
batch 32): EfficientNet-Lite0 1.75x (fp32) / 1.58x (bf16) faster in channels_last, MobileNetV3
1.91x / 1.32x, ResNet-18 1.14x / 1.06x, ConvNeXt-Atto 1.14x / 0.96x, ViT-Tiny 0.93x / 1.05x;
a PGD-7 training epoch of the offline default 1.89x (``docs/results/performance.md``).

The format changes float rounding, not the arithmetic: accuracies agree within float noise
(the tests check identical verdicts on fixed seeds).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

CONV_SHARE = 0.5  # a network whose 4-D weights hold at least this share of its parameters


@dataclass(frozen=True)
class MemoryFormat:
    """The format chosen for a network: what was asked (``"auto"``, True or False), whether it
    computes in channels_last, and why."""

    requested: str | bool
    channels_last: bool
    reason: str

    @property
    def format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def name(self) -> str:
        return "channels_last" if self.channels_last else "nchw"

    def to_dict(self) -> dict[str, str | bool]:
        """As ``result.json`` and ``env.json`` record it: requested, chosen, reason."""
        return {"requested": self.requested, "chosen": self.name, "reason": self.reason}


def conv_share(model: nn.Module) -> float:
    """The share of ``model``'s parameters (elements) in 4-D weights (2-D convolutions)."""
    total = four = 0
    for p in model.parameters():
        total += p.numel()
        four += p.numel() if p.ndim == 4 else 0
    return four / total if total else 0.0


def choose(
    requested: str | bool, model: nn.Module, device: torch.device, *, bf16: bool, setting: str
) -> MemoryFormat:
    """The memory format for ``model`` on ``device`` (bf16 autocast or fp32): as ``requested``
    when true or false, else by the rule of the module docstring. ``setting`` names the config
    key in the reason (``train.channels_last``)."""
    if requested is not True and requested is not False:
        share = conv_share(model)
        dtype = "bf16" if bf16 else "fp32"
        where = f"{device.type} {dtype}"
        if share < CONV_SHARE:
            why = f"not a convolutional network (4-D weights hold {share:.0%} of its parameters)"
            return MemoryFormat("auto", False, f"{setting}=auto: {why}")
        conv = f"a convolutional network (4-D weights hold {share:.0%} of its parameters)"
        if device.type == "cpu" or (device.type == "cuda" and bf16):
            return MemoryFormat("auto", True, f"{setting}=auto: {conv} on {where}")
        return MemoryFormat(
            "auto", False, f"{setting}=auto: {conv}, but channels_last is not faster on {where}"
        )
    chosen = "channels_last" if requested else "NCHW"
    return MemoryFormat(requested, requested, f"{setting}={str(requested).lower()}: {chosen}")


def model_format(model: nn.Module) -> torch.memory_format:
    """The layout ``model`` computes in: channels_last when one of its 4-D parameters is stored
    channels_last (and not also NCHW, as a 1x1 kernel or a single channel is), else NCHW."""
    for p in model.parameters():
        nhwc = p.ndim == 4 and p.is_contiguous(memory_format=torch.channels_last)
        if nhwc and not p.is_contiguous():
            return torch.channels_last
    return torch.contiguous_format


def as_format(x: Tensor, memory_format: torch.memory_format) -> Tensor:
    """``x`` in ``memory_format`` when it is a 4-D batch (itself when already so)."""
    return x.contiguous(memory_format=memory_format) if x.ndim == 4 else x


def apply(model: nn.Module, chosen: MemoryFormat) -> None:
    """Store ``model``'s 4-D parameters and buffers in the chosen format, in place."""
    model.to(memory_format=chosen.format)  # type: ignore[call-overload]


@contextlib.contextmanager
def kept_layout(model: nn.Module) -> Iterator[nn.Module]:
    """Give ``model`` back with every parameter, gradient and buffer stored as it was on entry
    (the same strides; the values as they are at the exit), even on error: what runs inside may
    convert it to another memory format (``Module.to`` replaces buffers, so each is found again
    by its module and name)."""
    saved = []
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is not None:
                    grad = None if t.grad is None else t.grad.stride()
                    saved.append((table, name, t.stride(), grad))
    try:
        yield model
    finally:
        for table, name, stride, grad_stride in saved:
            t = table.get(name)
            if t is None:
                continue
            t.data = _restrided(t.data, stride)
            if t.grad is not None and grad_stride is not None:
                t.grad = _restrided(t.grad, grad_stride)


def _restrided(t: Tensor, stride: tuple[int, ...]) -> Tensor:
    """``t``'s values stored with ``stride`` (``t`` itself when it already is)."""
    if t.stride() == stride:
        return t
    out = torch.empty_strided(t.shape, stride, dtype=t.dtype, device=t.device)
    return out.copy_(t)
