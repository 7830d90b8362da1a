"""Sweeps run: the expanded runs executed (or resumed) and recorded, in this process or through a
launcher.

Sweep directory (default ``sweeps/<name>/``):

* ``sweep.yaml``: the spec as run, base inlined;
* ``sweep.db``: SQLite (WAL, busy timeout, one transaction per write) with tables ``runs``
  (one row per run: config, status, timings, final metrics) and ``epochs`` (per-epoch
  metrics); schema in :mod:`robustft.sweep.store`;
* ``runs/<run_id>/``: run directories (:mod:`robustft.run.rundir` layout; ``train.log`` holds a
  worker's output with ``--jobs``).

The run directories are the truth, the database an index over them: a run whose directory holds
``result.json`` is done (recorded if the database missed it), one with a checkpoint is resumed,
a failed one is retried.
Several sweep processes may work on one sweep directory on one machine: each claims a run in a
transaction before starting it; a claim whose process is gone counts as interrupted.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import traceback
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from robustft.callbacks import Callbacks
from robustft.config import (
    RunConfig,
)
from robustft.errors import UserError, describe
from robustft.run.result import RunResult
from robustft.run.rundir import RunDir
from robustft.sweep.layout import SweepDir
from robustft.sweep.spec import RunSpec, SweepSpec, expand
from robustft.sweep.store import SweepStore
from robustft.utils.fsio import atomic_write_text

if TYPE_CHECKING:
    from robustft.launchers import Launcher

_logger = logging.getLogger(__name__)


def tracked_runs(spec: SweepSpec, log: Sequence[str] = ()) -> list[RunSpec]:
    """The runs of ``spec`` (:func:`expand`), each tracked by the ``log`` backends under the
    sweep's name (:func:`tracked`): a bad or missing backend is one line before anything runs;
    run ids do not change."""
    return [
        dataclasses.replace(run, config=tracked(run.config, spec.name, log)) for run in expand(spec)
    ]


@dataclass(frozen=True)
class RunOutcome:
    """How one run of this invocation ended.

    Attributes:
        status: ``done`` (ran now), ``skipped`` (finished earlier), ``failed``, or ``busy``
            (another live process holds it).
        seconds: wall-clock seconds of this attempt (None when nothing ran).
        result: the run's result dict when done or skipped.
        error: the one-line error when failed.
    """

    status: Literal["done", "skipped", "failed", "busy"]
    seconds: float | None = None
    result: RunResult | None = None
    error: str | None = None


@dataclass(frozen=True)
class SweepSummary:
    """Counts of one :func:`run_sweep` invocation."""

    total: int
    done: int
    skipped: int
    failed: int
    busy: int
    seconds: float

    @property
    def ok(self) -> bool:
        return self.failed == 0


class SweepEvents(Protocol):
    """What :func:`run_sweep` reports while it works (the CLI prints it)."""

    def on_run_start(self, run: RunSpec, total: int, resume_after: int) -> None: ...
    def on_epoch(self, run: RunSpec, total: int, row: Mapping[str, Any]) -> None: ...
    def on_run_end(self, run: RunSpec, total: int, outcome: RunOutcome) -> None: ...


class NullEvents:
    """Events that do nothing (library use)."""

    def on_run_start(self, run: RunSpec, total: int, resume_after: int) -> None:
        pass

    def on_epoch(self, run: RunSpec, total: int, row: Mapping[str, Any]) -> None:
        pass

    def on_run_end(self, run: RunSpec, total: int, outcome: RunOutcome) -> None:
        pass


@dataclass(frozen=True)
class _Context:
    sweep: SweepDir
    store: SweepStore
    events: SweepEvents
    total: int
    device: str


def _begin(ctx: _Context, run: RunSpec, pid: int) -> RunOutcome | None:
    """Claim ``run``; returns an outcome if there is nothing to run (done earlier, busy)."""
    run_dir = RunDir(ctx.sweep.run_dir(run.run_id))
    done = ctx.store.record(run.run_id).status == "done"
    if done and run_dir.result.is_file():
        return RunOutcome("skipped", result=run_dir.read_result())
    if not ctx.store.claim(run.run_id, pid, redo=done):  # done: its run dir was deleted
        if ctx.store.record(run.run_id).status == "done":  # another process just finished it
            return RunOutcome("skipped", result=run_dir.read_result())
        return RunOutcome("busy")
    result = run_dir.read_result()  # finished, but killed before it was recorded
    if result is not None:
        ctx.store.record_done(run.run_id, result, run_dir.read_metrics().rows, seconds=None)
        return RunOutcome("skipped", result=result)
    ctx.store.record_epochs(run.run_id, run_dir.read_metrics().rows, replace=True)
    return None


def _finish(ctx: _Context, run: RunSpec, start: float, error: str | None) -> RunOutcome:
    """Record a finished attempt from its run directory; returns its outcome."""
    run_dir = RunDir(ctx.sweep.run_dir(run.run_id))
    seconds = time.monotonic() - start
    rows = run_dir.read_metrics().rows
    result = run_dir.read_result() if error is None else None
    if result is None:
        error = error or "the run ended without writing result.json"
        ctx.store.record_failed(run.run_id, error, rows, seconds=seconds)
        return RunOutcome("failed", seconds=seconds, error=error)
    ctx.store.record_done(run.run_id, result, rows, seconds=seconds)
    return RunOutcome("done", seconds=seconds, result=result)


class _EpochRecorder(Callbacks):
    """Training callbacks of an in-process run: record each finished epoch."""

    def __init__(self, ctx: _Context, run: RunSpec) -> None:
        self.ctx, self.run = ctx, run

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self.ctx.store.record_epochs(self.run.run_id, [row])
        self.ctx.events.on_epoch(self.run, self.ctx.total, row)


def _run_in_process(ctx: _Context, run: RunSpec) -> RunOutcome:
    """Train one run in this process (sequential sweeps)."""
    from robustft.training.fit import fit

    outcome = _begin(ctx, run, os.getpid())
    if outcome is not None:
        return outcome
    run_dir = ctx.sweep.run_dir(run.run_id)
    resume = RunDir(run_dir).has_checkpoint()
    ctx.events.on_run_start(run, ctx.total, len(RunDir(run_dir).read_metrics().rows))
    start, error = time.monotonic(), None
    try:
        fit(
            run.config,
            run_dir,
            resume=resume,
            callbacks=_EpochRecorder(ctx, run),
            device=ctx.device,
        )
    except UserError as err:
        error = str(err)
    except Exception as err:
        error = describe(err)
        log = RunDir(run_dir).error_log
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(log, traceback.format_exc())
        error += f" (traceback in {log})"
        _logger.debug("run %s failed", run.run_id, exc_info=True)
    except BaseException:
        ctx.store.release(run.run_id)
        raise
    return _finish(ctx, run, start, error)


@dataclass
class _Active:
    """A run started through a launcher: its handle, start time, epochs recorded so far."""

    run: RunSpec
    handle: Any
    start: float
    seen: int


def _launch(ctx: _Context, run: RunSpec, launcher: Launcher) -> _Active:
    """Start a claimed run through ``launcher`` (its config written into its run directory)."""
    run_dir = RunDir(ctx.sweep.run_dir(run.run_id))
    run_dir.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir.config, run.config.to_yaml())
    handle = launcher.start(run_dir.root)
    pid = launcher.pid(handle)
    if pid is not None:
        ctx.store.set_pid(run.run_id, pid)
    seen = len(run_dir.read_metrics().rows)
    ctx.events.on_run_start(run, ctx.total, seen)
    return _Active(run, handle, time.monotonic(), seen)


def _poll_epochs(ctx: _Context, active: _Active) -> None:
    """Record the epochs a launched run finished since the last poll."""
    rows = RunDir(ctx.sweep.run_dir(active.run.run_id)).read_metrics().rows
    new = rows[active.seen :]
    if new:
        ctx.store.record_epochs(active.run.run_id, new)
        for row in new:
            ctx.events.on_epoch(active.run, ctx.total, row)
    active.seen = len(rows)


def _run_launched(
    ctx: _Context, runs: Sequence[RunSpec], launcher: Launcher, poll_seconds: float
) -> list[RunOutcome]:
    """Run ``runs`` through ``launcher``, as many at a time as it has room for; this process
    alone records them (claims, epochs, outcomes)."""
    queue: deque[RunSpec] = deque(runs)
    active: list[_Active] = []
    outcomes: list[RunOutcome] = []
    try:
        while queue or active:
            while queue and (not active or len(active) < launcher.capacity()):
                run = queue.popleft()
                early = _begin(ctx, run, os.getpid())
                if early is not None:
                    outcomes.append(early)
                    ctx.events.on_run_end(run, ctx.total, early)
                    continue
                active.append(_launch(ctx, run, launcher))
            time.sleep(poll_seconds if active else 0)
            for item in list(active):
                _poll_epochs(ctx, item)
                ended = launcher.poll(item.handle)
                if ended is None:
                    continue
                active.remove(item)
                _poll_epochs(ctx, item)
                outcome = _finish(ctx, item.run, item.start, ended.error)
                outcomes.append(outcome)
                ctx.events.on_run_end(item.run, ctx.total, outcome)
    except BaseException:
        launcher.stop([item.handle for item in active])
        for item in active:
            _poll_epochs(ctx, item)
            ctx.store.release(item.run.run_id)
        raise
    return outcomes


def tracked(config: RunConfig, sweep: str, backends: Sequence[str]) -> RunConfig:
    """``config`` with ``backends`` added to ``log.backends`` and ``log.group`` set to the sweep's
    name (unless the config names a group); the run id does not change (resource-only keys).
    Untracked runs (no backends) are left as they are."""
    from robustft.config import add_log_backends
    from robustft.tracking import check_backends

    out = add_log_backends(config, backends, group=sweep)
    check_backends(out.log.backends)
    return out


def run_sweep(
    spec: SweepSpec,
    sweep_dir: str | Path,
    *,
    jobs: int = 1,
    device: str = "auto",
    events: SweepEvents | None = None,
    runs: Sequence[RunSpec] | None = None,
    poll_seconds: float = 1.0,
    launcher: Launcher | None = None,
    log: Sequence[str] = (),
) -> SweepSummary:
    """Run every run of ``spec`` not finished yet; record everything in ``sweep.db``.

    Finished runs (``result.json`` present) are skipped, interrupted ones resumed from their
    checkpoints, failed ones retried. A run that fails is recorded with its one-line error and
    the sweep goes on.

    Args:
        spec: the sweep.
        sweep_dir: its directory (created if missing).
        jobs: runs at a time without a ``launcher``; 1 trains in this process, more start
            ``robustft train`` worker subprocesses (:class:`robustft.launchers.local.
            LocalLauncher`: cores // jobs threads and a GPU in turn each).
        device: passed to :func:`robustft.training.fit.fit` (and to local workers).
        events: progress reports.
        runs: the runs, as :func:`tracked_runs` gives them (``log`` is then already applied),
            if already computed.
        poll_seconds: how often launched runs' progress is collected.
        launcher: where the runs execute instead (e.g. :class:`robustft.launchers.ray.
            RayLauncher`); closed at the end.
        log: tracking backends added to every run's ``log.backends`` (``--log``). The runs'
            ``log.group`` is the sweep's name (their MLflow experiment and W&B group); it
            reaches workers through the config.yaml they train from.

    Returns:
        Counts of done, skipped, failed and busy runs.
    """
    if jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    runs = list(runs) if runs is not None else tracked_runs(spec, log)
    layout = SweepDir(Path(sweep_dir))
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.write_spec(spec)
    start = time.monotonic()
    if launcher is None and jobs > 1:
        from robustft.launchers import LAUNCHERS

        launcher = LAUNCHERS.create("local", max(1, min(jobs, len(runs))), device)
    try:
        with SweepStore(layout.db) as store:
            stale = store.register(runs)
            if stale:
                _logger.warning("%s holds %d runs no longer in the sweep file", layout.db, stale)
            ctx = _Context(layout, store, events or NullEvents(), len(runs), device)
            if launcher is None:
                outcomes = []
                for run in runs:
                    outcome = _run_in_process(ctx, run)
                    outcomes.append(outcome)
                    ctx.events.on_run_end(run, ctx.total, outcome)
            else:
                outcomes = _run_launched(ctx, runs, launcher, poll_seconds)
    finally:
        if launcher is not None:
            launcher.close()
    return _summary(runs, outcomes, time.monotonic() - start)


def _summary(
    runs: Sequence[RunSpec], outcomes: Sequence[RunOutcome], seconds: float
) -> SweepSummary:
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    busy = sum(o.status == "busy" for o in outcomes)
    return SweepSummary(len(runs), **counts, busy=busy, seconds=seconds)


def collect(
    spec: SweepSpec, sweep_dir: str | Path, runs: Sequence[RunSpec] | None = None
) -> SweepSummary:
    """Record in ``sweep.db`` what the run directories hold (finished runs done, the epochs of
    unfinished ones), training nothing: after a Slurm array of ``--index`` runs, which do not
    write the database."""
    runs = list(runs) if runs is not None else expand(spec)
    layout = SweepDir(Path(sweep_dir))
    start = time.monotonic()
    outcomes = []
    with SweepStore(layout.db) as store:
        store.register(runs)
        for run in runs:
            run_dir = RunDir(layout.run_dir(run.run_id))
            result = run_dir.read_result()
            rows = run_dir.read_metrics().rows
            if result is not None:
                store.record_done(run.run_id, result, rows, seconds=None)
                outcomes.append(RunOutcome("skipped", result=result))
            elif rows:
                store.record_epochs(run.run_id, rows, replace=True)
    return _summary(runs, outcomes, time.monotonic() - start)
