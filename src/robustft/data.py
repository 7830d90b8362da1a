"""Datasets, splits and transforms.

:func:`build_datasets` returns a :class:`DataSplits` whose ``train``, ``val`` and ``test`` datasets
yield ``(image, label)``: ``image`` a float32 tensor ``(3, image_size, image_size)`` in ``[0, 1]``
(no mean/std normalisation: that lives inside the model), ``label`` an ``int`` in
``[0, num_classes)``.

Dataset names:

- ``digits`` (offline default): scikit-learn's bundled handwritten digits, 1,797 images of 8x8
  pixels with values 0-16 and 10 classes, scaled to ``[0, 1]``, upsampled bilinearly to
  ``image_size`` and repeated to 3 channels.
- ``imagefolder:<path>``: images in class folders. Either ``<path>/train/<class>/<image>``
  (optionally ``val/`` or ``valid/`` or ``validation/``, and ``test/``, with the same class
  folders), or a single pool ``<path>/<class>/<image>``. A missing ``test/`` is carved out of
  ``train/`` (``test_fraction``), then a missing ``val/`` likewise (``val_fraction``). Class
  folders may nest images in subfolders; extensions: .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff
  .webp. A relative path is made absolute against the current directory
  (:class:`robustft.config.DataConfig`).
  Every image file is decoded once when the dataset is built (in parallel threads, JPEGs at
  reduced scale), so a corrupt or truncated file never stops training mid-epoch. With
  ``bad_images="refuse"`` (default) the first unreadable file is reported with its path; with
  ``"skip"`` unreadable files are left out (a warning names them, and
  :attr:`DataSplits.skipped` lists them all). Files with other extensions are ignored.
- torchvision sets: ``cifar10``, ``cifar100``, ``caltech256``, ``fgvc_aircraft``,
  ``stanford_cars``, ``flowers102``, ``oxford_pets``, ``dtd`` (partition 1), ``food101``.
  They are read from ``root`` (default: ``$ROBUSTFT_DATA`` or ``~/.cache/robustft/data``) in
  torchvision's layout and downloaded only with ``download=True`` (config key ``data.download``).
  Official train/val/test splits are used where they exist (Aircraft, Flowers-102, DTD); sets with
  only train/test (CIFAR, Cars, Pets (trainval/test), Food-101) get a validation split carved out
  of train; Caltech-256 (257 classes, clutter included) is a single pool. Stanford Cars can no
  longer be downloaded by torchvision: place it under ``<root>/stanford_cars`` yourself.

Splitting (as in Heuillet et al.'s code): a single pool is split 80/20 into trainval/test, then
15% of trainval becomes validation; every split is stratified by class (scikit-learn
``train_test_split``) and seeded by ``seed``. ``max_train_per_class`` then keeps at most that many
training images per class (seeded), for few-shot runs; validation and test are untouched.

Recipes for the paper's other datasets (ImageFolder layouts):

- CUB-200-2011: from ``CUB_200_2011/`` use ``images.txt``, ``train_test_split.txt`` and
  ``image_class_labels.txt`` to link each image into ``cub200/train/<class>/`` or
  ``cub200/test/<class>/`` (200 classes, 5,994 / 5,794 images), then use
  ``imagefolder:cub200``; validation is carved from train.
- Stanford Dogs: the archive ``Images/<wnid>-<breed>/`` plus ``train_list.mat`` /
  ``test_list.mat``; link files into ``dogs/train/<breed>/`` and ``dogs/test/<breed>/`` (120
  classes, 12,000 / 8,580 images), then ``imagefolder:dogs``.

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

import itertools
import logging
import os
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from robustft.config import AUGMENTS
from robustft.errors import UserError, first_line, setting, unknown_name
from robustft.loader import cpu_count

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "digits"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DATA_ENV = "ROBUSTFT_DATA"
_VAL_DIRS = ("val", "valid", "validation")
# what PIL raises for missing, unreadable, truncated or otherwise undecodable files
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)

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


class _Source(Protocol):
    """Random access to raw images: ``labels[i]`` and ``load(i)`` (PIL image or float tensor)."""

    labels: np.ndarray

    def load(self, index: int) -> RawImage: ...


class ImageSplit(Dataset[tuple[Tensor, int]]):
    """One split: a subset of a source's images with a transform.

    Args:
        source: the raw images and their labels.
        indices: positions in ``source`` belonging to this split.
        transform: maps a raw image to a float tensor ``(3, S, S)`` in ``[0, 1]``.
    """

    def __init__(self, source: _Source, indices: np.ndarray, transform: Transform) -> None:
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


# ----------------------------------------------------------------------------- transforms


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


# ----------------------------------------------------------------------------- sources


class _TensorSource:
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


def _identity(image: RawImage) -> Tensor:
    assert isinstance(image, Tensor)
    return image


CACHE_BYTES = 512 * 2**20
"""In-memory sources (digits) whose preprocessed split images fit in this many bytes are
resized once instead of every epoch (:func:`_preprocess`)."""


def _preprocess(
    source: _Source, indices: np.ndarray, transform: Callable[[RawImage], Tensor]
) -> _CachedSource:
    """``transform`` applied once to each image of ``source`` at ``indices`` (one at a time,
    exactly as the per-item pipeline would, so the values are the same bit for bit)."""
    images = torch.stack([transform(source.load(int(j))) for j in indices])
    return _CachedSource(images, indices, source.labels)


def _fits_cache(source: _Source, indices: dict[str, np.ndarray], image_size: int) -> bool:
    """Whether ``source`` is held in memory and its split images, preprocessed, fit
    :data:`CACHE_BYTES` (float32, 3 channels)."""
    count = sum(len(i) for i in indices.values())
    return isinstance(source, _TensorSource) and count * 3 * image_size**2 * 4 <= CACHE_BYTES


class _FileSource:
    """Image files on disk, opened with PIL and converted to RGB."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int]) -> None:
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)

    def load(self, index: int) -> RawImage:
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except _DECODE_ERRORS as exc:
            # it decoded when the dataset was built: changed, deleted or made unreadable since
            raise UserError(
                f"cannot read image {path} ({type(exc).__name__}: {first_line(exc, 200)}); it was "
                "readable when the dataset was built: restore the file, or remove it and restart"
            ) from None


