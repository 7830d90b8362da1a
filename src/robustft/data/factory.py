"""The one entry point: :func:`build_datasets` (and :func:`build_datasets_from_spec`) turn a
dataset name and its settings into :class:`~robustft.data.spec.DataSplits`.

Dataset names are those of the registry :data:`DATASETS`: ``digits``, ``imagefolder:<path>`` and
the torchvision sets (:data:`~robustft.data.torchvision.TORCHVISION_SETS`); :func:`list_datasets`
lists them and :func:`check_dataset_name` validates one without reading any data.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

from robustft.config import CUSTOM_PREFIX
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
) -> DataSplits:
    """Build train/val/test splits of a dataset (see the module docstring for names and rules).

    Args:
        name: ``digits``, ``imagefolder:<path>`` or a torchvision set name.
        image_size: side of the square output images in pixels.
        seed: seeds the splits and the few-shot subset.
        root: directory of downloadable datasets (default :func:`default_root`).
        download: let torchvision download a missing dataset (needs network).
        val_fraction: share of (train)val held out for validation.
        test_fraction: share of a single pool held out for test.
        augment: training augmentation preset: ``basic``, ``paper`` or ``none``.
        max_train_per_class: keep at most this many training images per class.
        bad_images: unreadable files in an image folder: ``refuse`` or ``skip``.

    Returns:
        :class:`DataSplits`.

    Raises:
        UserError: unknown name, missing or malformed data, unreadable image files (with
            ``bad_images="refuse"``), or too few images to split.
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
    )
    return build_datasets_from_spec(spec)


def build_datasets_from_spec(spec: DataSpec) -> DataSplits:
    """Build the splits described by ``spec`` (see :func:`build_datasets`)."""
    raw = _load_raw(spec)
    indices = split_indices(raw, spec)
    if spec.max_train_per_class is not None:
        train_labels = raw.parts[train_part(raw)].labels
        indices["train"] = few_shot_indices(
            train_labels, indices["train"], spec.max_train_per_class, spec.seed
        )
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
    out = DataSplits(
        splits["train"],
        splits["val"],
        splits["test"],
        len(raw.class_names),
        raw.class_names,
        spec,
        flip,
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
DATASETS.register("digits", _digits)
DATASETS.register("imagefolder", _imagefolder, argument="path")
for _name in TORCHVISION_SETS:
    DATASETS.register(_name, functools.partial(_torchvision, _name))


def list_datasets() -> tuple[str, ...]:
    """The dataset names as written in ``data.name``: ``digits``, ``imagefolder:<path>``, the
    torchvision sets."""
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
    _, path = DATASETS.resolve(name)
    if path is not None:
        check_path_text(path)
