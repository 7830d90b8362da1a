"""What every backbone source shares: the :class:`_Built` result and small helpers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from torch import nn

from robustft.errors import UserError, first_line
from robustft.models.spec import DEFAULT_MODEL

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Built(NamedTuple):
    """What a backbone source returns to :func:`build_model_from_spec`: the network, its head
    and frozen parameters (names inside ``net``), its normalisation (None: none, as for text),
    input size (pixels; tokens for text), origin and modality (``image`` or ``text``)."""

    net: nn.Module
    head: tuple[str, ...]
    mean: Sequence[float] | None
    std: Sequence[float] | None
    input_size: int
    source: str
    modality: str = "image"
    frozen: tuple[str, ...] = ()


def _head_names(net: nn.Module, heads: Sequence[nn.Module]) -> tuple[str, ...]:
    """Qualified names of the given head modules inside ``net``."""
    names = tuple(n for n, m in net.named_modules() if any(m is h for h in heads))
    if not names or not any(True for h in heads for _ in h.parameters()):
        raise RuntimeError(f"could not locate a classifier head with parameters in {type(net)}")
    return names


def _cfg_size(value: Any, default: int = 224) -> int:
    """Square side from a timm ``input_size`` (3, H, W) or torchvision crop size."""
    if isinstance(value, (tuple, list)) and value:
        return int(value[-1])
    return int(value) if isinstance(value, (int, float)) else default


def _download_error(label: str, exc: BaseException) -> UserError:
    """UserError for pretrained weights that could not be fetched."""
    return UserError(
        f"cannot get pretrained weights for {label} ({type(exc).__name__}: {first_line(exc)}); "
        "when offline pass model.weights=<local .safetensors/.pth> or model.pretrained=false, "
        f"or use the offline default {DEFAULT_MODEL}"
    )