class _DatasetSource:
    """A map-style dataset returning ``(PIL image, label)``, with labels known up front."""

    def __init__(self, dataset: Any, labels: Sequence[int]) -> None:
        self.dataset = dataset
        self.labels = np.asarray(labels, dtype=np.int64)

    def load(self, index: int) -> RawImage:
        image: RawImage = self.dataset[index][0]
        return image


@dataclass
class _Raw:
    """Loaded but unsplit data: sources per split name (``pool`` or ``train``/``val``/``test``)."""

    parts: dict[str, _Source]
    class_names: tuple[str, ...]
    flip_invariant: bool = True
    skipped: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- entry point


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
    indices = _split(raw, spec)
    if spec.max_train_per_class is not None:
        train_labels = raw.parts[_train_part(raw)].labels
        indices["train"] = few_shot_indices(
            train_labels, indices["train"], spec.max_train_per_class, spec.seed
        )
    flip = raw.flip_invariant
    train_tf = build_transform(spec.image_size, spec.augment, flip=flip)
    eval_tf = build_transform(spec.image_size, "none")
    splits = {}
    for split, idx in indices.items():
        part = _train_part(raw) if split not in raw.parts else split
        source, transform = raw.parts[part], train_tf if split == "train" else eval_tf
        if _fits_cache(source, indices, spec.image_size):
            # resized once, not every epoch: training images keep their per-epoch augmentation
            # (the same random draws, the same values), evaluation images are final
            if split == "train":
                source = _preprocess(source, idx, resize_transform(spec.image_size))
                transform = build_transform(spec.image_size, spec.augment, flip=flip, resize=False)
            else:
                source, transform = _preprocess(source, idx, eval_tf), _identity
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


def _load_raw(spec: DataSpec) -> _Raw:
    """Dispatch on the dataset name."""
    name = spec.name.strip()
    if name == "digits":
        return _load_digits()
    if name.startswith("imagefolder:"):
        return _load_imagefolder(name.removeprefix("imagefolder:"), spec.bad_images)
    if name in TORCHVISION_SETS:
        root = Path(spec.root).expanduser() if spec.root else default_root()
        return _load_torchvision(name, root, spec.download)
    raise unknown_name("dataset", name, ["digits", "imagefolder:<path>", *TORCHVISION_SETS])


