"""Devices: naming them, and finding the one a model lives on."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from robustft.errors import UserError, option


def available_devices() -> list[str]:
    """The device names this machine accepts: ``cpu``, ``cuda:I`` for each GPU, ``mps``."""
    names = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    return names + (["mps"] if mps is not None and mps.is_available() else [])


def pick_device(name: str = "auto") -> torch.device:
    """The device named ``name`` (``auto``: the first GPU if there is one, else the CPU).

    Raises:
        UserError: not a device name, or a device this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    have = available_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(
            f"{option('device', name)}: not a device name; this machine has: auto, "
            f"{', '.join(have)}"
        ) from None
    index = 0 if device.index is None else device.index
    known = device.type == "cpu" or f"{device.type}:{index}" in have or device.type in have
    if not known:
        raise UserError(
            f"{option('device', name)}: not available; this machine has: auto, {', '.join(have)}"
        )
    return device


def model_device(model: nn.Module, default: str | torch.device = "cpu") -> torch.device:
    """The device of ``model``'s first parameter (else its first buffer), ``default`` when it has
    neither."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device(default)
