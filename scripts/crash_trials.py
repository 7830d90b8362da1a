#!/usr/bin/env python
"""Crash safety, proven by SIGKILL trials.

Runs a tiny multi-epoch ``robustft train`` once without interruption (the reference), then for
each trial starts it again, SIGKILLs its process group at a chosen moment, checks what is on
disk right after the kill (every result, metrics and checkpoint file absent or complete and
valid), resumes it with ``--resume`` (sometimes killing the resumed run too), and requires the
final ``result.json``, ``robustness.json``, metrics history and checkpoint to equal the
reference's bit for bit (wall-clock fields excepted).

Kill moments, drawn at random (seeded) so that every kind is covered:

* ``mid-run``: a random time during the training epochs;
* ``checkpoint-write``: while a checkpoint is being written, detected black-box by polling for
  the atomic write's temp file (``checkpoints/.last.pt.<random>.tmp``); a trial that misses the
  window says so and counts as the kind its kill actually landed in;
* ``final-eval``: after the last epoch's metrics row and before ``result.json``.

Sweep trials run a small sweep (2 methods x 2 seeds of the same tiny config) once as reference,
then SIGKILL ``robustft sweep`` (all its workers with ``--jobs 2``) at a random moment, re-run it
to completion, and check the SQLite database: every run once, done, one row per epoch, and the
same results as the reference sweep.

    python scripts/crash_trials.py --trials 12 --seed 0 --sweep-trials 5 [--workdir DIR] [--keep]

Exit code 0 when every trial passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml

from robustft.errors import UserError
from robustft.run.checkpoint import load_checkpoint, load_checkpoint_with_fallback, previous
from robustft.run.rundir import RunDir

KINDS = ("mid-run", "checkpoint-write", "final-eval")
POLL_FAST = 0.002  # the checkpoint temp file lives ~50-150 ms with efficientnet_lite0
POLL_SLOW = 0.01
CKPT_TMP_PREFIX = ".last.pt."
MAX_DIFFS = 6


class TrialError(Exception):
    """A trial could not be carried out (a run failed or timed out)."""


# ------------------------------------------------------------------------------ configs


@dataclass(frozen=True)
class Shape:
    """The tiny run the trials train: a random-init backbone on digits, a few epochs."""

    model: str = "efficientnet_lite0"
    image_size: int = 32
    train_per_class: int = 8
    epochs: int = 4
    eval_examples: int = 64
    eval_steps: int = 3


def run_config(shape: Shape) -> dict[str, Any]:
    """The run config (clean first epoch, then eps ramps up; APGD on a 5-point eps grid)."""
    return {
        "name": "crash",
        "model": {"name": shape.model, "pretrained": False},
        "data": {
            "name": "digits",
            "image_size": shape.image_size,
            "max_train_per_class": shape.train_per_class,
        },
        "train": {"epochs": shape.epochs, "batch_size": 16, "warmup_epochs": 0, "seed": 0},
        "attack": {
            "name": "pgd",
            "steps": 2,
            "eps": "4/255",
            "schedule": f"hinge(t1=1,t2={max(2, shape.epochs - 1)})",
        },
        "eval": {
            "steps": shape.eval_steps,
            "eps_max": "4/255",
            "max_examples": shape.eval_examples,
        },
    }


def sweep_spec(config: Path, seeds: Sequence[int]) -> dict[str, Any]:
    """A sweep over the tiny config: standard fine-tuning and the scheduled run, per seed."""
    return {
        "name": "crash-sweep",
        "base": str(config),
        "methods": {"standard": {"attack.eps": 0, "attack.schedule": "constant"}, "sched": {}},
        "grid": {"train.seed": list(seeds)},
    }


def write_yaml(path: Path, data: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
    return path


# ---------------------------------------------------------------------------- processes


def child_env() -> dict[str, str]:
    """One thread per process (deterministic, fair on 2 shared cores), unbuffered output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    return env


def _set_subreaper(on: bool) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, int(on), 0, 0, 0) == 0  # 36: SUBREAPER
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def adopting_orphans() -> Iterator[bool]:
    """Adopt orphaned grandchildren (sweep workers whose parent was SIGKILLed) so that
    :func:`kill_group` reaps them at once: an init that reaps lazily leaves zombies that still
    look alive to the sweep's claim check (``os.kill(pid, 0)``), and a re-run started right away
    would leave their runs alone as busy. Yields whether this is supported (Linux)."""
    on = _set_subreaper(True)
    try:
        yield on
    finally:
        if on:
            _set_subreaper(False)