def _train_part(raw: _Raw) -> str:
    return "pool" if "pool" in raw.parts else "train"


def check_class_set(
    expected: Sequence[str],
    found: Sequence[str],
    *,
    source: str,
    dataset: str = "the dataset",
    fix: str = "use data with exactly these class folders, or fine-tune a new run on this data",
) -> None:
    """Refuse a dataset whose classes (names, count or order) differ from a checkpoint's.

    Labels are class indices, so a different order would silently permute them.

    Args:
        expected: the class names the checkpoint was trained with, indexed by label.
        found: the dataset's class names, indexed by label.
        source: what ``expected`` comes from, e.g. ``"checkpoint runs/x/checkpoints/last.pt"``.
        dataset: what ``found`` comes from, e.g. ``"dataset imagefolder:/data/birds"``.
        fix: the advice ending the message.

    Raises:
        UserError: one line naming the count, the first missing and extra names, or the first
            label whose name differs.
    """
    want, got = [str(c) for c in expected], [str(c) for c in found]
    if want == got:
        return
    want_set, got_set = set(want), set(got)
    missing = [c for c in want if c not in got_set]
    extra = [c for c in got if c not in want_set]

    def names(items: list[str]) -> str:
        shown = ", ".join(repr(c) for c in items[:3])
        return shown + (f" and {len(items) - 3} more" if len(items) > 3 else "")

    if sorted(want) == sorted(got):
        label = next(i for i, (a, b) in enumerate(zip(want, got)) if a != b)
        what = (
            f"{source} and {dataset} have the same {len(want)} classes in a different order "
            f"(label {label} is {want[label]!r} vs {got[label]!r}), which would permute the labels"
        )
    else:
        details = [f"missing from {dataset}: {names(missing)}"] if missing else []
        details += [f"not in {source}: {names(extra)}"] if extra else []
        if not details:  # the same names, repeated differently
            details = [f"{names(want)} vs {names(got)}"]
        counts = (
            f"{source} has {len(want)} classes but {dataset} has {len(got)}"
            if len(want) != len(got)
            else f"{source} and {dataset} have different classes"
        )
        what = f"{counts} ({'; '.join(details)})"
    raise UserError(f"class mismatch: {what}; {fix}")


# ----------------------------------------------------------------------------- splitting


def _split(raw: _Raw, spec: DataSpec) -> dict[str, np.ndarray]:
    """Index arrays for train/val/test: official parts where present, else carved by ratio."""
    base = _train_part(raw)
    labels = raw.parts[base].labels
    train = np.arange(len(labels))
    out: dict[str, np.ndarray] = {}
    for split, fraction in (("test", spec.test_fraction), ("val", spec.val_fraction)):
        if split in raw.parts:
            out[split] = np.arange(len(raw.parts[split].labels))
        else:
            train, out[split] = stratified_split(
                labels, train, fraction, spec.seed, spec.name, class_names=raw.class_names
            )
            logger.info(
                "%s: %s carved from %s (%d images)", spec.name, split, base, len(out[split])
            )
    out["train"] = train
    return out


