"""The Ray launcher: every run of a sweep a Ray task on a Ray cluster (``--launcher ray``).

Each run is one task asking for ``--cpus-per-run`` CPUs and ``--gpus-per-run`` GPUs. The task
runs ``robustft train`` in a subprocess on its node (``--resume`` when the run directory holds
a checkpoint, decided when the task starts; ``torchrun`` with one process per GPU when it has
several), with ``OMP_NUM_THREADS`` set to its CPUs, output appended to the run's ``train.log``.
The subprocess dies with the task's worker process (``PR_SET_PDEATHSIG`` on Linux), so a task
whose worker or node died leaves no orphan holding the run directory, and Ray's retry of such a
task (``max_retries``) resumes the run from its last checkpoint. A run that fails on its own
(bad config, numerical fault) is not retried by Ray: the sweep records it failed and retries it
when it is run again, as the local launcher does.

Requirements: Ray (``pip install 'robustft[ray]'``) on the driver and every node, robustft
importable on every node, and the sweep directory (``--out``) on a filesystem every node sees,
with the same path: tasks write run directories there and the driver reads them. Without
``--address`` the driver connects to the cluster ``RAY_ADDRESS`` names, else starts a local Ray
instance on this machine.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustft.errors import UserError, first_line
from robustft.launchers import Ended, train_command
from robustft.launchers.local import worker_error
from robustft.run.rundir import RunDir
from robustft.utils.fsio import now
from robustft.utils.process import die_with_parent, thread_env

_logger = logging.getLogger(__name__)

MAX_RETRIES = 3  # retries of a task whose worker process or node died


def require_ray() -> Any:
    """The ``ray`` module.

    Raises:
        UserError: Ray is not installed.
    """
    try:
        import ray
    except ImportError:
        raise UserError(
            "--launcher ray needs Ray: pip install 'robustft[ray]' (or pip install 'ray[tune]')"
        ) from None
    return ray


def connect(address: str | None) -> bool:
    """Connect to the Ray cluster at ``address`` (None: ``RAY_ADDRESS``, else a new local
    instance) unless this process is connected already; returns whether it connected now.

    Raises:
        UserError: no cluster answers at ``address``.
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = address or os.environ.get("RAY_ADDRESS") or "a local instance"
        raise UserError(f"cannot connect to Ray at {where}: {first_line(err)}") from None
    return True


def train_task(run_dir: str, device: str, processes: int, threads: int) -> int:
    """The body of a run's Ray task: ``robustft train`` of ``run_dir`` in a subprocess tied to
    this worker; returns its exit code."""
    path = Path(run_dir)
    cmd = train_command(path, device, processes=processes)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **thread_env(threads)}
    node = os.uname().nodename
    with RunDir(path).train_log.open("ab") as log:
        log.write(f"=== {now()} ray task on {node}: {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            preexec_fn=die_with_parent,  # dies with the Ray worker
        )
        return proc.wait()


@dataclass
class RayLauncher:
    """Runs as Ray tasks (see the module docstring).

    Args:
        address: the cluster (None: ``RAY_ADDRESS``, else a local instance).
        cpus_per_run: CPUs each task asks for (its training threads).
        gpus_per_run: GPUs each task asks for; several train data-parallel under torchrun.
        max_retries: retries of a task whose worker or node died.
    """

    address: str | None = None
    cpus_per_run: int = 1
    gpus_per_run: int = 0
    max_retries: int = MAX_RETRIES
    _started_ray: bool = field(default=False, init=False)
    _task: Any = field(default=None, init=False)
    _slots: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.cpus_per_run < 1:
            raise UserError(f"--cpus-per-run must be >= 1, got {self.cpus_per_run}")
        if self.gpus_per_run < 0:
            raise UserError(f"--gpus-per-run must be >= 0, got {self.gpus_per_run}")
        require_ray()

    def _ensure(self) -> None:
        """Connect and size the cluster on first use (a sweep with nothing left to run never
        starts Ray)."""
        if self._task is not None:
            return
        ray = require_ray()
        self._started_ray = connect(self.address)
        total = ray.cluster_resources()
        cpus, gpus = int(total.get("CPU", 0)), int(total.get("GPU", 0))
        if self.gpus_per_run > gpus:
            raise UserError(
                f"--gpus-per-run {self.gpus_per_run}: the Ray cluster has {gpus} GPUs; ask for "
                "at most that many (0 trains on CPUs)"
            )
        if self.cpus_per_run > cpus:
            raise UserError(f"--cpus-per-run {self.cpus_per_run}: the Ray cluster has {cpus} CPUs")
        slots = cpus // self.cpus_per_run
        if self.gpus_per_run:
            slots = min(slots, gpus // self.gpus_per_run)
        self._slots = max(1, slots)
        self._task = ray.remote(train_task).options(
            num_cpus=self.cpus_per_run,
            num_gpus=self.gpus_per_run,
            max_retries=self.max_retries,
            retry_exceptions=False,
        )
        _logger.info("ray: %d CPUs, %d GPUs: %d runs at a time", cpus, gpus, self._slots)

    def capacity(self) -> int:
        self._ensure()
        return self._slots

    def start(self, run_dir: Path) -> _Task:
        self._ensure()
        device = "cuda" if self.gpus_per_run else "cpu"
        processes = max(1, self.gpus_per_run)
        root = run_dir.resolve()  # the same path on every node (a shared filesystem)
        ref = self._task.remote(str(root), device, processes, self.cpus_per_run)
        return _Task(ref, RunDir(root).train_log)

    def pid(self, handle: _Task) -> int | None:
        return None  # the task may run on another node: the driver's claim stands for it

    def poll(self, handle: _Task) -> Ended | None:
        ray = require_ray()
        ready, _ = ray.wait([handle.ref], timeout=0)
        if not ready:
            return None
        try:
            code = int(ray.get(handle.ref))
        except ray.exceptions.RayError as err:
            return Ended(-1, f"ray task failed: {first_line(err)}")
        return Ended(code, None if code == 0 else worker_error(handle.log, code))

    def stop(self, handles: list[_Task]) -> None:
        ray = require_ray()
        for handle in handles:
            ray.cancel(handle.ref, force=True)

    def close(self) -> None:
        if self._started_ray:
            require_ray().shutdown()
            self._started_ray = False


@dataclass(frozen=True)
class _Task:
    """A launched run: its Ray object reference and its log on the shared filesystem."""

    ref: Any
    log: Path