def launch(args: Sequence[str], log: Path) -> tuple[subprocess.Popen[bytes], float]:
    """Start ``robustft ARGS`` in its own process group, output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "robustft.cli", *args]
    with log.open("ab") as handle:
        handle.write(f"=== {' '.join(cmd)}\n".encode())
        handle.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=child_env(),
            start_new_session=True,
        )
    return proc, time.monotonic()


def kill_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGKILL the whole process group of ``proc`` and wait until every member is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:  # orphans adopted as subreaper
                pass
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


def log_tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in text[-lines:])


# ------------------------------------------------------------------------------ watching


@dataclass(frozen=True)
class Snapshot:
    """What a poll of a run directory saw, ``t`` seconds after the process started.

    ``started``: this process has (re)written ``metrics.jsonl``, i.e. training is under way.
    """

    t: float
    started: bool
    rows: int
    ckpt_tmps: frozenset[str]
    result: bool


def checkpoint_tmps(run_dir: Path) -> frozenset[str]:
    try:
        names = os.listdir(RunDir(run_dir).checkpoints)
    except OSError:
        return frozenset()
    return frozenset(n for n in names if n.startswith(CKPT_TMP_PREFIX) and n.endswith(".tmp"))


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


class Prober:
    """Black-box polls of one run directory (only new checkpoint temp files count)."""

    def __init__(self, run_dir: Path) -> None:
        self.run = RunDir(run_dir)
        self.metrics = self.run.metrics
        self.initial_inode = _inode(self.metrics)
        self.old_tmps = checkpoint_tmps(run_dir)
        self.started = False
        self._seen: tuple[int, int] | None = None  # (inode, size) of the last metrics read
        self._rows = 0

    def _count_rows(self) -> tuple[int | None, int]:
        try:
            stat = self.metrics.stat()
        except OSError:
            return None, 0
        if self._seen != (stat.st_ino, stat.st_size):  # atomic rewrites change the inode
            with contextlib.suppress(OSError):
                self._rows = self.metrics.read_bytes().count(b"\n")
                self._seen = (stat.st_ino, stat.st_size)
        return stat.st_ino, self._rows

    def snapshot(self, t: float) -> Snapshot:
        inode, rows = self._count_rows()
        self.started = self.started or (inode is not None and inode != self.initial_inode)
        tmps = checkpoint_tmps(self.run.root) - self.old_tmps
        return Snapshot(t, self.started, rows, tmps, self.run.result.exists())


@dataclass
class Timeline:
    """When the phases of a run were seen (seconds after its process started)."""

    train_start: float | None = None
    epoch_ends: dict[int, float] = field(default_factory=dict)
    ckpt_writes: dict[int, float] = field(default_factory=dict)
    result: float | None = None
    exit: float | None = None

    def update(self, snap: Snapshot) -> None:
        if snap.started and self.train_start is None:
            self.train_start = snap.t
        if snap.started:
            for epoch in range(1, snap.rows + 1):
                self.epoch_ends.setdefault(epoch, snap.t)
            if snap.ckpt_tmps:
                self.ckpt_writes.setdefault(snap.rows + 1, snap.t)
        if snap.result and self.result is None:
            self.result = snap.t

    def describe(self) -> str:
        parts = [f"start-up {self.train_start:.2f} s"] if self.train_start is not None else []
        parts += [f"epoch {e} done {t:.2f} s" for e, t in sorted(self.epoch_ends.items())]
        if self.result is not None:
            parts.append(f"result.json {self.result:.2f} s")
        if self.exit is not None:
            parts.append(f"exit {self.exit:.2f} s")
        return ", ".join(parts)


class Trigger(Protocol):
    """Decides from a snapshot whether to SIGKILL now."""

    def __call__(self, snap: Snapshot) -> bool: ...


@dataclass
class Watch:
    """How a watched process ended: killed at ``killed_at`` s, or exited with ``returncode``."""

    killed_at: float | None
    returncode: int | None
    timeline: Timeline
    last: Snapshot


def watch(
    proc: subprocess.Popen[bytes],
    start: float,
    run_dir: Path,
    trigger: Trigger | None,
    timeout: float,
    poll: float = POLL_SLOW,
) -> Watch:
    """Poll ``run_dir`` every ``poll`` s until ``proc`` exits or ``trigger`` fires (then
    SIGKILL its group)."""
    prober, timeline = Prober(run_dir), Timeline()
    while True:
        snap = prober.snapshot(time.monotonic() - start)
        timeline.update(snap)
        if trigger is not None and trigger(snap):
            killed_at = time.monotonic() - start
            kill_group(proc)
            return Watch(killed_at, None, timeline, snap)
        if proc.poll() is not None:
            timeline.exit = time.monotonic() - start
            return Watch(None, proc.returncode, timeline, snap)
        if snap.t > timeout:
            kill_group(proc)
            raise TrialError(f"timed out after {timeout:.0f} s in {run_dir}")
        time.sleep(poll)


@dataclass
class InEpoch:
    """Fire ``delay`` seconds into epoch ``epoch`` (timed from the previous epoch's metrics row,
    or from the start of training), or as soon as its own row shows if it ends sooner. Timing
    each epoch on its own keeps the kill inside training when the machine's load changes."""

    epoch: int
    delay: float
    since: float | None = None

    def __call__(self, snap: Snapshot) -> bool:
        if not snap.started or snap.rows < self.epoch - 1:
            return False
        if self.since is None:
            self.since = snap.t
        return snap.rows >= self.epoch or snap.t - self.since >= self.delay


@dataclass
class OnCheckpointWrite:
    """Fire as soon as the temp file of epoch >= ``epoch``'s checkpoint shows; give up (fire)
    once every epoch is done without one being seen."""

    epoch: int
    epochs: int

    def __call__(self, snap: Snapshot) -> bool:
        if not snap.started:
            return False
        return (bool(snap.ckpt_tmps) and snap.rows >= self.epoch - 1) or snap.rows >= self.epochs


