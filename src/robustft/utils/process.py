"""Processes: the CPUs this one may use, the threads a child gets, dying with a parent, and
SIGTERM taken as Ctrl-C."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; elsewhere nothing).

    For a process whose parent supervises it and would leave it orphaned when killed: a run's
    ``robustft train`` under a Ray worker, a torchrun worker under its agent (torchrun starts
    workers in sessions of their own, so a SIGKILL to the agent or its process group alone left
    them training and holding the run directory). Safe between fork and exec.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def cpu_count() -> int:
    """CPUs this process may use (its affinity mask where the OS has one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env(threads: int) -> dict[str, str]:
    """The environment that gives a child process ``threads`` CPU threads in its math
    libraries (OpenMP, MKL, OpenBLAS)."""
    return {name: str(threads) for name in THREAD_VARIABLES}


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (batch schedulers, ``kill``) raises KeyboardInterrupt as
    Ctrl-C does, so that workers stop cleanly; outside the main thread nothing changes."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
