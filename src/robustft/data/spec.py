"""What a dataset is: its spec (the validated ``data`` section and seed), its splits, and the
sources the splits read their images from (text splits: :mod:`robustft.data.text`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from robustft.config import DEFAULT_MAX_LENGTH, data_modality

if TYPE_CHECKING:
    from robustft.data.text import MappedTextSplit, TextSplit

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
        max_length: text only: tokens per text, ``[CLS]`` and ``[SEP]`` included.
        text_column, label_column: text only: the columns (JSONL keys) of the text and the label.
        labels: text only: the label set in class-index order (None: the sorted distinct
            labels of the training file).
        val_path, test_path: text only: files of the validation and test rows (None: carved
            out of the training file).
        bad_rows: text only: bad rows (empty text, unknown label, not UTF-8, missing fields):
            ``refuse`` or ``skip`` (leave them out, warn, list them in
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
    max_length: int = DEFAULT_MAX_LENGTH
    text_column: str | None = None
    label_column: str | None = None
    labels: tuple[str, ...] | None = None
    val_path: str | None = None
    test_path: str | None = None
    bad_rows: str = "refuse"

    @property
    def modality(self) -> str:
        """``"text"`` (``drugreview``, ``text:<path>``) or ``"image"``."""
        return data_modality(self.name)


class Source(Protocol):
    """Random access to raw images: ``labels[i]`` and ``load(i)`` (PIL image or float tensor)."""

    labels: np.ndarray

    def load(self, index: int) -> RawImage: ...


@dataclass(frozen=True)
class DataSplits:
    """Train/validation/test datasets of one task.

    Attributes:
        train, val, test: datasets of ``(float tensor (3, S, S) in [0, 1], int label)``, or for
            text data :class:`~robustft.data.text.TextSplit` of ``(token ids (L,), int label)``,
            packed for a model into :class:`~robustft.data.text.MappedTextSplit` of
            ``(float (L, D + 1), int label)``.
        num_classes: number of classes.
        class_names: the class names, indexed by label.
        spec: the request that built them.
        flip_invariant: whether horizontal flips preserve the labels.
        skipped: paths of the unreadable image files left out (``bad_images="skip"``), in scan
            order, or for text data one line per bad row left out (``bad_rows="skip"``: file, row,
            problem); empty when none were.
    """

    train: ImageSplit | TextSplit | MappedTextSplit
    val: ImageSplit | TextSplit | MappedTextSplit
    test: ImageSplit | TextSplit | MappedTextSplit
    num_classes: int
    class_names: tuple[str, ...]
    spec: DataSpec = field(default_factory=DataSpec)
    flip_invariant: bool = True
    skipped: tuple[str, ...] = ()

    @property
    def modality(self) -> str:
        """``"text"`` or ``"image"``."""
        return self.spec.modality

    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


@dataclass
class Raw:
    """Loaded but unsplit data: sources per split name (``pool`` or ``train``/``val``/``test``)."""

    parts: dict[str, Source]
    class_names: tuple[str, ...]
    flip_invariant: bool = True
    skipped: tuple[str, ...] = ()
    items: str = "images"  # what the examples are, for messages
    explicit: str = "provide explicit val/ and test/ folders"  # the fix for a split too small


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