@dataclass
class DuringEval:
    """Fire ``delay`` seconds after the last epoch's metrics row showed."""

    epochs: int
    delay: float
    seen_at: float | None = None

    def __call__(self, snap: Snapshot) -> bool:
        if snap.started and snap.rows >= self.epochs and self.seen_at is None:
            self.seen_at = snap.t
        return self.seen_at is not None and snap.t - self.seen_at >= self.delay


# --------------------------------------------------------------------------- disk checks


def is_timing(key: object) -> bool:
    """Wall-clock fields: ``seconds``, ``val_seconds``, ``examples_per_second``,
    ``cost.seconds_per_epoch``, ... (any key naming seconds)."""
    return isinstance(key, str) and "second" in key


def strip_timing(obj: Any) -> Any:
    """``obj`` without wall-clock fields (at any depth)."""
    if isinstance(obj, Mapping):
        return {k: strip_timing(v) for k, v in obj.items() if not is_timing(k)}
    if isinstance(obj, (list, tuple)):
        return [strip_timing(v) for v in obj]
    return obj


def deep_diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Differences between ``a`` and ``b``: floats and tensors must be bitwise equal."""
    where = path or "<root>"
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
        return [] if same else [f"{where}: tensors differ"]
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            return [f"{where}: keys differ ({sorted(set(a) ^ set(b), key=str)})"]
        return [d for k in a for d in deep_diff(a[k], b[k], f"{path}.{k}" if path else str(k))]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in deep_diff(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return (
            []
            if a.hex() == b.hex() or (math.isnan(a) and math.isnan(b))
            else [f"{where}: {a!r} != {b!r}"]
        )
    if type(a) is not type(b) or a != b:
        return [f"{where}: {a!r} != {b!r}"]
    return []


def check_files(run_dir: Path) -> list[str]:
    """Every JSON/YAML result or metadata file present parses (read strictly, to say how a
    file is torn)."""
    run = RunDir(run_dir)
    problems = []
    for path in (run.env, run.robustness, run.result, run.probe, run.failure):
        try:
            if path.exists() and not isinstance(json.loads(path.read_text()), dict):
                problems.append(f"{path.name}: not a JSON object")
        except (OSError, ValueError) as err:  # ValueError: JSONDecodeError, UnicodeDecodeError
            problems.append(f"{path.name}: torn or unreadable ({err.__class__.__name__})")
    with contextlib.suppress(FileNotFoundError):
        if not isinstance(yaml.safe_load(run.config.read_text()), dict):
            problems.append(f"{run.config.name}: not a mapping")
    return problems


def load_checkpoints(run_dir: Path) -> tuple[dict[str, Any] | None, bool, list[str]]:
    """(payload the resume would use, whether it came from ``last.pt.prev``, problems).

    ``last.pt`` is loaded as a resume loads it (``load_checkpoint_with_fallback``); needing the
    fallback while ``last.pt`` exists means it was torn. Every other checkpoint file present is
    loaded and verified too (each file once).
    """
    run = RunDir(run_dir)
    last, prev = run.checkpoint, previous(run.checkpoint)
    payload, notes, problems = None, [], []
    if last.exists() or prev.exists():
        try:
            payload = load_checkpoint_with_fallback(last, notes.append)
        except UserError as err:
            problems.append(f"no loadable checkpoint: {err}")
    if notes and last.exists():
        problems.append(f"checkpoints/{last.name} torn: {notes[0]}")
    verified = {last} | ({prev} if notes else set())
    for path in sorted({last, prev, run.good} - verified):
        try:
            if path.exists():
                load_checkpoint(path)
        except UserError as err:  # includes a file removed between exists() and the read
            problems.append(f"checkpoints/{path.name}: {err}")
    return payload, bool(notes), problems


@dataclass
class DiskState:
    """A run directory's state: completed epochs per metrics.jsonl and per checkpoint."""

    rows: int = 0
    ckpt_epoch: int | None = None
    from_prev: bool = False
    result: bool = False
    robustness: bool = False
    tmps: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def inspect_run_dir(run_dir: Path, epochs: int) -> DiskState:
    """Check a run directory right after a kill (or at the end): no torn file, and metrics,
    checkpoint and results consistent with each other."""
    metrics = RunDir(run_dir).read_metrics()
    rows, problems = metrics.rows, list(metrics.problems)
    payload, from_prev, ckpt_problems = load_checkpoints(run_dir)
    state = DiskState(rows=len(rows), from_prev=from_prev)
    state.problems = problems + check_files(run_dir) + ckpt_problems
    state.result = RunDir(run_dir).result.exists()
    state.robustness = RunDir(run_dir).robustness.exists()
    state.tmps = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob(".*.tmp"))
    if payload is not None:
        state.ckpt_epoch = int(payload["epoch"])
        history = json.loads(json.dumps(payload["history"]))
        if len(history) != state.ckpt_epoch:
            state.problems.append(f"checkpoint epoch {state.ckpt_epoch}, {len(history)} rows")
        if state.rows not in (state.ckpt_epoch - 1, state.ckpt_epoch):
            state.problems.append(f"metrics has {state.rows} rows, checkpoint {state.ckpt_epoch}")
        diffs = deep_diff(rows[: len(history)], history[: len(rows)])
        state.problems += [f"metrics vs checkpoint: {d}" for d in diffs[:MAX_DIFFS]]
    elif state.rows and not ckpt_problems:
        state.problems.append(f"metrics has {state.rows} rows but there is no checkpoint")
    if state.result and (not state.robustness or state.rows != epochs):
        state.problems.append("result.json without robustness.json or all epochs")
    return state


