"""The local launcher: ``--jobs N`` ``robustft train`` worker processes on this machine.

Each worker gets ``cores // N`` CPU threads (``OMP_NUM_THREADS``) and, when the sweep trains on
GPUs (``--device auto`` or ``cuda``) and the machine has them, a GPU of its own in turn: worker
slot k sees only GPU ``k mod G`` (``CUDA_VISIBLE_DEVICES``; of the GPUs this process may see).
A worker's output goes to ``train.log`` in its run directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from robustft.launchers import Ended, train_command
from robustft.run.rundir import RunDir
from robustft.utils.fsio import now
from robustft.utils.process import cpu_count, thread_env


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (its own list when
    set, else every GPU torch counts)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_for_slot(slot: int, gpus: list[str]) -> str | None:
    """The GPU of worker slot ``slot`` (0-based): the GPUs in turn; None without GPUs."""
    return gpus[slot % len(gpus)] if gpus else None


def worker_error(log_path: Path, returncode: int) -> str:
    """One line saying why a ``robustft train`` worker failed, from its exit code and log."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"worker killed by {name} (out of memory, or killed by hand); rerun to resume"
    try:
        with log_path.open("rb") as handle:
            handle.seek(max(0, log_path.stat().st_size - 8192))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        for prefix in ("robustft: error: ", "robustft: run failed: "):
            if line.startswith(prefix):
                return line.removeprefix(prefix).strip()
    if returncode == 130:
        return "worker interrupted; rerun to resume"
    if returncode == 143:
        return "worker terminated (SIGTERM); rerun to resume"
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return f"{last} (exit code {returncode}; see {log_path})" if last else f"exit code {returncode}"


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    log_path: Path
    slot: int


@dataclass
class LocalLauncher:
    """Up to ``jobs`` ``robustft train`` subprocesses at a time (see the module docstring).

    Args:
        jobs: workers at a time.
        device: the sweep's ``--device``; ``auto`` and ``cuda`` give each worker a GPU.
        gpus: the GPUs to hand out (default: :func:`visible_gpus` for GPU devices).
    """

    jobs: int
    device: str = "auto"
    gpus: list[str] | None = None
    threads: int = field(init=False)
    _busy: set[int] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self.threads = max(1, cpu_count() // self.jobs)
        if self.gpus is None:
            self.gpus = visible_gpus() if self.device in ("auto", "cuda") else []

    def capacity(self) -> int:
        return self.jobs

    def assignment(self, slot: int) -> tuple[dict[str, str], str]:
        """(environment additions, ``--device``) of worker slot ``slot``."""
        env = thread_env(self.threads)
        gpu = gpu_for_slot(slot, self.gpus or [])
        if gpu is None:
            return env, self.device
        return {**env, "CUDA_VISIBLE_DEVICES": gpu}, "cuda"

    def start(self, run_dir: Path) -> _Worker:
        slot = min(set(range(self.jobs)) - self._busy)
        self._busy.add(slot)
        extra, device = self.assignment(slot)
        cmd = train_command(run_dir, device)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
        log_path = RunDir(run_dir).train_log
        log = log_path.open("ab")
        shown = " ".join(f"{k}={v}" for k, v in extra.items() if k == "CUDA_VISIBLE_DEVICES")
        log.write(f"=== {now()} {shown + ' ' if shown else ''}{' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        return _Worker(proc, log, log_path, slot)

    def pid(self, handle: _Worker) -> int | None:
        return handle.proc.pid

    def poll(self, handle: _Worker) -> Ended | None:
        code = handle.proc.poll()
        if code is None:
            return None
        self._release(handle)
        return Ended(code, None if code == 0 else worker_error(handle.log_path, code))

    def _release(self, handle: _Worker) -> None:
        handle.log.close()
        self._busy.discard(handle.slot)

    def stop(self, handles: list[_Worker]) -> None:
        """Interrupt the workers (SIGINT: each stops after its current step), then kill those
        still running 15 s later."""
        for worker in handles:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 15
        for worker in handles:
            try:
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
            self._release(worker)

    def close(self) -> None:
        pass
