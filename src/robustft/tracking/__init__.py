"""Experiment tracking: TensorBoard, MLflow and Weights & Biases, each an optional extra.

Chosen with ``log.backends`` in a config or ``--log NAME`` (repeatable) on ``robustft train``
and ``robustft sweep``. Each backend is a :class:`~robustft.tracking.base.Tracker` (a
:class:`~robustft.callbacks.Callbacks`) in its own module, imported only when used:

- :mod:`~robustft.tracking.tensorboard`: event files in ``<run dir>/tensorboard``;
- :mod:`~robustft.tracking.mlflow`: an MLflow run (``MLFLOW_TRACKING_URI``);
- :mod:`~robustft.tracking.wandb`: a W&B run (``WANDB_MODE=offline`` works without network).

:func:`robustft.training.fit.fit` adds the trackers of the config to the caller's callbacks. The ids
of the tracked runs are stored in the run directory (``tracking.json``), so ``--resume``
continues them.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass

from robustft.config import LogConfig
from robustft.errors import UserError
from robustft.tracking.base import Tracker
from robustft.utils.registry import Registry


@dataclass(frozen=True)
class Backend:
    """A registry entry: where the tracker class is (imported only when a tracker is made),
    the package it needs and the pip extra that installs it."""

    module: str
    cls: str
    package: str
    extra: str

    def installed(self) -> bool:
        """Whether the package is importable (without importing it)."""
        return importlib.util.find_spec(self.package) is not None

    def __call__(self, log: LogConfig) -> Tracker:
        tracker: Tracker = getattr(importlib.import_module(self.module), self.cls)(log)
        return tracker


BACKENDS: Registry[Backend] = Registry(
    "tracking backend",
    {
        "tensorboard": Backend(
            "robustft.tracking.tensorboard", "TensorBoardTracker", "tensorboard", "tensorboard"
        ),
        "mlflow": Backend("robustft.tracking.mlflow", "MlflowTracker", "mlflow", "mlflow"),
        "wandb": Backend("robustft.tracking.wandb", "WandbTracker", "wandb", "wandb"),
    },
)
"""The backends by name: the names of ``log.backends``
(:data:`robustft.config.LOG_BACKENDS`, checked when a config is built)."""


def check_backends(backends: Sequence[str]) -> None:
    """Fail fast, before anything is written, when a chosen backend is unknown or its package
    is missing.

    Raises:
        UserError: one line naming the backend and the extra that installs it.
    """
    for name in backends:
        backend = BACKENDS.lookup(name)
        if not backend.installed():
            raise UserError(
                f"log.backends: {name} is not installed; pip install 'robustft[{backend.extra}]' "
                f"(or drop --log {name})"
            )


def build_trackers(log: LogConfig) -> list[Tracker]:
    """One tracker per backend of ``log.backends`` (their packages are imported only when a
    tracker starts)."""
    check_backends(log.backends)
    return [BACKENDS.create(name, log) for name in log.backends]


__all__ = ["BACKENDS", "Backend", "Tracker", "build_trackers", "check_backends"]