@functools.lru_cache(maxsize=8)
def reference_checkpoint(path: Path) -> dict[str, Any]:
    """A reference run's final checkpoint without wall-clock fields (loaded once)."""
    return dict(strip_timing(load_checkpoint(path)))


def compare_runs(reference: Path, run_dir: Path) -> list[str]:
    """Differences of a run's final files from the reference's (timing fields excepted)."""
    diffs = []
    ref, got = RunDir(reference), RunDir(run_dir)
    pairs = [
        (ref.result.name, ref.read_result(), got.read_result()),
        (ref.robustness.name, ref.read_robustness(), got.read_robustness()),
    ]
    for name, a, b in pairs:
        diffs += [f"{name}: {d}" for d in deep_diff(strip_timing(a), strip_timing(b))]
    ref_rows, got_rows = ref.read_metrics().rows, got.read_metrics().rows
    diffs += [f"metrics: {d}" for d in deep_diff(strip_timing(ref_rows), strip_timing(got_rows))]
    ref_ckpt = reference_checkpoint(ref.checkpoint)
    got_ckpt = strip_timing(load_checkpoint(got.checkpoint))
    diffs += [f"checkpoint: {d}" for d in deep_diff(ref_ckpt, got_ckpt)]
    return diffs[:MAX_DIFFS]


def where_killed(state: DiskState, new_tmps: frozenset[str], epochs: int) -> tuple[str, str]:
    """(kind, description) of where a kill landed, judged from the disk after it."""
    if state.result:
        return "after-finish", "after result.json was written"
    if new_tmps:
        return "checkpoint-write", f"epoch {state.rows + 1} checkpoint write"
    if state.rows >= epochs:
        extra = ", robustness.json written" if state.robustness else ""
        return "final-eval", f"final evaluation{extra}"
    if state.ckpt_epoch is not None and state.ckpt_epoch > state.rows:
        return "mid-run", f"after epoch {state.ckpt_epoch} checkpoint, before its metrics row"
    return "mid-run", f"epoch {state.rows + 1} in progress"


# ------------------------------------------------------------------------- train trials


@dataclass(frozen=True)
class Reference:
    """The uninterrupted run: its directory, duration and phase timeline."""

    run_dir: Path
    seconds: float
    timeline: Timeline
    epochs: int

    def epoch_end(self, epoch: int) -> float:
        if epoch <= 0:
            return self.timeline.train_start or 0.0
        return self.timeline.epoch_ends[epoch]

    def epoch_seconds(self, epoch: int) -> float:
        """Epoch ``epoch`` from the previous row to its own (training, validation, saving)."""
        return self.epoch_end(epoch) - self.epoch_end(epoch - 1)

    @property
    def eval_seconds(self) -> float:
        assert self.timeline.result is not None
        return self.timeline.result - self.epoch_end(self.epochs)


@dataclass(frozen=True)
class Context:
    """Where the trials work, the config they train, and the reference run."""

    work: Path
    config: Path
    shape: Shape
    reference: Reference

    @property
    def timeout(self) -> float:
        return max(120.0, 10 * self.reference.seconds)


def run_reference(work: Path, shape: Shape) -> Context:
    """Write the config, run it once without interruption and record its timeline."""
    config = write_yaml(work / "crash.yaml", run_config(shape))
    run_dir = work / "reference"
    proc, start = launch(["train", str(config), "--run-dir", str(run_dir)], work / "reference.log")
    seen = watch(proc, start, run_dir, None, timeout=1800, poll=POLL_FAST)
    if seen.returncode != 0 or seen.timeline.result is None:
        raise TrialError(f"reference run failed: {log_tail(work / 'reference.log')}")
    if len(seen.timeline.epoch_ends) != shape.epochs or seen.timeline.train_start is None:
        raise TrialError(f"reference run: incomplete timeline ({seen.timeline.describe()})")
    reference = Reference(run_dir, seen.timeline.exit or 0.0, seen.timeline, shape.epochs)
    state = inspect_run_dir(run_dir, shape.epochs)
    if not state.ok:
        raise TrialError(f"reference run dir: {'; '.join(state.problems)}")
    return Context(work, config, shape, reference)


@dataclass(frozen=True)
class TrainPlan:
    """A train trial: the kind of kill; ``epoch``: the epoch to kill in (mid-run) or whose
    checkpoint write to hit; ``fraction``: how far into that epoch or into the final
    evaluation; ``double``: kill the resumed run too, in a remaining epoch picked by
    ``second_fraction``."""

    kind: str
    fraction: float
    epoch: int
    double: bool
    second_fraction: float


