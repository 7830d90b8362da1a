"""Weight files: reading local state dicts and loading them into a backbone.

A local ``weights`` file (``.safetensors``, or ``.pth``/``.pt``/``.bin`` read with
``torch.load(weights_only=True)``) holds a state dict of the backbone in the library's own
parameter names; the classifier head's keys are ignored (the task gets a new head), and any other
missing or unexpected key is an error. For ``efficientnet_lite0`` a file in EfficientNet-PyTorch
names is also accepted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustft.errors import UserError, few, first_line

_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def read_state_dict(path: str) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or (safely) from ``.pth``/``.pt``/``.bin``/``.ckpt``.

    Common wrappers are unwrapped: ``{"state_dict": ...}``, ``{"model": ...}``, a DDP
    ``module.`` prefix, and a robustft :class:`ClassifierModel` state dict (``net.`` prefix).

    Raises:
        UserError: the file is missing, has an unsupported extension, cannot be read, or does
            not hold a dict of tensors.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"weights file not found: {p}; check model.weights")
    suffix = p.suffix.lower()
    if suffix not in _WEIGHT_SUFFIXES:
        raise UserError(
            f"weights file {p}: unsupported extension '{suffix}'; "
            f"use one of {', '.join(_WEIGHT_SUFFIXES)}"
        )
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"cannot read weights file {p} ({type(exc).__name__}: {first_line(exc)}); "
            "is it a complete state dict saved with safetensors or torch.save?"
        ) from exc
    return _unwrap_state_dict(obj, p)


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    """Find the tensor dict in a loaded checkpoint and strip common prefixes."""
    if not _is_tensor_dict(obj) and isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
            if _is_tensor_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_tensor_dict(obj):
        raise UserError(
            f"weights file {path} does not contain a state dict (name -> tensor); "
            "save one with torch.save(model.state_dict(), path)"
        )
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if (
        "mean" in sd
        and "std" in sd
        and all(k.startswith("net.") for k in sd if k not in ("mean", "std"))
    ):
        sd = {k.removeprefix("net."): v for k, v in sd.items() if k not in ("mean", "std")}
    return sd


def load_backbone_weights(
    net: nn.Module,
    state_dict: Mapping[str, Tensor],
    head: Sequence[str],
    path: str,
    label: str,
) -> None:
    """Load ``state_dict`` into ``net``, ignoring the head's keys, and require an exact match.

    ``num_batches_tracked`` buffers may be absent from the file.

    Raises:
        UserError: keys missing from or unexpected in the file, or shape mismatches; the message
            lists a few of each.
    """

    def in_head(key: str) -> bool:
        return any(key == h or key.startswith(h + ".") for h in head)

    own = {k: v for k, v in net.state_dict().items() if not in_head(k)}
    given = {k: v for k, v in state_dict.items() if not in_head(k)}
    missing = [k for k in own if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in own]
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in given.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{len(missing)} missing ({few(missing)})" if missing else "",
            f"{len(unexpected)} unexpected ({few(unexpected)})" if unexpected else "",
            f"{len(shapes)} of other shape ({few(shapes)})" if shapes else "",
        ]
        raise UserError(
            f"weights file {path} does not fit {label}: keys "
            + "; ".join(p for p in parts if p)
            + "; was it saved from this architecture?"
        )
    net.load_state_dict(given, strict=False)
