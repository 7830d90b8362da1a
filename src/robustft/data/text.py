"""Text datasets: labelled texts with their token ids, one split of them, and a view of a split
through an input map.

A :class:`TextSplit` yields ``(ids, label)``: ``ids`` a LongTensor ``(max_length,)`` of token
ids padded with the tokenizer's pad id (:mod:`robustft.data.tokens`), ``label`` an ``int``.
It keeps the raw strings beside the ids (:attr:`TextSplit.texts`: the discrete attacks edit
them, the report shows them). :meth:`TextSplit.mapped` gives the same examples through a
per-example input map ``ids (L,) -> tensor``; that is how a backbone's frozen token embedder
turns ids into the float inputs the attacks perturb.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from robustft.data.tokens import TextEncoder

InputMap = Callable[[Tensor], Tensor]


class TextSource:
    """Labelled texts of one file (or split of a file), with their token ids once tokenised.

    Attributes:
        texts: the texts, as read (HTML entities of ``drugreview`` decoded).
        labels: int64 class indices, one per text.
        where: where each text is in its file (``row 5 (line 9)``), for messages.
        ids: LongTensor ``(N, max_length)`` once :meth:`with_ids` set it, else None.
    """

    def __init__(
        self,
        texts: Sequence[str],
        labels: Sequence[int] | np.ndarray,
        where: Sequence[str] = (),
        ids: Tensor | None = None,
    ) -> None:
        self.texts = list(texts)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.where = list(where)
        self.ids = ids

    def with_ids(self, ids: Tensor) -> TextSource:
        """The same texts with their token ids."""
        return TextSource(self.texts, self.labels, self.where, ids)

    def load(self, index: int) -> Tensor:
        if self.ids is None:
            raise RuntimeError("TextSource.load before the texts were tokenised (with_ids)")
        return self.ids[index]


class TextSplit(Dataset[tuple[Tensor, int]]):
    """One split of a text dataset: some rows of a tokenised :class:`TextSource`.

    Args:
        source: the tokenised texts and their labels.
        indices: positions in ``source`` belonging to this split.
        class_names: the class names, indexed by label.
        encoder: the :class:`~robustft.data.tokens.TextEncoder` that made the ids (its
            ``pad_id`` and ``special_ids``; ``encode`` turns edited texts into ids the same way).

    Attributes:
        indices: as given (int64).
        ids: LongTensor ``(N, max_length)``, the split's token ids.
        labels: LongTensor ``(N,)``.
        texts: the split's raw strings, in order.
        class_names, num_classes: the classes.
        encoder: as given (None when not given).
    """

    def __init__(
        self,
        source: TextSource,
        indices: np.ndarray,
        class_names: Sequence[str],
        encoder: TextEncoder | None = None,
    ) -> None:
        if source.ids is None:
            raise ValueError("TextSplit needs a tokenised source (TextSource.with_ids)")
        self.indices = np.asarray(indices, dtype=np.int64)
        rows = torch.from_numpy(self.indices)
        self.ids: Tensor = source.ids[rows]
        self.labels: Tensor = torch.from_numpy(source.labels[self.indices])
        self.texts = [source.texts[int(i)] for i in self.indices]
        self.where = [source.where[int(i)] for i in self.indices] if source.where else []
        self.class_names = tuple(class_names)
        self.encoder = encoder

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def max_length(self) -> int:
        return int(self.ids.shape[1])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.ids[i], int(self.labels[i])

    @property
    def targets(self) -> list[int]:
        """Labels of the split, in order."""
        return [int(v) for v in self.labels]

    def class_counts(self, num_classes: int) -> list[int]:
        """Number of texts per class, ``num_classes`` entries."""
        return torch.bincount(self.labels, minlength=num_classes).tolist()

    def mapped(self, input_map: InputMap) -> MappedTextSplit:
        """This split's examples as ``(input_map(ids), label)``."""
        return MappedTextSplit(self, input_map)


class MappedTextSplit(Dataset[tuple[Tensor, int]]):
    """A :class:`TextSplit` seen through a per-example input map: ``(input_map(ids), label)``.

    The map runs under ``torch.no_grad`` (it is frozen: an embedding lookup, not trained here).

    Attributes:
        split: the underlying split (its ``texts``, ``ids``, ``labels``, ``class_names``).
        input_map: the map, ``LongTensor (L,) -> Tensor``.
    """

    def __init__(self, split: TextSplit, input_map: InputMap) -> None:
        self.split = split
        self.input_map = input_map

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        ids, label = self.split[i]
        with torch.no_grad():
            return self.input_map(ids), label

    @property
    def targets(self) -> list[int]:
        return self.split.targets

    @property
    def texts(self) -> list[str]:
        return self.split.texts

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.split.class_names

    @property
    def num_classes(self) -> int:
        return self.split.num_classes

    def class_counts(self, num_classes: int) -> list[int]:
        return self.split.class_counts(num_classes)