def plan_train_trials(
    n: int, seed: int, epochs: int, doubles: int | None = None
) -> list[TrainPlan]:
    """``n`` plans covering every kind (when ``n >= 3``), in seeded random order."""
    rng = random.Random(seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(n)]
    rng.shuffle(kinds)
    count = max(1, n // 4) if doubles is None else doubles
    twice = set(rng.sample(range(n), min(n, count)))
    return [
        TrainPlan(k, rng.uniform(0.03, 0.97), rng.randint(1, epochs), i in twice, rng.random())
        for i, k in enumerate(kinds)
    ]


def first_trigger(plan: TrainPlan, ref: Reference) -> Trigger:
    """mid-run: ``fraction`` of the way into epoch ``epoch`` (by the reference's timing)."""
    if plan.kind == "checkpoint-write":
        return OnCheckpointWrite(plan.epoch, ref.epochs)
    if plan.kind == "final-eval":
        return DuringEval(ref.epochs, plan.fraction * 0.8 * ref.eval_seconds)
    return InEpoch(plan.epoch, plan.fraction * 0.9 * ref.epoch_seconds(plan.epoch))


def second_trigger(plan: TrainPlan, ref: Reference, done: int) -> Trigger:
    """The resumed run's kill: in an epoch still to train (``second_fraction`` picks which),
    or during the final evaluation if every epoch was done."""
    if done >= ref.epochs:
        return DuringEval(ref.epochs, plan.fraction * 0.8 * ref.eval_seconds)
    epoch = min(ref.epochs, done + 1 + int(plan.second_fraction * (ref.epochs - done)))
    return InEpoch(epoch, plan.fraction * 0.9 * ref.epoch_seconds(epoch))


@dataclass
class TrialResult:
    """One trial's outcome, ready to print."""

    index: int
    total: int
    planned: str
    actual: str = "?"
    story: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    double: bool = False  # planned to kill twice
    kills: int = 0  # SIGKILLs that happened
    label: str = "trial"

    @property
    def passed(self) -> bool:
        return not self.failures

    def line(self) -> str:
        head = f"{self.label} {self.index}/{self.total}: kind={self.actual}"
        if self.actual != self.planned:
            head += f" (planned {self.planned})"
        body = ", ".join(self.story)
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.failures)
        notes = f" [{'; '.join(self.notes)}]" if self.notes else ""
        return f"{head} {body} -> {verdict}{notes}"


def kill_and_inspect(
    ctx: Context, run_dir: Path, args: list[str], trigger: Trigger, log: Path
) -> tuple[Watch, DiskState]:
    """Start a train run, SIGKILL it when ``trigger`` fires, and inspect the run dir."""
    before = checkpoint_tmps(run_dir)
    proc, start = launch(args, log)
    poll = POLL_FAST if isinstance(trigger, OnCheckpointWrite) else POLL_SLOW
    seen = watch(proc, start, run_dir, trigger, ctx.timeout, poll)
    state = inspect_run_dir(run_dir, ctx.shape.epochs)
    # a new temp file left behind proves the kill landed inside a checkpoint write
    seen.last = replace(seen.last, ckpt_tmps=checkpoint_tmps(run_dir) - before)
    return seen, state


def train_args(ctx: Context, run_dir: Path, resume: bool) -> list[str]:
    return ["train", str(ctx.config), "--run-dir", str(run_dir), *(["--resume"] if resume else [])]


def resume_to_end(ctx: Context, run_dir: Path, result: TrialResult, log: Path) -> bool:
    """Resume with ``--resume`` until finished; returns whether the run finished.

    A refused ``--resume`` is a failure. When it was refused with no checkpoint on disk (a kill
    before the first checkpoint was complete), the run is restarted without ``--resume`` so that
    the rest of the trial is still checked.
    """
    proc, start = launch(train_args(ctx, run_dir, True), log)
    seen = watch(proc, start, run_dir, None, ctx.timeout)
    if seen.returncode != 0 and inspect_run_dir(run_dir, ctx.shape.epochs).ckpt_epoch is None:
        result.failures.append(
            f"--resume with no checkpoint yet exited {seen.returncode} ({log_tail(log, 1)})"
        )
        result.story.append("--resume refused, restarted without it")
        proc, start = launch(train_args(ctx, run_dir, False), log)
        seen = watch(proc, start, run_dir, None, ctx.timeout)
    if seen.returncode != 0:
        result.failures.append(f"resume exited {seen.returncode}: {log_tail(log)}")
        return False
    if "falling back" in log.read_text(errors="replace"):
        result.notes.append("resumed from last.pt.prev")
    return True


def record_kill(result: TrialResult, seen: Watch, state: DiskState, epochs: int, what: str) -> str:
    """Add a kill's description and on-disk verdict to ``result``; returns its kind."""
    if seen.killed_at is None:
        result.story.append(f"{what} finished before the kill (exit {seen.returncode})")
        return "none"
    result.kills += 1
    kind, where = where_killed(state, seen.last.ckpt_tmps, epochs)
    verdict = "on-disk state ok" if state.ok else "on-disk state BAD"
    result.story.append(f"{what} at {seen.killed_at:.2f} s ({where}) -> {verdict}")
    result.failures += state.problems
    return kind


