"""Training batches: one seeded shuffle per epoch, with a host pipeline sized to the device.

Two ways to feed the model, chosen by the number of worker processes:

* ``num_workers == 0`` (the default on CPU, where workers would take cores from the model):
  torch's ``DataLoader`` in the training process, shuffled by a generator seeded per epoch;
  augmentation draws from the global RNG, which the loop reseeds per epoch. Bitwise
  reproducible, which ``--resume`` relies on.
* ``num_workers > 0`` (the default on a GPU: :func:`default_workers`): worker processes kept
  alive across epochs (``persistent_workers``), a few batches prefetched each, pinned memory
  and non-blocking copies to a CUDA device. Each item is augmented from its own seed, derived
  from the epoch's seed and the item's index, so the images of an epoch do not depend on how
  many workers there are, on which worker loads which batch, nor on whether the run was
  resumed. They differ from the ``num_workers == 0`` images (a different stream of random
  draws), so a run does not change numbers when only its worker count changes between
  positive values.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from robustft.utils.process import cpu_count
from robustft.utils.seeding import derive_seed

MAX_DEFAULT_WORKERS = 8


def default_workers(device: torch.device) -> int:
    """Worker processes when ``train.num_workers`` is null: none on a CPU device (the model's
    threads use every core), else one per CPU but one (left to the training process), at most
    :data:`MAX_DEFAULT_WORKERS`."""
    if device.type != "cuda":
        return 0
    return max(0, min(MAX_DEFAULT_WORKERS, cpu_count() - 1))


class _SeededOrder(Sampler[tuple[int, int]]):
    """The shuffled order of one epoch as ``(item seed, index)`` pairs; :meth:`set_epoch_seed`
    before each epoch (the sampler runs in the training process, the workers persist)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.epoch_seed = 0

    def set_epoch_seed(self, seed: int) -> None:
        self.epoch_seed = seed

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.epoch_seed))
        for index in order.tolist():
            yield derive_seed(self.epoch_seed, index), index


class _SeededItems(Dataset[Any]):
    """``dataset[index]`` with torch's RNG seeded from the pair's seed first (in a worker
    process, whose RNG nothing else uses)."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __getitem__(self, pair: tuple[int, int]) -> Any:  # type: ignore[override]
        seed, index = pair
        torch.manual_seed(seed)
        return self.dataset[index]

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


class TrainBatches:
    """The training split's batches, one epoch at a time.

    Args:
        dataset: map-style dataset of ``(image, label)``.
        batch_size: examples per batch; a last batch of one example is dropped (it would break
            BatchNorm in train mode).
        num_workers: worker processes (0: load in the training process).
        pin_memory: page-locked host batches, for non-blocking copies to a CUDA device.
    """

    def __init__(
        self, dataset: Dataset[Any], *, batch_size: int, num_workers: int, pin_memory: bool
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        size = len(dataset)  # type: ignore[arg-type]
        self.drop_last = size % batch_size == 1
        self._order = _SeededOrder(size)
        self._pool: DataLoader[Any] | None = None

    def epoch(self, seed: int) -> Iterable[Any]:
        """The batches of the epoch whose shuffle (and, with workers, augmentation) is seeded
        by ``seed``."""
        if self.num_workers == 0:
            return DataLoader(
                self.dataset,
                batch_size=self.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(seed),
                num_workers=0,
                drop_last=self.drop_last,
                pin_memory=self.pin_memory,
            )
        if self._pool is None:
            self._pool = DataLoader(
                _SeededItems(self.dataset),
                batch_size=self.batch_size,
                sampler=self._order,
                num_workers=self.num_workers,
                drop_last=self.drop_last,
                pin_memory=self.pin_memory,
                persistent_workers=True,
                prefetch_factor=4,
            )
        self._order.set_epoch_seed(seed)
        return self._pool

    def __len__(self) -> int:
        """Batches per epoch."""
        size = len(self.dataset)  # type: ignore[arg-type]
        return size // self.batch_size if self.drop_last else -(-size // self.batch_size)
