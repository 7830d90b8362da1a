"""How a split reads its images: from memory (tensors, preprocessed once when they fit), from
files, or from another dataset, each decoded to a float tensor in ``[0, 1]``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from robustft.data.spec import (
    RawImage,
    Source,
)
from robustft.errors import UserError, first_line

# what PIL raises for missing, unreadable, truncated or otherwise undecodable files
DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)


class TensorSource:
    """Images held in memory as a float tensor ``(N, C, H, W)`` in ``[0, 1]``."""

    def __init__(self, images: Tensor, labels: np.ndarray) -> None:
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)

    def load(self, index: int) -> RawImage:
        return self.images[index]


class _CachedSource:
    """Some images of another source, each preprocessed once and held as one float tensor.

    ``load(j)`` takes the same pool positions as the source it was made from (``labels`` is
    that source's), so the splits' indices do not change.
    """

    def __init__(self, images: Tensor, positions: np.ndarray, labels: np.ndarray) -> None:
        self.images = images
        self.labels = labels
        self.row = np.full(len(labels), -1, dtype=np.int64)
        self.row[positions] = np.arange(len(positions))

    def load(self, index: int) -> RawImage:
        return self.images[int(self.row[index])]


CACHE_BYTES = 512 * 2**20
"""In-memory sources (digits) whose preprocessed split images fit in this many bytes are
resized once instead of every epoch (:func:`preprocess`)."""


def preprocess(
    source: Source, indices: np.ndarray, transform: Callable[[RawImage], Tensor]
) -> _CachedSource:
    """``transform`` applied once to each image of ``source`` at ``indices`` (one at a time,
    exactly as the per-item pipeline would, so the values are the same bit for bit)."""
    images = torch.stack([transform(source.load(int(j))) for j in indices])
    return _CachedSource(images, indices, source.labels)


def fits_cache(source: Source, indices: dict[str, np.ndarray], image_size: int) -> bool:
    """Whether ``source`` is held in memory and its split images, preprocessed, fit
    :data:`CACHE_BYTES` (float32, 3 channels)."""
    count = sum(len(i) for i in indices.values())
    return isinstance(source, TensorSource) and count * 3 * image_size**2 * 4 <= CACHE_BYTES


class FileSource:
    """Image files on disk, opened with PIL and converted to RGB."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int]) -> None:
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)

    def load(self, index: int) -> RawImage:
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except DECODE_ERRORS as exc:
            # it decoded when the dataset was built: changed, deleted or made unreadable since
            raise UserError(
                f"cannot read image {path} ({type(exc).__name__}: {first_line(exc, 200)}); it was "
                "readable when the dataset was built: restore the file, or remove it and restart"
            ) from None


class DatasetSource:
    """A map-style dataset returning ``(PIL image, label)``, with labels known up front."""

    def __init__(self, dataset: Any, labels: Sequence[int]) -> None:
        self.dataset = dataset
        self.labels = np.asarray(labels, dtype=np.int64)

    def load(self, index: int) -> RawImage:
        image: RawImage = self.dataset[index][0]
        return image