def run_train_trial(ctx: Context, index: int, total: int, plan: TrainPlan) -> TrialResult:
    """Kill, inspect, (kill the resumed run, inspect,) resume, compare with the reference."""
    result = TrialResult(index, total, plan.kind, double=plan.double)
    run_dir, log = ctx.work / f"trial{index:02d}", ctx.work / f"trial{index:02d}.log"
    ref = ctx.reference
    try:
        seen, state = kill_and_inspect(
            ctx, run_dir, train_args(ctx, run_dir, False), first_trigger(plan, ref), log
        )
        result.actual = record_kill(result, seen, state, ref.epochs, "killed")
        if plan.double and result.passed and not state.result:
            trigger = second_trigger(plan, ref, state.ckpt_epoch or 0)
            has_ckpt = state.ckpt_epoch is not None
            seen, state = kill_and_inspect(
                ctx, run_dir, train_args(ctx, run_dir, has_ckpt), trigger, log
            )
            record_kill(result, seen, state, ref.epochs, "resumed, killed again")
        if result.passed and resume_to_end(ctx, run_dir, result, log):
            final = inspect_run_dir(run_dir, ref.epochs)
            result.failures += [f"final state: {p}" for p in final.problems]
            diffs = compare_runs(ref.run_dir, run_dir)
            result.failures += diffs
            result.story.append("resumed, " + ("metrics identical" if not diffs else "DIFFERENT"))
            if final.tmps:  # resume removes the temp files of interrupted writes
                result.failures.append(f"stale temp file left: {', '.join(final.tmps)}")
    except TrialError as err:
        result.failures.append(str(err))
    return result


# ------------------------------------------------------------------------- sweep trials


@dataclass(frozen=True)
class SweepContext:
    """The sweep file, the reference sweep directory and its duration."""

    ctx: Context
    spec: Path
    reference: Path
    seconds: float
    run_ids: tuple[str, ...]

    @property
    def timeout(self) -> float:
        return max(300.0, 10 * self.seconds)

    @property
    def total_rows(self) -> int:
        """Epoch rows of the whole sweep (runs x epochs)."""
        return len(self.run_ids) * self.ctx.shape.epochs


@contextlib.contextmanager
def open_db(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=30)  # never creates it
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


def db_runs(db: Path) -> tuple[list[sqlite3.Row], dict[str, list[dict[str, Any]]], list[str]]:
    """(runs rows, epoch metrics per run, problems: integrity and duplicate rows); nothing
    for a database not created yet, or killed before its schema was committed."""
    if not db.exists():
        return [], {}, []
    with open_db(db) as conn:
        problems = []
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            problems.append(f"integrity_check: {check}")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"runs", "epochs"} <= tables:
            return [], {}, problems
        for table, key in (("runs", "id"), ("epochs", "run_id, epoch")):
            dups = conn.execute(
                f"SELECT {key}, COUNT(*) AS n FROM {table} GROUP BY {key} HAVING n > 1"
            ).fetchall()
            problems += [f"{table}: duplicate {tuple(d)}" for d in dups]
        runs = conn.execute("SELECT * FROM runs ORDER BY position").fetchall()
        epochs: dict[str, list[dict[str, Any]]] = {r["id"]: [] for r in runs}
        for row in conn.execute("SELECT run_id, epoch, metrics FROM epochs ORDER BY run_id, epoch"):
            epochs.setdefault(row["run_id"], []).append(json.loads(row["metrics"]))
    return runs, epochs, problems


def check_sweep_db(sweep_dir: Path, epochs: int) -> tuple[list[str], dict[str, int]]:
    """Consistency of a sweep DB at any moment (e.g. right after a kill): epochs 1..k per run
    matching the run dir's metrics, a done run complete with its result; and every run dir's
    files intact. Returns (problems, counts of runs per status and of epoch rows)."""
    runs, rows, problems = db_runs(sweep_dir / "sweep.db")
    counts: dict[str, int] = {}
    for run in runs:
        counts[run["status"]] = counts.get(run["status"], 0) + 1
        run_dir, rid = sweep_dir / "runs" / run["id"], run["id"]
        numbers = [r["epoch"] for r in rows.get(rid, [])]
        counts["epoch rows"] = counts.get("epoch rows", 0) + len(numbers)
        if numbers != list(range(1, len(numbers) + 1)):
            problems.append(f"{rid}: epoch rows {numbers}")
        state = inspect_run_dir(run_dir, epochs) if run_dir.is_dir() else DiskState()
        problems += [f"{rid}: {p}" for p in state.problems]
        on_disk = RunDir(run_dir).read_metrics().rows
        if deep_diff(rows.get(rid, []), on_disk[: len(numbers)]):
            problems.append(f"{rid}: DB epochs differ from metrics.jsonl")
        if run["status"] == "done":
            if len(numbers) != epochs or run["result"] is None or not state.result:
                problems.append(f"{rid}: done but half-recorded ({len(numbers)} epochs)")
            elif deep_diff(json.loads(run["result"]), RunDir(run_dir).read_result()):
                problems.append(f"{rid}: DB result differs from result.json")
    return problems, counts


