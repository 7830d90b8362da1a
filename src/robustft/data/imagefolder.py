"""The ``imagefolder:<path>`` source.

``imagefolder:<path>``: images in class folders. Either ``<path>/train/<class>/<image>``
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

Recipes for the paper's other datasets (ImageFolder layouts):

- CUB-200-2011: from ``CUB_200_2011/`` use ``images.txt``, ``train_test_split.txt`` and
  ``image_class_labels.txt`` to link each image into ``cub200/train/<class>/`` or
  ``cub200/test/<class>/`` (200 classes, 5,994 / 5,794 images), then use
  ``imagefolder:cub200``; validation is carved from train.
- Stanford Dogs: the archive ``Images/<wnid>-<breed>/`` plus ``train_list.mat`` /
  ``test_list.mat``; link files into ``dogs/train/<breed>/`` and ``dogs/test/<breed>/`` (120
  classes, 12,000 / 8,580 images), then ``imagefolder:dogs``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from robustft.data.images import DECODE_ERRORS, FileSource
from robustft.data.spec import (
    Raw,
    Source,
)
from robustft.errors import UserError, first_line
from robustft.utils.process import cpu_count

logger = logging.getLogger(__name__)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


_VAL_DIRS = ("val", "valid", "validation")


def check_path_text(path_text: str) -> None:
    """Refuse an ``imagefolder:`` name without a path (whether the folder exists is seen when
    it is read, on the machine that trains)."""
    if not path_text.strip():
        raise UserError("imagefolder: no path given; write imagefolder:<directory>")


def load_imagefolder(path_text: str, bad_images: str = "refuse") -> Raw:
    """Read ``<path>/{train,val,test}/<class>/`` or a pool ``<path>/<class>/``, then decode every
    image once and refuse or skip the unreadable ones (``bad_images``)."""
    check_path_text(path_text)
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
    return Raw(parts, names, skipped=skipped)


def _drop_unreadable(
    root: Path,
    names: tuple[str, ...],
    scanned: dict[str, tuple[Path, list[Path], list[int]]],
    bad_images: str,
) -> tuple[dict[str, Source], tuple[str, ...]]:
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
    parts: dict[str, Source] = {}
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
        parts[split] = FileSource([paths[i] for i in keep], [labels[i] for i in keep])
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
    except DECODE_ERRORS as exc:
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
