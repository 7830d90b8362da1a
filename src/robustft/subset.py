"""Which N examples an "N examples" evaluation looks at: a seeded, stratified sample.

Test and validation splits of an image folder come out sorted by class, so "the first N
examples" of them can hold one or two classes only (seen: a 3-class run at 44% clean accuracy
reported 0% on its first 6 test examples, all from the class it always got wrong). Every subset
robustft evaluates (``--max-examples``, ``eval.max_examples``, ``val.max_examples``, the masking
and gradient-free checks, the overfitting monitor) is therefore drawn here:

* stratified when the dataset's labels are known without decoding images (robustft's splits,
  ``TensorDataset``, anything with a ``targets`` list, and ``Subset`` of those): each class gets
  its share of ``n`` by the largest-remainder rule, ties and the examples within a class drawn
  from ``seed``;
* otherwise a seeded uniform sample without replacement.

Indices come back sorted, so per-example results stay in dataset order. :class:`Selection`
records what was drawn and is stored with the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset, TensorDataset


@dataclass(frozen=True)
class Selection:
    """A subset of a dataset: how it was drawn and which indices (sorted, dataset order)."""

    method: str  # "all", "stratified" or "uniform"
    seed: int
    size: int  # examples in the dataset
    indices: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.indices)

    def to_dict(self, *, with_indices: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "seed": self.seed, "n": self.n}
        out["of"] = self.size
        if with_indices and self.method != "all":
            out["indices"] = list(self.indices)
        return out


def dataset_labels(dataset: Any) -> np.ndarray | None:
    """The labels of ``dataset`` without loading its images, or None when they are not known."""
    if isinstance(dataset, Subset):
        inner = dataset_labels(dataset.dataset)
        return None if inner is None else inner[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].detach().cpu().numpy()
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):
        return np.asarray(targets)
    return None


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` positions of ``labels`` with each class's share of ``n`` (largest remainder), drawn
    from ``seed``; sorted. ``n`` must not exceed ``len(labels)``."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = n * counts / counts.sum()
    take = np.floor(quota).astype(np.int64)
    # the examples left over go to the largest remainders; a random order breaks ties
    order = rng.permutation(len(classes))
    ranked = order[np.argsort(-(quota - take)[order], kind="stable")]
    take[ranked[: n - int(take.sum())]] += 1
    chosen = [
        rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take) if k > 0
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def sample_size(dataset: Dataset, n: int | None) -> int:
    """How many examples an ``n``-example evaluation of ``dataset`` looks at (progress bars)."""
    size = len(dataset)  # type: ignore[arg-type]
    return size if n is None else min(n, size)


def select(dataset: Dataset, n: int | None, seed: int) -> Selection:
    """Choose at most ``n`` examples of ``dataset`` (all of them when ``n`` is None or >= its
    size): stratified by label where the labels are known, else uniformly; seeded."""
    size = len(dataset)  # type: ignore[arg-type]
    if n is None or n >= size:
        return Selection("all", seed, size, tuple(range(size)))
    labels = dataset_labels(dataset)
    if labels is not None:
        picked = stratified_indices(labels, n, seed)
        method = "stratified"
    else:
        picked = np.sort(np.random.default_rng(seed).choice(size, size=n, replace=False))
        method = "uniform"
    return Selection(method, seed, size, tuple(int(i) for i in picked))


def subset(dataset: Dataset, n: int | None, seed: int) -> tuple[Dataset, Selection]:
    """``dataset`` restricted to :func:`select`'s choice, and the choice."""
    chosen = select(dataset, n, seed)
    if chosen.method == "all":
        return dataset, chosen
    return Subset(dataset, list(chosen.indices)), chosen