def compare_sweeps(sctx: SweepContext, sweep_dir: Path) -> list[str]:
    """A finished sweep against the reference: same runs, all done, same results."""
    epochs = sctx.ctx.shape.epochs
    problems, counts = check_sweep_db(sweep_dir, epochs)
    runs, rows, _ = db_runs(sweep_dir / "sweep.db")
    ref_runs, ref_rows, _ = db_runs(sctx.reference / "sweep.db")
    ids = [r["id"] for r in runs]
    if sorted(ids) != sorted(sctx.run_ids):
        problems.append(f"runs {sorted(ids)} != reference {sorted(sctx.run_ids)}")
    if counts.get("done", 0) != len(ids):
        problems.append(f"not all done: {counts}")
    ref_results = {r["id"]: json.loads(r["result"]) for r in ref_runs}
    for run in runs:
        rid = run["id"]
        if run["result"] is None or rid not in ref_results:
            continue
        diffs = deep_diff(strip_timing(ref_results[rid]), strip_timing(json.loads(run["result"])))
        diffs += deep_diff(strip_timing(ref_rows[rid]), strip_timing(rows.get(rid, [])))
        diffs += compare_runs(sctx.reference / "runs" / rid, sweep_dir / "runs" / rid)
        problems += [f"{rid}: {d}" for d in diffs[:MAX_DIFFS]]
    return problems


def run_sweep_reference(ctx: Context, seeds: Sequence[int]) -> SweepContext:
    """Write the sweep file and run it once without interruption (``--jobs 1``)."""
    spec = write_yaml(ctx.work / "crash-sweep.yaml", sweep_spec(ctx.config, seeds))
    out = ctx.work / "sweep-reference"
    log = ctx.work / "sweep-reference.log"
    proc, start = launch(["sweep", str(spec), "--out", str(out)], log)
    seen = watch(proc, start, out, None, timeout=3600)
    if seen.returncode != 0:
        raise TrialError(f"reference sweep failed: {log_tail(log)}")
    runs, _, problems = db_runs(out / "sweep.db")
    problems += check_sweep_db(out, ctx.shape.epochs)[0]
    if problems or any(r["status"] != "done" for r in runs):
        raise TrialError(f"reference sweep: {'; '.join(problems) or 'runs not done'}")
    return SweepContext(ctx, spec, out, seen.timeline.exit or 0.0, tuple(r["id"] for r in runs))


@dataclass(frozen=True)
class SweepPlan:
    """A sweep trial: ``--jobs``; ``progress``: how far through the sweep's epochs (all runs)
    the kill comes; ``offset``: how far into the next epoch (by the reference's epoch time);
    ``double``: kill the re-run too, ``second_progress`` of the way through what is left."""

    jobs: int
    progress: float
    offset: float
    double: bool
    second_progress: float


