"""Splits: train/val/test carved out, few-shot subsets, and the class checks between them.

Splitting (as in Heuillet et al.'s code): a single pool is split 80/20 into trainval/test, then
15% of trainval becomes validation; every split is stratified by class (scikit-learn
``train_test_split``) and seeded by ``seed``. ``max_train_per_class`` then keeps at most that many
training images per class (seeded), for few-shot runs; validation and test are untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from robustft.data.spec import (
    DataSpec,
    Raw,
)
from robustft.errors import UserError, first_line

logger = logging.getLogger(__name__)


def train_part(raw: Raw) -> str:
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


def split_indices(raw: Raw, spec: DataSpec) -> dict[str, np.ndarray]:
    """Index arrays for train/val/test: official parts where present, else carved by ratio."""
    base = train_part(raw)
    labels = raw.parts[base].labels
    train = np.arange(len(labels))
    out: dict[str, np.ndarray] = {}
    for split, fraction in (("test", spec.test_fraction), ("val", spec.val_fraction)):
        if split in raw.parts:
            out[split] = np.arange(len(raw.parts[split].labels))
        else:
            train, out[split] = stratified_split(
                labels,
                train,
                fraction,
                spec.seed,
                spec.name,
                class_names=raw.class_names,
                items=raw.items,
                explicit=raw.explicit,
            )
            logger.info(
                "%s: %s carved from %s (%d %s)", spec.name, split, base, len(out[split]), raw.items
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
    items: str = "images",
    explicit: str = "provide explicit val/ and test/ folders",
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
        items: what the examples are (``images``, ``rows``), for error messages.
        explicit: the fix naming explicit splits, for error messages.

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
        one = items.removesuffix("s")
        raise UserError(
            f"{what}: cannot hold out {fraction:g} of {len(indices)} {items} stratified by "
            f"class: class {shown} {'has' if len(lone) == 1 else 'have'} a single {one} "
            f"there; add {items} to it (at least 2 per class, 3 when val and test are both "
            f"carved out) or {explicit}"
        )
    try:
        kept, held = train_test_split(
            indices, test_size=fraction, random_state=seed, stratify=labels[indices]
        )
    except ValueError as exc:
        raise UserError(
            f"{what}: cannot hold out {fraction:g} of {len(indices)} {items} stratified by class "
            f"({first_line(exc, 200)}); add {items} per class or {explicit}"
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
