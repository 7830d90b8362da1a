"""Transforms: resizing for evaluation, augmentation presets for training.

Augmentation presets (training split only; evaluation splits are resized only):

- ``none``: resize to ``image_size`` x ``image_size``.
- ``basic`` (default): resize, then a mild ``RandomResizedCrop`` (scale 0.8-1) and a horizontal
  flip.
- ``paper``: resize, horizontal flip, ``ColorJitter(0.25, 0.25, 0.25)``, ``RandomRotation(2)``
  (Paper A / Heuillet et al.).

Horizontal flips are never applied to datasets that are not flip-invariant: ``digits`` (a
mirrored 2, 3, 4, 5, 7 or 9 is not that digit). All other sets are treated as flip-invariant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from robustft.config import AUGMENTS
from robustft.data.spec import (
    RawImage,
    Transform,
)
from robustft.errors import unknown_name


def build_transform(
    image_size: int, augment: str = "none", *, flip: bool = True, resize: bool = True
) -> Transform:
    """Transform a PIL image or a float tensor ``(C, H, W)`` in ``[0, 1]`` to ``(3, S, S)``.

    Args:
        image_size: output side ``S`` in pixels.
        augment: ``none`` (resize only, used for evaluation), ``basic`` or ``paper``.
        flip: allow random horizontal flips (``basic`` and ``paper``).
        resize: start with the resize to ``S`` x ``S``; False for inputs that went through
            :func:`resize_transform` already (the preprocessed cache of in-memory images).

    Returns:
        A callable returning a float32 tensor ``(3, S, S)`` in ``[0, 1]``.
    """
    from torchvision.transforms import v2

    if augment not in AUGMENTS:
        raise unknown_name("augmentation preset", augment, AUGMENTS)
    size = (image_size, image_size)
    steps: list[Any] = [v2.ToImage()] + ([v2.Resize(size, antialias=True)] if resize else [])
    if augment == "basic":
        steps.append(v2.RandomResizedCrop(size, scale=(0.8, 1.0), antialias=True))
    if augment in ("basic", "paper") and flip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    if augment == "paper":
        steps += [v2.ColorJitter(0.25, 0.25, 0.25), v2.RandomRotation(2)]
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return _ToUnitTensor(v2.Compose(steps))


def resize_transform(image_size: int) -> Callable[[RawImage], Tensor]:
    """The first, deterministic steps of every :func:`build_transform` pipeline (to an image,
    resize to ``S`` x ``S``): what the preprocessed cache stores for training images, whose
    random augmentation then runs per epoch from ``build_transform(..., resize=False)``."""
    from torchvision.transforms import v2

    pipeline = v2.Compose([v2.ToImage(), v2.Resize((image_size, image_size), antialias=True)])

    def resize(image: RawImage) -> Tensor:
        return torch.as_tensor(pipeline(image)).as_subclass(Tensor)

    return resize


class _ToUnitTensor:
    """Run a torchvision pipeline; return a plain tensor with 3 channels clamped to ``[0, 1]``."""

    def __init__(self, pipeline: Callable[[Any], Any]) -> None:
        self.pipeline = pipeline

    def __call__(self, image: RawImage) -> Tensor:
        if isinstance(image, Image.Image) and image.mode != "RGB":
            image = image.convert("RGB")
        out = torch.as_tensor(self.pipeline(image)).as_subclass(Tensor)
        if out.shape[0] == 1:
            out = out.expand(3, -1, -1)
        return out.clamp(0.0, 1.0).contiguous()


def identity(image: RawImage) -> Tensor:
    assert isinstance(image, Tensor)
    return image
