"""The torchvision sets.

torchvision sets: ``cifar10``, ``cifar100``, ``caltech256``, ``fgvc_aircraft``,
``stanford_cars``, ``flowers102``, ``oxford_pets``, ``dtd`` (partition 1), ``food101``.
They are read from ``root`` (default: ``$ROBUSTFT_DATA`` or ``~/.cache/robustft/data``) in
torchvision's layout and downloaded only with ``download=True`` (config key ``data.download``).
Official train/val/test splits are used where they exist (Aircraft, Flowers-102, DTD); sets with
only train/test (CIFAR, Cars, Pets (trainval/test), Food-101) get a validation split carved out
of train; Caltech-256 (257 classes, clutter included) is a single pool. Stanford Cars can no
longer be downloaded by torchvision: place it under ``<root>/stanford_cars`` yourself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robustft.data.images import (
    DatasetSource,
)
from robustft.data.spec import (
    DATA_ENV,
    Raw,
    Source,
)
from robustft.errors import UserError, first_line, setting


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


def load_torchvision(name: str, root: Path, download: bool) -> Raw:
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
    parts: dict[str, Source] = {}
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
        parts[split] = DatasetSource(dataset, _labels_of(dataset))
        names = names or _class_names(dataset, parts[split].labels)
    return Raw(parts, names)


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
