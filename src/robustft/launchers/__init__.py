"""Where a sweep's runs execute: launchers that start ``robustft train`` runs and say when they end.

* :mod:`~robustft.launchers.local`: ``--jobs N`` worker processes on this machine, each with
  cores/N threads and, when there are GPUs, its own GPU in turn.
* :mod:`~robustft.launchers.ray`: every run a Ray task with ``--cpus-per-run`` CPUs and
  ``--gpus-per-run`` GPUs (``torchrun`` inside the task for several GPUs) on a Ray cluster; a
  task whose node died is retried by Ray and resumes from its checkpoint.

``--index I`` (the I-th run in this process, for Slurm arrays) needs no launcher: it is
:mod:`robustft.sweep.index`. Launchers know nothing of sweeps, so the sweep and tune layers sit
above them.

The registry :data:`LAUNCHERS` names the first two (``robustft sweep --launcher NAME``):
:func:`list_launchers` lists them and ``LAUNCHERS.create(name, ...)`` makes one, importing its
module only then (Ray's only for ``ray``).

The sweep process (:func:`robustft.sweep.driver.run_sweep`) is the driver: it claims runs, starts
them through a launcher, follows their ``metrics.jsonl`` and records everything in ``sweep.db``,
which it alone writes. A launcher only runs ``robustft train`` with a run directory; whether the run
resumes is decided where and when it starts (from the checkpoint in its directory), so a retried
task picks up where its killed attempt stopped.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from robustft.run.rundir import RunDir
from robustft.utils.registry import Registry


@dataclass(frozen=True)
class Ended:
    """How a launched run ended: the exit code of ``robustft train`` and, when it failed, the
    one-line reason."""

    code: int
    error: str | None = None


class Launcher(Protocol):
    """Starts runs (given their run directory, holding ``config.yaml``) and reports their end."""

    def capacity(self) -> int:
        """Runs at a time."""
        ...

    def start(self, run_dir: Path) -> Any:
        """Start the run in ``run_dir``; returns a handle for :meth:`poll` and :meth:`stop`."""
        ...

    def poll(self, handle: Any) -> Ended | None:
        """None while the run goes on; how it ended once it has."""
        ...

    def pid(self, handle: Any) -> int | None:
        """The local process running it (the sweep store's liveness check), if on this host."""
        ...

    def stop(self, handles: list[Any]) -> None:
        """Stop runs still going (interrupted sweep); their checkpoints stay for resuming."""
        ...

    def close(self) -> None:
        """Release what the launcher holds (a Ray connection it made)."""
        ...


def train_command(run_dir: Path, device: str, *, processes: int = 1) -> list[str]:
    """``robustft train`` of the run in ``run_dir`` (its ``config.yaml``), with ``--resume``
    when the directory holds a checkpoint; under ``torchrun`` with ``processes`` > 1 (one per
    GPU of the run)."""
    run = RunDir(run_dir)
    args = ["train", str(run.config), "--run-dir", str(run.root), "--device", device]
    if run.has_checkpoint():
        args.append("--resume")
    if processes > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        return [sys.executable, *launcher, "-m", "robustft", *args]
    return [sys.executable, "-m", "robustft.cli", *args]


@dataclass(frozen=True)
class LauncherClass:
    """A registry entry: where a :class:`Launcher` class is, imported only when one is made
    (``LauncherClass(...)(*args, **options)`` makes it)."""

    module: str
    cls: str
    summary: str

    def __call__(self, *args: Any, **options: Any) -> Launcher:
        launcher: Launcher = getattr(importlib.import_module(self.module), self.cls)(
            *args, **options
        )
        return launcher


LAUNCHERS: Registry[LauncherClass] = Registry(
    "launcher",
    {
        "local": LauncherClass(
            "robustft.launchers.local", "LocalLauncher", "worker processes on this machine"
        ),
        "ray": LauncherClass("robustft.launchers.ray", "RayLauncher", "tasks on a Ray cluster"),
    },
)
"""The launchers by name (``--launcher``)."""


def list_launchers() -> tuple[str, ...]:
    """The launcher names (``local``, ``ray``)."""
    return LAUNCHERS.names()
