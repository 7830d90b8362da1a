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

from robustft.config import LogConfig
from robustft.errors import UserError
from robustft.tracking.base import Tracker

# backend -> (module, class name, the package it needs, the pip extra installing it)
BACKENDS: dict[str, tuple[str, str, str, str]] = {
    "tensorboard": (
        "robustft.tracking.tensorboard",
        "TensorBoardTracker",
        "tensorboard",
        "tensorboard",
    ),
    "mlflow": ("robustft.tracking.mlflow", "MlflowTracker", "mlflow", "mlflow"),
    "wandb": ("robustft.tracking.wandb", "WandbTracker", "wandb", "wandb"),
}


def check_backends(backends: Sequence[str]) -> None:
    """Fail fast, before anything is written, when a chosen backend's package is missing.

    Raises:
        UserError: one line naming the backend and the extra that installs it.
    """
    for name in backends:
        _, _, package, extra = BACKENDS[name]
        if importlib.util.find_spec(package) is None:
            raise UserError(
                f"log.backends: {name} is not installed; pip install 'robustft[{extra}]' "
                f"(or drop --log {name})"
            )


def build_trackers(log: LogConfig) -> list[Tracker]:
    """One tracker per backend of ``log.backends`` (their packages are imported only when a
    tracker starts)."""
    check_backends(log.backends)
    trackers = []
    for name in log.backends:
        module, cls, _, _ = BACKENDS[name]
        trackers.append(getattr(importlib.import_module(module), cls)(log))
    return trackers


__all__ = ["BACKENDS", "Tracker", "build_trackers", "check_backends"]
