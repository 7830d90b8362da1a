"""The one entry point: :func:`build_datasets` (and :func:`build_datasets_from_spec`) turn a
dataset name and its settings into :class:`~robustft.data.spec.DataSplits`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from robustft.data.digits import load_digits
from robustft.data.imagefolder import (
    load_imagefolder,
)
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
from robustft.errors import unknown_name

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
    name = spec.name.strip()
    if name == "digits":
        return load_digits()
    if name.startswith("imagefolder:"):
        return load_imagefolder(name.removeprefix("imagefolder:"), spec.bad_images)
    if name in TORCHVISION_SETS:
        root = Path(spec.root).expanduser() if spec.root else default_root()
        return load_torchvision(name, root, spec.download)
    raise unknown_name("dataset", name, ["digits", "imagefolder:<path>", *TORCHVISION_SETS])
