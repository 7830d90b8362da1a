"""Sweeps: a base config and a grid expanded into runs, executed (or resumed) and recorded.

A sweep file::

    # what it runs, how long, the command
    name: demo                      # optional; default: the file name; default dir sweeps/<name>/
    base: ../digits_sched.yaml      # a run config file (relative to this file) or a mapping
    set: {train.epochs: 15}         # optional: dotted overrides applied to every run
    methods:                        # optional: named override sets; a run's name = its method
      standard: {attack.eps: 0, attack.schedule: constant}
      fix: {attack.schedule: constant}
      sched: {attack.schedule: "hinge(t1=0.24,t2=0.74)"}
    grid:                           # optional: dotted key -> list of values (Cartesian product)
      train.seed: [0, 1, 2]

Keys are dotted config keys (``attack.eps``); nested mappings (``attack: {eps: 0}``) are read
the same way. A run's config is the base, then ``set``, then its grid point, then its method. A
method may not set a key the grid varies (``standard: {attack.eps: 0}`` with ``grid:
{attack.eps: [4/255, 8/255]}`` is refused: its value would override every grid value and
silently make those grid points one run), nor may a grid list a value twice. Runs are ordered
grid point by grid point (first grid key slowest), every method inside a point, so a partial
sweep holds whole comparisons. A run's id is the hash of its resolved config
(:meth:`RunConfig.run_id`); configs that resolve to the same id (two methods alike, ``8/255``
and its float) collapse into one run. Everything is validated (configs built, schedules and
attacks checked) before anything runs.

Sweep directory (default ``sweeps/<name>/``):

* ``sweep.yaml``: the spec as run, base inlined;
* ``sweep.db``: SQLite (WAL, busy timeout, one transaction per write) with tables ``runs``
  (one row per run: config, status, timings, final metrics) and ``epochs`` (per-epoch
  metrics); schema in :mod:`robustft.sweep_store`;
* ``runs/<run_id>/``: run directories (:mod:`robustft.rundir` layout; ``train.log`` holds a
  worker's output with ``--jobs``).

The run directories are the truth, the database an index over them: a run whose directory holds
``result.json`` is done (recorded if the database missed it), one with a checkpoint is resumed,
a failed one is retried.
Several sweep processes may work on one sweep directory on one machine: each claims a run in a
transaction before starting it; a claim whose process is gone counts as interrupted.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import os
import time
import traceback
import typing
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import yaml

from robustft.callbacks import Callbacks
from robustft.config import (
    EXTENSION_HINT,
    NAME_PATTERN,
    RunConfig,
    build_config,
    is_extension_key,
    load_yaml,
    read_yaml,
)
from robustft.errors import UserError, did_you_mean
from robustft.rundir import RunDir
from robustft.sweep_store import SweepStore

if TYPE_CHECKING:
    from robustft.launchers import Launcher

_logger = logging.getLogger(__name__)

SPEC_KEYS = ("name", "base", "set", "methods", "grid")


# ------------------------------------------------------------------------------------ spec


def config_keys() -> tuple[str, ...]:
    """Every dotted leaf key of :class:`RunConfig` (``name``, ``model.name``, ...)."""

    def walk(cls: type, prefix: str) -> Iterator[str]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint):
                yield from walk(hint, f"{prefix}{f.name}.")  # type: ignore[arg-type]
            else:
                yield f"{prefix}{f.name}"

    return tuple(walk(RunConfig, ""))


def _flatten(where: str, data: object) -> dict[str, Any]:
    """``{"attack": {"eps": 0}, "train.seed": 1}`` -> ``{"attack.eps": 0, "train.seed": 1}``."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: expected a mapping of config keys to values, got {data!r}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not key:
            raise UserError(f"{where}: keys must be dotted config keys, got {key!r}")
        if isinstance(value, Mapping):
            for sub, inner in _flatten(where, value).items():
                out[f"{key}.{sub}"] = inner
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_keys(where: str, keys: Sequence[str]) -> None:
    valid = config_keys()
    for key in keys:
        if key == "name":
            raise UserError(f"{where}: 'name' is set from the method label; name a method instead")
        if key not in valid:
            raise UserError(f"{where}: unknown config key '{key}'{did_you_mean(key, valid)}")


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: base config, common overrides, methods and grid.

    Attributes:
        name: the sweep's name (letters, digits, ``_.+-``); names its default directory.
        base: the base run config as a (nested) mapping, as in a run config file.
        overrides: dotted key -> value applied to every run (the file's ``set``).
        methods: method label -> dotted key -> value; empty means one method named after the
            base config's ``name``.
        grid: dotted key -> non-empty list of values; empty means a single grid point.
        source: where the spec came from, for messages (a path or ``<inline>``).
    """

    name: str
    base: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    methods: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    source: str = "<inline>"

    def __post_init__(self) -> None:
        where = f"sweep {self.source}"
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            raise UserError(
                f"{where}: name {self.name!r} must be letters, digits and _.+- (it names a "
                "directory)"
            )
        _check_keys(f"{where}: set", list(self.overrides))
        for label, settings in self.methods.items():
            if not isinstance(label, str) or not NAME_PATTERN.match(label):
                raise UserError(f"{where}: method name {label!r} must be letters, digits, _.+-")
            _check_keys(f"{where}: methods.{label}", list(settings))
        _check_keys(f"{where}: grid", list(self.grid))
        for key, values in self.grid.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise UserError(
                    f"{where}: grid '{key}': expected a non-empty list of values, got {values!r}"
                )
            for i, value in enumerate(values):
                if any(type(v) is type(value) and v == value for v in values[:i]):
                    raise UserError(
                        f"{where}: grid '{key}' lists {show_value(value)} twice; list each value "
                        "once"
                    )
        for label, settings in self.methods.items():
            for key in settings:
                if key in self.grid:
                    shown = ", ".join(show_value(v) for v in self.grid[key])
                    raise UserError(
                        f"{where}: method '{label}' sets {key}={show_value(settings[key])}, which "
                        f"would override the grid's {key} values ({shown}) and make those grid "
                        f"points one run; drop {key} from the grid or from method '{label}'"
                    )

    def method_settings(self) -> dict[str, Mapping[str, Any]]:
        """The methods, or the single implicit one (named after the base config)."""
        if self.methods:
            return dict(self.methods)
        return {str(self.base.get("name") or self.name): {}}

    def to_dict(self) -> dict[str, Any]:
        """The spec as a sweep-file mapping (base inlined)."""
        return {
            "name": self.name,
            "base": copy.deepcopy(dict(self.base)),
            "set": dict(self.overrides),
            "methods": {k: dict(v) for k, v in self.methods.items()},
            "grid": {k: list(v) for k, v in self.grid.items()},
        }


def parse_sweep(
    data: Mapping[str, Any], *, source: str = "<inline>", root: str | Path = "."
) -> SweepSpec:
    """Build a :class:`SweepSpec` from a sweep-file mapping.

    Args:
        data: the parsed YAML (keys ``name``, ``base``, ``set``, ``methods``, ``grid``).
        source: where it came from (used in messages and as the default name's stem).
        root: directory that a ``base`` path is relative to.

    Raises:
        UserError: unknown keys, a missing base file, bad values; the message names them.
    """
    where = f"sweep {source}"
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: expected a mapping at the top level")
    data = {key: value for key, value in data.items() if not is_extension_key(key)}
    for key in data:
        if key not in SPEC_KEYS:
            raise UserError(
                f"{where}: unknown key '{key}'{did_you_mean(str(key), SPEC_KEYS)}; "
                f"valid: {', '.join(SPEC_KEYS)}; {EXTENSION_HINT}"
            )
    base = data.get("base")
    if isinstance(base, str):
        path = Path(root) / base
        if not os.path.isfile(path):  # not Path.is_file(): that raises for a name too long
            raise UserError(f"{where}: base config file not found: {path}")
        base = load_yaml(path)
    elif base is None:
        base = {}
    elif not isinstance(base, Mapping):
        raise UserError(f"{where}: base must be a config file path or a mapping, got {base!r}")
    methods = data.get("methods") or {}
    if not isinstance(methods, Mapping):
        raise UserError(f"{where}: methods must map method names to overrides, got {methods!r}")
    return SweepSpec(
        name=data.get("name") or (Path(source).stem if source != "<inline>" else "sweep"),
        base=copy.deepcopy(dict(base)),
        overrides=_flatten(f"{where}: set", data.get("set")),
        methods={m: _flatten(f"{where}: methods.{m}", s) for m, s in methods.items()},
        grid=_flatten(f"{where}: grid", data.get("grid")),
        source=source,
    )


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML file (a ``base`` path is relative to the file)."""
    p = Path(path)
    data = read_yaml(p, "sweep")
    if data is None:
        raise UserError(f"sweep file {p}: empty; it needs at least a base config")
    return parse_sweep(data, source=str(p), root=p.parent)


# ------------------------------------------------------------------------------- expansion


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Display names of dotted keys: the last part (``seed``) unless two keys share it."""
    lasts = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (last if lasts.count(last) == 1 else k) for k, last in zip(keys, lasts)}


def show_value(value: object) -> str:
    """A compact text form of a config value (``8/255``, ``0.001``, ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep.

    Attributes:
        run_id: hash of the resolved config (its run directory is ``runs/<run_id>``).
        method: the method label (also the config's ``name``).
        config: the resolved, validated config.
        grid: the grid keys' values in the resolved config (a method may override them).
        index: position in the sweep (0-based).
        aliases: other (method, grid point) labels that resolved to this same config.
    """

    run_id: str
    method: str
    config: RunConfig
    grid: Mapping[str, Any]
    index: int
    aliases: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``"sched seed=1"``: the method and the grid values."""
        names = short_keys(list(self.grid))
        parts = [f"{names[k]}={show_value(v)}" for k, v in self.grid.items()]
        return " ".join([self.method, *parts])


def _assign(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def _lookup(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None  # unset fingerprints
    return node


def _resolve(spec: SweepSpec, method: str, point: Mapping[str, Any]) -> RunConfig:
    """Build and check the config of one (method, grid point)."""
    from robustft.build import check_config

    data = copy.deepcopy(dict(spec.base))
    layers = (spec.overrides, point, spec.method_settings()[method])
    for layer in layers:
        for key, value in layer.items():
            _assign(data, key, value)
    data["name"] = method
    where = " ".join([method, *(f"{k}={show_value(v)}" for k, v in point.items())])
    try:
        config = build_config(data)
        check_config(config)
    except UserError as err:
        raise UserError(f"sweep {spec.source}: run '{where}': {err}") from None
    return config


def expand(spec: SweepSpec) -> list[RunSpec]:
    """All runs of ``spec``, validated, duplicates collapsed, in execution order.

    Raises:
        UserError: a run's config is invalid (the message names the run, key and value).
    """
    keys = list(spec.grid)
    runs: dict[str, RunSpec] = {}
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        point = dict(zip(keys, values))
        for method in spec.method_settings():
            config = _resolve(spec, method, point)
            run_id = config.run_id()
            resolved = config.to_dict()
            grid = {k: _lookup(resolved, k) for k in keys}
            if run_id in runs:
                kept = runs[run_id]
                # named by its grid point as written: two values that resolve alike (8/255 and
                # 0.0313725...) show which entries of the sweep file are one run
                alias = RunSpec(run_id, method, config, point, kept.index).label
                runs[run_id] = dataclasses.replace(kept, aliases=(*kept.aliases, alias))
                _logger.info("sweep %s: %s is the same run as %s", spec.name, alias, kept.label)
                continue
            runs[run_id] = RunSpec(run_id, method, config, grid, len(runs))
    return list(runs.values())


# ------------------------------------------------------------------------------ execution


@dataclass(frozen=True)
class SweepDir:
    """Paths inside a sweep directory."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "sweep.db"

    @property
    def spec(self) -> Path:
        return self.root / "sweep.yaml"

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id


def default_sweep_dir(spec: SweepSpec, base: str | Path = "sweeps") -> Path:
    return Path(base) / spec.name


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
    result: Mapping[str, Any] | None = None
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
    from robustft.train import fit

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
        error = f"{err.__class__.__name__}: {err}".splitlines()[0]
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.log").write_text(traceback.format_exc())
        error += f" (traceback in {run_dir / 'error.log'})"
        _logger.debug("run %s failed", run.run_id, exc_info=True)
    except BaseException:
        ctx.store.release(run.run_id)
        raise
    return _finish(ctx, run, start, error)


# -------------------------------------------------------------------- launched runs


@dataclass
class _Active:
    """A run started through a launcher: its handle, start time, epochs recorded so far."""

    run: RunSpec
    handle: Any
    start: float
    seen: int


def _launch(ctx: _Context, run: RunSpec, launcher: Launcher) -> _Active:
    """Start a claimed run through ``launcher`` (its config written into its run directory)."""
    from robustft.checkpoint import atomic_write_text

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
        device: passed to :func:`robustft.train.fit` (and to local workers).
        events: progress reports.
        runs: ``expand(spec)`` if already computed.
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
    from robustft.checkpoint import atomic_write_text

    runs = [
        dataclasses.replace(run, config=tracked(run.config, spec.name, log))
        for run in (runs if runs is not None else expand(spec))
    ]
    layout = SweepDir(Path(sweep_dir))
    layout.root.mkdir(parents=True, exist_ok=True)
    header = f"# sweep {spec.name}, as run from {spec.source} (base inlined)\n"
    atomic_write_text(layout.spec, header + yaml.safe_dump(spec.to_dict(), sort_keys=False))
    start = time.monotonic()
    if launcher is None and jobs > 1:
        from robustft.launchers.local import LocalLauncher

        launcher = LocalLauncher(max(1, min(jobs, len(runs))), device)
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