def stratified_split(
    labels: np.ndarray,
    indices: np.ndarray,
    fraction: float,
    seed: int,
    what: str = "data",
    *,
    class_names: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (kept, held out) with ``fraction`` held out, stratified by label.

    Args:
        labels: labels of the whole source, indexed by position.
        indices: positions to split.
        fraction: share held out, in (0, 1).
        seed: ``random_state`` of scikit-learn's ``train_test_split``.
        what: the dataset name, for error messages.
        class_names: the name of each label (its folder), for error messages; labels are
            named by number without them.

    Returns:
        Two sorted int64 arrays of positions.

    Raises:
        UserError: too few images per class to split stratified.
    """
    from sklearn.model_selection import train_test_split

    values, counts = np.unique(labels[indices], return_counts=True)
    lone = [int(v) for v, n in zip(values, counts) if n < 2]
    if lone:
        named = [repr(class_names[v]) if v < len(class_names) else str(v) for v in lone]
        shown = ", ".join(named[:5]) + (f" and {len(named) - 5} more" if len(named) > 5 else "")
        raise UserError(
            f"{what}: cannot hold out {fraction:g} of {len(indices)} images stratified by "
            f"class: class {shown} {'has' if len(lone) == 1 else 'have'} a single image "
            "there; add images to it (at least 2 per class, 3 when val and test are both "
            "carved out) or provide explicit val/ and test/ folders"
        )
    try:
        kept, held = train_test_split(
            indices, test_size=fraction, random_state=seed, stratify=labels[indices]
        )
    except ValueError as exc:
        raise UserError(
            f"{what}: cannot hold out {fraction:g} of {len(indices)} images stratified by class "
            f"({first_line(exc, 200)}); add images per class or provide explicit val/ and test/ "
            "folders"
        ) from None
    return np.sort(kept).astype(np.int64), np.sort(held).astype(np.int64)


def few_shot_indices(
    labels: np.ndarray, indices: np.ndarray, per_class: int, seed: int
) -> np.ndarray:
    """Keep at most ``per_class`` of ``indices`` for each label, chosen at random from ``seed``.

    Returns:
        A sorted int64 array, a subset of ``indices``.
    """
    rng = np.random.default_rng(seed)
    chosen = [
        rng.permutation(indices[labels[indices] == c])[:per_class]
        for c in np.unique(labels[indices])
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


# ----------------------------------------------------------------------------- digits


def _load_digits() -> _Raw:
    """scikit-learn's digits: (1797, 3, 8, 8) floats in [0, 1] (values 0-16 divided by 16)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).div_(16.0).clamp_(0.0, 1.0)
    images = images.unsqueeze(1).repeat(1, 3, 1, 1)
    source = _TensorSource(images, np.asarray(digits.target))
    names = tuple(str(i) for i in range(10))
    return _Raw({"pool": source}, names, flip_invariant=False)


# ----------------------------------------------------------------------------- image folders


def _load_imagefolder(path_text: str, bad_images: str = "refuse") -> _Raw:
    """Read ``<path>/{train,val,test}/<class>/`` or a pool ``<path>/<class>/``, then decode every
    image once and refuse or skip the unreadable ones (``bad_images``)."""
    if not path_text.strip():
        raise UserError("imagefolder: no path given; write imagefolder:<directory>")
    root = Path(path_text).expanduser().absolute()
    if not root.is_dir():
        raise UserError(f"imagefolder: {root} is not a directory; check the path in data.name")
    scanned: dict[str, tuple[Path, list[Path], list[int]]] = {}
    if not (root / "train").is_dir():
        names, paths, labels = _scan_classes(root)
        scanned["pool"] = (root, paths, labels)
    else:
        names, paths, labels = _scan_classes(root / "train")
        scanned["train"] = (root / "train", paths, labels)
        for split, candidates in (("val", _VAL_DIRS), ("test", ("test",))):
            folder = next((root / c for c in candidates if (root / c).is_dir()), None)
            if folder is None:
                continue
            other, paths, labels = _scan_classes(folder)
            if other != names:
                extra, lacking = sorted(set(other) - set(names)), sorted(set(names) - set(other))
                raise UserError(
                    f"imagefolder: class folders of {folder} differ from {root / 'train'} "
                    f"(only in {split}: {extra[:5]}, missing from {split}: {lacking[:5]}); "
                    "use the same class folders in every split"
                )
            scanned[split] = (folder, paths, labels)
    parts, skipped = _drop_unreadable(root, names, scanned, bad_images)
    return _Raw(parts, names, skipped=skipped)


def _drop_unreadable(
    root: Path,
    names: tuple[str, ...],
    scanned: dict[str, tuple[Path, list[Path], list[int]]],
    bad_images: str,
) -> tuple[dict[str, _Source], tuple[str, ...]]:
    """Decode every scanned image; refuse, or leave out the unreadable ones.

    Returns:
        (a file source per split, the skipped paths in scan order).

    Raises:
        UserError: an unreadable file with ``bad_images="refuse"``, or a class left without
            images in some split after skipping.
    """
    every = [p for _, paths, _ in scanned.values() for p in paths]
    bad = dict(find_unreadable_images(every))
    if bad and bad_images != "skip":
        first, why = next(iter(bad.items()))
        n = len(bad)
        files = "file" if n == 1 else "files"
        raise UserError(
            f"imagefolder: cannot read image {first} ({why}); {n} unreadable image {files} "
            f"under {root}; set data.bad_images=skip to leave them out, or remove the {files}"
        )
    if bad:
        shown = ", ".join(str(p) for p in list(bad)[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        logger.warning(
            "imagefolder %s: skipping %d unreadable image file(s) (data.bad_images=skip): %s%s",
            root,
            len(bad),
            shown,
            more,
        )
    parts: dict[str, _Source] = {}
    for split, (folder, paths, labels) in scanned.items():
        keep = [i for i, p in enumerate(paths) if p not in bad]
        present = {labels[i] for i in keep}
        for label, cls in enumerate(names):
            if label not in present:
                lost = [p for p, y in zip(paths, labels) if y == label]
                raise UserError(
                    f"imagefolder: all {len(lost)} image files of class '{cls}' in {folder} are "
                    f"unreadable (e.g. {lost[0]}); replace them, or remove the class folder "
                    "from every split"
                )
        parts[split] = _FileSource([paths[i] for i in keep], [labels[i] for i in keep])
    return parts, tuple(str(p) for p in bad)


def find_unreadable_images(
    paths: Sequence[Path], *, threads: int | None = None
) -> list[tuple[Path, str]]:
    """The files among ``paths`` that PIL cannot fully decode, with the reason.

    Each file is opened and decoded (JPEGs at 1/8 scale, which still reads the whole entropy-coded
    stream), so missing, empty, truncated and undecodable files are all found; ``verify()`` alone
    misses truncated JPEG, BMP, TIFF and PPM files. Runs in ``threads`` threads (default: one per
    64 files, at most one per CPU and 8), since PIL decodes without holding the GIL.

    Returns:
        ``(path, "ExceptionType: message")`` pairs in the order of ``paths``.
    """
    files = list(paths)
    if threads is None:
        threads = min(8, cpu_count(), len(files) // 64)
    if threads <= 1 or len(files) < 2:
        problems = [_decode_problem(p) for p in files]
    else:
        bounds = np.linspace(0, len(files), threads + 1).astype(int)
        chunks = [files[a:b] for a, b in itertools.pairwise(bounds)]
        with ThreadPoolExecutor(threads, thread_name_prefix="robustft-check") as pool:
            done = pool.map(lambda chunk: [_decode_problem(p) for p in chunk], chunks)
            problems = [why for part in done for why in part]
    return [(p, why) for p, why in zip(files, problems) if why is not None]


def _decode_problem(path: Path) -> str | None:
    """``None`` if ``path`` decodes to an RGB image, else ``"ExceptionType: message"``."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (1, 1))  # JPEG only: smallest DCT scale, a few times faster
            img.convert("RGB")
    except _DECODE_ERRORS as exc:
        return f"{type(exc).__name__}: {first_line(exc, 200)}"
    return None


def _scan_classes(folder: Path) -> tuple[tuple[str, ...], list[Path], list[int]]:
    """Class names (sorted subfolders), image paths and labels under ``folder``.

    Raises:
        UserError: no class subfolders, fewer than two classes, or a class without images.
    """
    layout = f"expected {folder}/<class>/<image>.jpg (or train/, val/, test/ split folders)"
    names = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name[0] != "."))
    if not names:
        empty = not any(folder.iterdir())
        raise UserError(
            f"imagefolder: {folder} {'is empty' if empty else 'has no class subfolders'}; {layout}"
        )
    if len(names) < 2:
        raise UserError(
            f"imagefolder: {folder} has a single class folder '{names[0]}'; "
            f"classification needs at least 2 classes; {layout}"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(names):
        files = sorted(
            p
            for p in (folder / cls).rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS
            and p.name[0] != "."
            and (p.is_file() or (p.is_symlink() and not p.exists()))  # broken links: reported
        )
        if not files:
            raise UserError(
                f"imagefolder: no image files ({' '.join(IMAGE_EXTENSIONS)}) "
                f"in {folder / cls}; add images or remove the folder"
            )
        paths += files
        labels += [label] * len(files)
    return names, paths, labels


# ----------------------------------------------------------------------------- torchvision sets


@dataclass(frozen=True)
class _TVSet:
    """How to read one torchvision dataset.

    Attributes:
        cls: class name in ``torchvision.datasets``.
        folder: where torchvision expects it, relative to ``root``.
        splits: our split name (``pool``/``train``/``val``/``test``) -> constructor kwargs.
    """

    cls: str
    folder: str
    splits: tuple[tuple[str, dict[str, Any]], ...]


_TRAIN_TEST = (("train", {"train": True}), ("test", {"train": False}))
_OFFICIAL3 = (("train", {"split": "train"}), ("val", {"split": "val"}), ("test", {"split": "test"}))
TORCHVISION_SETS: dict[str, _TVSet] = {
    "cifar10": _TVSet("CIFAR10", "cifar-10-batches-py", _TRAIN_TEST),
    "cifar100": _TVSet("CIFAR100", "cifar-100-python", _TRAIN_TEST),
    "caltech256": _TVSet("Caltech256", "caltech256/256_ObjectCategories", (("pool", {}),)),
    "fgvc_aircraft": _TVSet("FGVCAircraft", "fgvc-aircraft-2013b", _OFFICIAL3),
    "stanford_cars": _TVSet(
        "StanfordCars",
        "stanford_cars",
        (("train", {"split": "train"}), ("test", {"split": "test"})),
    ),
    "flowers102": _TVSet("Flowers102", "flowers-102", _OFFICIAL3),
    "oxford_pets": _TVSet(
        "OxfordIIITPet",
        "oxford-iiit-pet",
        (("train", {"split": "trainval"}), ("test", {"split": "test"})),
    ),
    "dtd": _TVSet("DTD", "dtd/dtd", _OFFICIAL3),
    "food101": _TVSet(
        "Food101", "food-101", (("train", {"split": "train"}), ("test", {"split": "test"}))
    ),
}


def _load_torchvision(name: str, root: Path, download: bool) -> _Raw:
    """Open each split of a torchvision dataset under ``root`` (downloading if allowed)."""
    import torchvision.datasets as tvd

    info = TORCHVISION_SETS[name]
    where = root / info.folder
    if not download and not where.exists():
        raise UserError(
            f"dataset '{name}' not found: looked in {where}; pass "
            f"{setting('data.download', True)} to download it when online, or set data.root "
            f"(or ${DATA_ENV}) to where it is"
        )
    parts: dict[str, _Source] = {}
    names: tuple[str, ...] = ()
    for split, kwargs in info.splits:
        try:
            dataset = getattr(tvd, info.cls)(str(root), download=download, **kwargs)
        except (RuntimeError, ValueError, OSError) as exc:
            action = "download" if download else "read"
            raise UserError(
                f"dataset '{name}': cannot {action} it under {where} ({type(exc).__name__}: "
                f"{first_line(exc, 200)}); check the files, or set data.download=true when online"
            ) from exc
        parts[split] = _DatasetSource(dataset, _labels_of(dataset))
        names = names or _class_names(dataset, parts[split].labels)
    return _Raw(parts, names)


def _class_names(dataset: Any, labels: np.ndarray) -> tuple[str, ...]:
    """Class names of a torchvision dataset (``classes`` or ``categories``), else the indices."""
    names = getattr(dataset, "classes", None) or getattr(dataset, "categories", None)
    if names:
        return tuple(str(c) for c in names)
    return tuple(str(i) for i in range(int(labels.max()) + 1))


def _labels_of(dataset: Any) -> list[int]:
    """All labels of a torchvision dataset without loading images."""
    for attr in ("targets", "_labels", "y"):
        values = getattr(dataset, attr, None)
        if values is not None:
            return [int(v) for v in values]
    samples = getattr(dataset, "_samples", None)
    if samples is not None:
        return [int(s[1]) for s in samples]
    raise RuntimeError(f"cannot read labels of {type(dataset).__name__} without loading images")
