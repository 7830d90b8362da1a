"""What a dataset is: its spec (the validated ``data`` section and seed), its splits, and the
sources the splits read their images from.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "digits"
DATA_ENV = "ROBUSTFT_DATA"

RawImage = Image.Image | Tensor
Transform = Callable[[RawImage], Tensor]


def default_root() -> Path:
    """Where downloadable datasets live: ``$ROBUSTFT_DATA`` or ``~/.cache/robustft/data``."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "robustft" / "data"


@dataclass(frozen=True)
class DataSpec:
    """What data to build: the ``data`` section of a config, whose values
    :class:`robustft.config.DataConfig` validated, plus the run's seed.

    Attributes:
        name: ``digits``, ``imagefolder:<path>`` or a torchvision set name (module docstring).
        image_size: side of the square output images in pixels.
        seed: seeds the splits, the few-shot subset (not the augmentation: that uses torch's RNG).
        root: directory of downloadable datasets; ``None`` means :func:`default_root`.
        download: allow torchvision to download a missing dataset.
        val_fraction: share of the (train)val pool held out for validation, in (0, 1).
        test_fraction: share of a single pool held out for test, in (0, 1).
        augment: training augmentation preset, one of :data:`AUGMENTS`.
        max_train_per_class: keep at most this many training images per class (few-shot).
        bad_images: unreadable image files in an image folder: ``refuse`` (error naming the
            first one) or ``skip`` (leave them out, warn, list them in
            :attr:`DataSplits.skipped`).
    """

    name: str = DEFAULT_DATASET
    image_size: int = 32
    seed: int = 0
    root: str | None = None
    download: bool = False
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    augment: str = "basic"
    max_train_per_class: int | None = None
    bad_images: str = "refuse"


class Source(Protocol):
    """Random access to raw images: ``labels[i]`` and ``load(i)`` (PIL image or float tensor)."""

    labels: np.ndarray

    def load(self, index: int) -> RawImage: ...


@dataclass(frozen=True)
class DataSplits:
    """Train/validation/test datasets of one task.

    Attributes:
        train, val, test: datasets of ``(float tensor (3, S, S) in [0, 1], int label)``.
        num_classes: number of classes.
        class_names: the class names, indexed by label.
        spec: the request that built them.
        flip_invariant: whether horizontal flips preserve the labels.
        skipped: paths of the unreadable image files left out (``bad_images="skip"``), in scan
            order; empty when none were.
    """

    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    num_classes: int
    class_names: tuple[str, ...]
    spec: DataSpec = field(default_factory=DataSpec)
    flip_invariant: bool = True
    skipped: tuple[str, ...] = ()

    def sizes(self) -> dict[str, int]:
        """Number of images per split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


@dataclass
class Raw:
    """Loaded but unsplit data: sources per split name (``pool`` or ``train``/``val``/``test``)."""

    parts: dict[str, Source]
    class_names: tuple[str, ...]
    flip_invariant: bool = True
    skipped: tuple[str, ...] = ()


class ImageSplit(Dataset[tuple[Tensor, int]]):
    """One split: a subset of a source's images with a transform.

    Args:
        source: the raw images and their labels.
        indices: positions in ``source`` belonging to this split.
        transform: maps a raw image to a float tensor ``(3, S, S)`` in ``[0, 1]``.
    """

    def __init__(self, source: Source, indices: np.ndarray, transform: Transform) -> None:
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        j = int(self.indices[i])
        return self.transform(self.source.load(j)), int(self.source.labels[j])

    @property
    def targets(self) -> list[int]:
        """Labels of the split, in order, without loading images."""
        return [int(v) for v in self.source.labels[self.indices]]

    def class_counts(self, num_classes: int) -> list[int]:
        """Number of images per class, ``num_classes`` entries."""
        return np.bincount(self.source.labels[self.indices], minlength=num_classes).tolist()
