"""The one entry point: :func:`build_datasets` (and :func:`build_datasets_from_spec`) turn a
dataset name and its settings into :class:`~robustft.data.spec.DataSplits`.

Dataset names are those of the registry :data:`DATASETS`: ``digits``, ``imagefolder:<path>`` and
the torchvision sets (:data:`~robustft.data.torchvision.TORCHVISION_SETS`), and the text datasets
``drugreview`` and ``text:<path>`` (:mod:`~robustft.data.textfiles`); :func:`list_datasets`
lists them and :func:`check_dataset_name` validates one without reading any data.

Text splits are :class:`~robustft.data.text.TextSplit` of token ids, tokenised with the
backbone's tokenizer (the ``tokenizer`` argument; default all-MiniLM-L6-v2's) and cached under
``<root>/tokens`` (:mod:`~robustft.data.tokens`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from robustft.config import CUSTOM_PREFIX, DEFAULT_MAX_LENGTH, DataConfig
from robustft.data.digits import load_digits
from robustft.data.imagefolder import check_path_text, load_imagefolder
from robustft.data.images import fits_cache, preprocess
from robustft.data.spec import (
    DEFAULT_DATASET,
    DataSpec,
    DataSplits,
    ImageSplit,
    Raw,
    default_root,
)
from robustft.data.splits import (
    few_shot_indices,
    split_indices,
    train_part,
)
from robustft.data.text import TextSource, TextSplit
from robustft.data.textfiles import check_text_path, load_drugreview, load_text
from robustft.data.tokens import TextEncoder, TokenizerLike, cached_ids
from robustft.data.torchvision import TORCHVISION_SETS, load_torchvision
from robustft.data.transforms import build_transform, identity, resize_transform
from robustft.utils.registry import Registry

logger = logging.getLogger(__name__)


def build_datasets(
    name: str = DEFAULT_DATASET,
    *,
    image_size: int,
    seed: int,
    root: str | None = None,
    download: bool = False,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    augment: str = "basic",
    max_train_per_class: int | None = None,
    bad_images: str = "refuse",
    max_length: int = DEFAULT_MAX_LENGTH,
    text_column: str | None = None,
    label_column: str | None = None,
    labels: tuple[str, ...] | None = None,
    val_path: str | None = None,
    test_path: str | None = None,
    bad_rows: str = "refuse",
    tokenizer: TokenizerLike = None,
) -> DataSplits:
    """Build train/val/test splits of a dataset (see the module docstring for names and rules).

    Args:
        name: ``digits``, ``imagefolder:<path>``, a torchvision set name, ``drugreview`` or
            ``text:<path>``.
        image_size: side of the square output images in pixels.
        seed: seeds the splits and the few-shot subset.
        root: directory of downloadable datasets (default :func:`default_root`).
        download: let torchvision download a missing dataset (needs network).
        val_fraction: share of (train)val held out for validation.
        test_fraction: share of a single pool held out for test.
        augment: training augmentation preset: ``basic``, ``paper`` or ``none``.
        max_train_per_class: keep at most this many training images per class.
        bad_images: unreadable files in an image folder: ``refuse`` or ``skip``.
        max_length, text_column, label_column, labels, val_path, test_path, bad_rows: text
            data only, as the ``data`` keys of the same names
            (:class:`robustft.config.DataConfig`).
        tokenizer: text data only: the backbone's tokenizer (see
            :func:`robustft.data.tokens.load_tokenizer`; None: all-MiniLM-L6-v2's).

    Returns:
        :class:`DataSplits`.

    Raises:
        UserError: unknown name, missing or malformed data, unreadable image files (with
            ``bad_images="refuse"``), bad rows (with ``bad_rows="refuse"``), or too few
            examples to split.
    """
    spec = DataSpec(
        name,
        image_size,
        seed,
        root,
        download,
        val_fraction,
        test_fraction,
        augment,
        max_train_per_class,
        bad_images,
        max_length,
        text_column,
        label_column,
        labels,
        val_path,
        test_path,
        bad_rows,
    )
    if spec.modality == "text":  # the text keys, checked as a config's are
        text_keys = {k: v for k, v in asdict(spec).items() if k not in ("seed", "image_size")}
        DataConfig(**text_keys)
    return build_datasets_from_spec(spec, tokenizer=tokenizer)


def build_datasets_from_spec(spec: DataSpec, *, tokenizer: TokenizerLike = None) -> DataSplits:
    """Build the splits described by ``spec`` (see :func:`build_datasets`; ``tokenizer`` is read
    for text data only)."""
    raw = _load_raw(spec)
    indices = split_indices(raw, spec)
    if spec.max_train_per_class is not None:
        train_labels = raw.parts[train_part(raw)].labels
        indices["train"] = few_shot_indices(
            train_labels, indices["train"], spec.max_train_per_class, spec.seed
        )
    if spec.modality == "text":
        return _text_splits(raw, indices, spec, tokenizer)
    flip = raw.flip_invariant
    train_tf = build_transform(spec.image_size, spec.augment, flip=flip)
    eval_tf = build_transform(spec.image_size, "none")
    splits = {}
    for split, idx in indices.items():
        part = train_part(raw) if split not in raw.parts else split
        source, transform = raw.parts[part], train_tf if split == "train" else eval_tf
        if fits_cache(source, indices, spec.image_size):
            # resized once, not every epoch: training images keep their per-epoch augmentation
            # (the same random draws, the same values), evaluation images are final
            if split == "train":
                source = preprocess(source, idx, resize_transform(spec.image_size))
                transform = build_transform(spec.image_size, spec.augment, flip=flip, resize=False)
            else:
                source, transform = preprocess(source, idx, eval_tf), identity
        splits[split] = ImageSplit(source, idx, transform)
    return _assemble(splits, raw, spec)


def _text_splits(
    raw: Raw, indices: dict[str, np.ndarray], spec: DataSpec, tokenizer: TokenizerLike
) -> DataSplits:
    """Tokenise each part's texts (cached) and cut the splits out of them."""
    encoder = TextEncoder(tokenizer, max_length=spec.max_length)
    cache = (Path(spec.root).expanduser() if spec.root else default_root()) / "tokens"
    sources: dict[str, TextSource] = {}
    for part, source in raw.parts.items():
        assert isinstance(source, TextSource)
        sources[part] = source.with_ids(cached_ids(encoder, source.texts, cache))
    splits = {}
    for split, idx in indices.items():
        part = train_part(raw) if split not in raw.parts else split
        splits[split] = TextSplit(sources[part], idx, raw.class_names, encoder)
    return _assemble(splits, raw, spec)