def plan_sweep_trials(n: int, seed: int) -> list[SweepPlan]:
    """Odd trials use ``--jobs 2``; about one in three re-runs is killed again."""
    rng = random.Random(f"sweep:{seed}")
    twice = set(rng.sample(range(n), min(n, max(1, n // 3)))) if n >= 2 else set()
    return [
        SweepPlan(2 if i % 2 else 1, rng.random(), rng.random(), i in twice, rng.random())
        for i in range(n)
    ]


def sweep_rows(sweep_dir: Path) -> int:
    """Epoch rows in all the run directories' ``metrics.jsonl`` files."""
    total = 0
    for path in sweep_dir.glob("runs/*/metrics.jsonl"):
        with contextlib.suppress(OSError):
            total += path.read_bytes().count(b"\n")
    return total


@dataclass
class AfterRows:
    """Fire ``delay`` s after the sweep's run directories hold ``rows`` epoch rows in all
    (timed by progress, not the clock, so ``--jobs 1`` and ``--jobs 2`` are killed alike)."""

    sweep_dir: Path
    rows: int
    delay: float
    reached: float | None = None
    last_check: float = -1.0

    def __call__(self, snap: Snapshot) -> bool:
        if self.reached is None and snap.t - self.last_check >= 0.05:
            self.last_check = snap.t
            if sweep_rows(self.sweep_dir) >= self.rows:
                self.reached = snap.t
        return self.reached is not None and snap.t - self.reached >= self.delay


def kill_sweep(sctx: SweepContext, out: Path, jobs: int, trigger: AfterRows, log: Path) -> str:
    """Run the sweep, SIGKILL its process group when ``trigger`` fires; returns what the kill
    hit ("" if the sweep finished first)."""
    proc, start = launch(["sweep", str(sctx.spec), "--out", str(out), "--jobs", str(jobs)], log)
    seen = watch(proc, start, out, trigger, sctx.timeout)
    if seen.killed_at is None:
        return ""
    return f"killed at {seen.killed_at:.2f} s, {sweep_rows(out)}/{sctx.total_rows} epochs done"


def kill_sweep_phases(sctx: SweepContext, out: Path, plan: SweepPlan, result: TrialResult) -> None:
    """The planned kills (one or two), each followed by a check of the DB and run dirs."""
    epochs, log = sctx.ctx.shape.epochs, out.with_suffix(".log")
    ref = sctx.ctx.reference
    epoch_seconds = (ref.epoch_end(epochs) - ref.epoch_end(0)) / epochs
    for n, progress in enumerate([plan.progress, plan.second_progress][: 1 + plan.double]):
        done = sweep_rows(out)
        rows = done + int(progress * (sctx.total_rows - done))
        trigger = AfterRows(out, rows, plan.offset * epoch_seconds)
        what = kill_sweep(sctx, out, plan.jobs, trigger, log)
        if not what:
            result.story.append("finished before the kill")
            return
        result.kills += 1
        problems, counts = check_sweep_db(out, epochs)
        shown = "db: " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "empty")
        verdict = "db + run dirs ok" if not problems else "BAD"
        result.story.append(f"{'re-run ' if n else ''}{what} ({shown}) -> {verdict}")
        result.failures += problems


def run_sweep_trial(sctx: SweepContext, index: int, total: int, plan: SweepPlan) -> TrialResult:
    """Kill a sweep (twice if planned), check the DB after each kill, re-run, compare."""
    result = TrialResult(index, total, f"sweep jobs={plan.jobs}", label="sweep trial")
    result.actual, result.double = result.planned, plan.double
    out, log = sctx.ctx.work / f"sweep{index:02d}", sctx.ctx.work / f"sweep{index:02d}.log"
    epochs = sctx.ctx.shape.epochs
    try:
        kill_sweep_phases(sctx, out, plan, result)
        proc, start = launch(["sweep", str(sctx.spec), "--out", str(out)], log)
        seen = watch(proc, start, out, None, sctx.timeout)
        if seen.returncode != 0:
            result.failures.append(f"re-run exited {seen.returncode}: {log_tail(log)}")
        problems = compare_sweeps(sctx, out)
        result.failures += problems
        n_runs = len(sctx.run_ids)
        result.story.append(
            f"re-run to the end -> {n_runs} runs once each, done, {epochs} epoch rows each, "
            + ("results identical" if not problems else "MISMATCH")
        )
    except TrialError as err:
        result.failures.append(str(err))
    return result


# ------------------------------------------------------------------------------- report


def double_line(results: Sequence[TrialResult]) -> str:
    done = sum(r.kills >= 2 for r in results)
    return f"  double kills: {done} (planned {sum(r.double for r in results)})"


def summary_lines(train: Sequence[TrialResult], sweeps: Sequence[TrialResult]) -> list[str]:
    """Counts per kind (planned vs where the kill actually landed) and pass/fail."""
    lines = [f"train trials: {sum(r.passed for r in train)}/{len(train)} passed"]
    kinds = list(KINDS) + sorted({r.actual for r in train} - set(KINDS))
    for kind in kinds:
        planned = sum(r.planned == kind for r in train)
        landed = [r for r in train if r.actual == kind]
        lines.append(
            f"  {kind:<17} planned {planned:>2}  landed {len(landed):>2}  "
            f"passed {sum(r.passed for r in landed):>2}"
        )
    lines.append(double_line(train))
    if sweeps:
        lines.append(f"sweep trials: {sum(r.passed for r in sweeps)}/{len(sweeps)} passed")
        for jobs in sorted({r.planned for r in sweeps}):
            group = [r for r in sweeps if r.planned == jobs]
            lines.append(
                f"  {jobs:<17} trials {len(group):>2}  passed {sum(r.passed for r in group):>2}"
            )
        lines.append(double_line(sweeps))
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--trials", type=int, default=12, help="train trials (default 12)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    p.add_argument("--sweep-trials", type=int, default=5, help="sweep trials (default 5)")
    p.add_argument("--workdir", type=Path, help="work directory (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--epochs", type=int, default=Shape.epochs, help="epochs of the tiny run")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="crash-trials-"))
    work.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with adopting_orphans() as adopting:
        if not adopting:
            print("note: cannot adopt orphans (not Linux); killed sweep workers may linger")
        try:
            train, sweeps = run_all(args, work)
        except TrialError as err:  # a reference run failed: nothing to compare with
            print(f"error: {err}; work directory kept: {work}")
            return 1
    print("\n".join(summary_lines(train, sweeps)))
    ok = all(r.passed for r in [*train, *sweeps])
    print(f"{'ALL PASSED' if ok else 'FAILURES'} in {time.monotonic() - began:.0f} s")
    if ok and not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work directory kept: {work}")
    return 0 if ok else 1


def run_all(args: argparse.Namespace, work: Path) -> tuple[list[TrialResult], list[TrialResult]]:
    """The reference runs and every trial, one line printed per trial as it ends."""
    ctx = run_reference(work, Shape(epochs=args.epochs))
    print(f"reference run: {ctx.reference.seconds:.2f} s ({ctx.reference.timeline.describe()})")
    seen_writes = len(ctx.reference.timeline.ckpt_writes)
    print(f"  checkpoint temp file seen by polling in {seen_writes}/{args.epochs} epoch writes")
    plans = plan_train_trials(args.trials, args.seed, args.epochs)
    train = []
    for i, plan in enumerate(plans, 1):
        train.append(run_train_trial(ctx, i, len(plans), plan))
        print(train[-1].line(), flush=True)
    sweeps = []
    if args.sweep_trials:
        sctx = run_sweep_reference(ctx, seeds=(0, 1))
        print(f"reference sweep: {len(sctx.run_ids)} runs in {sctx.seconds:.2f} s", flush=True)
        for i, splan in enumerate(plan_sweep_trials(args.sweep_trials, args.seed), 1):
            sweeps.append(run_sweep_trial(sctx, i, args.sweep_trials, splan))
            print(sweeps[-1].line(), flush=True)
    return train, sweeps


if __name__ == "__main__":
    sys.exit(main())