def _assemble(splits: dict[str, Any], raw: Raw, spec: DataSpec) -> DataSplits:
    """The :class:`DataSplits` of an image or text task, logged."""
    out = DataSplits(
        splits["train"],
        splits["val"],
        splits["test"],
        len(raw.class_names),
        raw.class_names,
        spec,
        raw.flip_invariant,
        raw.skipped,
    )
    logger.info("data %s: %s, %d classes", spec.name, out.sizes(), out.num_classes)
    return out


def _load_raw(spec: DataSpec) -> Raw:
    """Dispatch on the dataset name."""
    raw: Raw = DATASETS.create(spec.name.strip(), spec)
    return raw


def _digits(spec: DataSpec) -> Raw:
    return load_digits()


def _imagefolder(path: str, spec: DataSpec) -> Raw:
    return load_imagefolder(path, spec.bad_images)


def _torchvision(name: str, spec: DataSpec) -> Raw:
    root = Path(spec.root).expanduser() if spec.root else default_root()
    return load_torchvision(name, root, spec.download)


DATASETS: Registry[Callable[..., Raw]] = Registry("dataset")
"""The datasets by name: each entry reads a dataset's images and labels from a
:class:`~robustft.data.spec.DataSpec` (``imagefolder`` gets the path after its colon first)."""


def _drugreview(spec: DataSpec) -> Raw:
    return load_drugreview(spec)


def _text(path: str, spec: DataSpec) -> Raw:
    return load_text(path, spec)


DATASETS.register("digits", _digits)
DATASETS.register("imagefolder", _imagefolder, argument="path")
for _name in TORCHVISION_SETS:
    DATASETS.register(_name, functools.partial(_torchvision, _name))
DATASETS.register("drugreview", _drugreview)
DATASETS.register("text", _text, argument="path")


def list_datasets() -> tuple[str, ...]:
    """The dataset names as written in ``data.name``: ``digits``, ``imagefolder:<path>``, the
    torchvision sets, ``drugreview``, ``text:<path>``."""
    return DATASETS.choices()


def is_dataset(name: object) -> bool:
    """Whether ``name`` is a dataset name :func:`build_datasets` reads."""
    return DATASETS.is_known(name)


def check_dataset_name(name: str) -> None:
    """Validate a ``data.name`` without reading any data: a name of :data:`DATASETS` (an
    ``imagefolder:`` one with a path), or ``custom:<class>``, which a run of datasets given
    from Python records.

    Raises:
        UserError: an unknown name (with the closest valid one) or an image folder without a
            path.
    """
    name = name.strip()
    if name.startswith(CUSTOM_PREFIX):
        return
    entry, path = DATASETS.resolve(name)
    if path is not None:
        (check_text_path if entry is _text else check_path_text)(path)
