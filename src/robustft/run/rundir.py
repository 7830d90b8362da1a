"""Run directory layout and provenance.

``runs/<name>-<id>/`` (``id`` = hash of the resolved config) holds:

* ``config.yaml``: the resolved config (every default written out);
* ``metrics.jsonl``: one JSON object per finished epoch;
* ``checkpoints/last.pt`` (and ``last.pt.prev``): model, optimizer, epoch, history, RNG states;
* ``robustness.json``: the final robustness curve on the test split;
* ``result.json``: headline numbers (clean, robust at eps_g, expected robustness, times, delay;
  :class:`robustft.run.result.RunResult`);
* ``env.json``: versions, device, command line, seed;
* ``failure.json``: only when a numerical fault (or a bad example of data given from
  Python) stopped the run;
* ``tracking.json``: the experiment trackers' run ids (``log.backends``), so ``--resume``
  continues the same tracked runs; ``tensorboard/``: TensorBoard event files;
* ``checkpoints/good.pt``: only with ``monitor.action=rollback``;
* ``probe.json``: the clean probe of ``hinge(auto)``;
* ``skipped_images.txt``: the unreadable images ``data.bad_images: skip`` left out;
* ``early_stopped.json``: a tuning trial that ASHA stopped;
* ``.lock``: locked by the process training the run, so a second one is refused.

Beside them, what runs the run writes about its attempts: ``train.log`` (a sweep's worker
process, ``--jobs`` or Ray) and ``error.log`` (the traceback of an in-process sweep run that
failed). :class:`RunDir` names every one of these files; nothing else builds their paths.

Every file is written atomically, except the logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml

from robustft._version import __version__
from robustft.config import RunConfig, build_config, flatten, load_yaml
from robustft.errors import UserError, is_int, option
from robustft.run.checkpoint import previous
from robustft.utils.fsio import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    import torch

    from robustft.run.result import RunResult


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory, and the readers of its files."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``: ``last.pt``, ``last.pt.prev`` and ``good.pt``."""
        return self.root / "checkpoints"

    @property
    def checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def robustness(self) -> Path:
        return self.root / "robustness.json"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def failure(self) -> Path:
        """``failure.json``: the fault that stopped the run (kind, epoch, step, value)."""
        return self.root / "failure.json"

    @property
    def good(self) -> Path:
        """``checkpoints/good.pt``: the last epoch before catastrophic overfitting (rollback)."""
        return self.checkpoints / "good.pt"

    @property
    def env(self) -> Path:
        return self.root / "env.json"

    @property
    def tracking(self) -> Path:
        """``tracking.json``: per tracking backend, what identifies its run (id, experiment,
        log dir) and the last epoch it logged (:mod:`robustft.tracking`)."""
        return self.root / "tracking.json"

    @property
    def tensorboard(self) -> Path:
        """``tensorboard/``: TensorBoard event files (``tensorboard --logdir runs``)."""
        return self.root / "tensorboard"

    @property
    def probe(self) -> Path:
        """``probe.json``: ``hinge(auto)``'s clean probe run (``epochs``, ``val_acc``)."""
        return self.root / "probe.json"

    @property
    def skipped_images(self) -> Path:
        """``skipped_images.txt``: the images ``data.bad_images: skip`` left out, one a line."""
        return self.root / "skipped_images.txt"

    @property
    def early_stopped(self) -> Path:
        """``early_stopped.json``: a tuning trial ASHA stopped (:mod:`robustft.tune`)."""
        return self.root / "early_stopped.json"

    @property
    def train_log(self) -> Path:
        """``train.log``: the output of the worker process a sweep trained the run in
        (:mod:`robustft.launchers`); appended to by each attempt."""
        return self.root / "train.log"

    @property
    def error_log(self) -> Path:
        """``error.log``: the traceback of an in-process sweep run that failed unexpectedly."""
        return self.root / "error.log"

    @property
    def lock(self) -> Path:
        """``.lock``: held (flock) by the one process writing the run (:func:`locked`)."""
        return self.root / ".lock"

    def outputs(self) -> tuple[Path, ...]:
        """Every file and folder the run itself writes: what a forced restart removes
        (:func:`init_run_dir`). Left out: the logs that sweeps write about its attempts
        (``train.log``, which the launcher holds open while the run starts, and ``error.log``)
        and the ``.lock`` of the process starting over."""
        return (
            self.config,
            self.metrics,
            self.checkpoints,
            self.robustness,
            self.result,
            self.env,
            self.failure,
            self.tracking,  # a restarted run is a new tracked run
            self.tensorboard,
            self.probe,
            self.skipped_images,
            self.early_stopped,
        )

    def read_tracking(self) -> dict[str, Any]:
        """The contents of ``tracking.json`` (empty when missing or unreadable: the trackers
        then start new runs)."""
        return read_json_object(self.tracking) or {}

    def write_tracking(self, backend: str, entry: dict[str, Any]) -> None:
        """Record ``entry`` for ``backend`` in ``tracking.json`` (atomically, other backends'
        entries kept)."""
        data = self.read_tracking()
        data[backend] = entry
        atomic_write_json(self.tracking, data)

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file() or previous(self.checkpoint).is_file()

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        atomic_write_text(self.metrics, "".join(json.dumps(row) + "\n" for row in history))

    def read_metrics(self) -> Metrics:
        """The rows of ``metrics.jsonl`` (see :func:`read_metrics`)."""
        return read_metrics(self.metrics)

    def read_result(self) -> RunResult | None:
        """``result.json``; None when missing or unreadable (torn, not UTF-8, not a JSON
        object): the run has not finished."""
        return cast("RunResult | None", read_json_object(self.result))

    def read_robustness(self) -> dict[str, Any] | None:
        """``robustness.json`` (:meth:`robustft.robustness.curve.RobustnessCurve.to_dict`);
        None when missing or unreadable."""
        return read_json_object(self.robustness)

    def read_probe(self) -> list[float] | None:
        """The validation accuracies of ``probe.json``; None when missing or unreadable (the
        probe is then run again)."""
        probe = read_json_object(self.probe)
        accs = None if probe is None else probe.get("val_acc")
        if not isinstance(accs, list) or not accs:
            return None
        try:
            return [float(a) for a in accs]
        except (TypeError, ValueError):
            return None

    def read_config(self) -> dict[str, Any] | None:
        """``config.yaml`` as written (its sections, not validated: reports read runs of other
        versions with it); {} when it holds no mapping, None when missing or unreadable."""
        try:
            data = yaml.safe_load(self.config.read_text())
        except (OSError, ValueError, RecursionError, yaml.YAMLError):  # bad UTF-8, deep nesting
            return None
        return data if isinstance(data, dict) else {}


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when the file is missing, unreadable, not JSON or not
    an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError: JSONDecodeError, UnicodeDecodeError
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class Metrics:
    """What :func:`read_metrics` found: the readable rows and what was wrong with the file."""

    rows: list[dict[str, Any]]
    problems: list[str]


def read_metrics(path: Path) -> Metrics:
    """The rows of a ``metrics.jsonl``, tolerantly: a missing file has none; reading stops at
    the first line that is not a JSON object with an integer ``epoch`` (a torn or hand-edited
    file), and ``problems`` says so, as it does for a missing final newline and for epochs out
    of sequence (rows kept). Every reader (sweeps, reports, the demo, the crash trials) uses
    this one."""
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return Metrics([], [])
    except (OSError, UnicodeDecodeError) as err:
        return Metrics([], [f"{path.name}: unreadable ({err.__class__.__name__})"])
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        epoch = row.get("epoch") if isinstance(row, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            problems.append(f"{path.name} line {number}: not a metrics row (torn); read up to it")
            return Metrics(rows, problems)
        if epoch != len(rows) + 1:
            problems.append(f"{path.name} line {number}: epoch {epoch} out of sequence")
        rows.append(row)  # type: ignore[arg-type]
    if text and not text.endswith("\n"):
        problems.append(f"{path.name}: no final newline (torn)")
    return Metrics(rows, problems)


def run_dir_of(path: Path) -> Path | None:
    """The run directory of a run dir or of a checkpoint inside one (None when unknown)."""
    for run in (RunDir(path), RunDir(path.parent.parent)):  # a checkpoint: <run>/checkpoints/x
        if run.config.is_file() and run.root.is_dir():
            return run.root
    return None


def lock_holder(run: RunDir) -> str | None:
    """Who holds the run's lock (what :func:`locked` wrote: pid, host, since when), or None.

    It probes with a shared ``flock`` released at once, so a process starting to train in
    that instant could be refused as if the run were in use; nothing is written."""
    try:
        handle = run.lock.open("r")
    except OSError:  # no lock file: never locked
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        except OSError:
            return None
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


@dataclass(frozen=True)
class RunState:
    """Where a run stands, from its files (no checkpoint is read).

    ``status``: ``finished`` (``result.json``), ``training`` (a process holds its lock;
    ``reason`` says which), ``failed`` (``failure.json``; ``reason`` is its message) or
    ``unfinished`` (interrupted, or not started). ``epochs_done``: rows of ``metrics.jsonl``;
    ``epochs``: ``train.epochs`` of ``config.yaml`` (None when unreadable)."""

    root: Path
    status: str
    reason: str = ""
    epochs_done: int = 0
    epochs: int | None = None

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def describe(self) -> str:
        """``failed (numerical fault at epoch 3 ...)``, ``is still training (in use by ...)``."""
        return {
            "finished": "has finished",
            "training": f"is still training ({self.reason})",
            "failed": f"failed ({self.reason})",
        }.get(self.status, "has not finished (interrupted, or not started)")

    def text(self) -> str:
        """``runs/x failed (numerical fault at epoch 3 ...)``: the run and its state."""
        return f"{self.root} {self.describe()}"

    def checkpoint_note(self, epoch: object, epochs: int) -> str | None:
        """What to say of a model loaded from this run's checkpoint of ``epoch`` (of
        ``epochs``): None when the run has finished, else ``runs/x is still training (...);
        its checkpoint is of epoch 3 of 10, not the final model``."""
        if self.finished:
            return None
        return f"{self.text()}; its checkpoint is of epoch {epoch} of {epochs}, not the final model"


def run_state(root: Path) -> RunState:
    """The :class:`RunState` of the run directory ``root``."""
    run = RunDir(root)
    try:
        epochs = (load_yaml(run.config).get("train") or {}).get("epochs")
    except (UserError, AttributeError):
        epochs = None
    epochs = epochs if is_int(epochs) else None
    done = len(run.read_metrics().rows)
    if run.result.is_file():
        return RunState(root, "finished", "", done, epochs)
    holder = lock_holder(run)
    if holder is not None:
        return RunState(root, "training", f"in use by {holder}", done, epochs)
    failure = read_json_object(run.failure)
    if failure is not None:
        reason = str(failure.get("message") or failure.get("kind") or "failure.json")
        return RunState(root, "failed", (reason.splitlines() or ["?"])[0], done, epochs)
    return RunState(root, "unfinished", "", done, epochs)


def default_run_dir(config: RunConfig, base: str | Path = "runs") -> Path:
    return Path(base) / f"{config.name}-{config.run_id()}"


def _clear(run: RunDir) -> None:
    """Remove what the run in ``run`` wrote (:meth:`RunDir.outputs`)."""
    for path in run.outputs():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def remove_stale_temp_files(run: RunDir) -> list[Path]:
    """Delete the temporary files (``.<name>.<random>.tmp``) that a kill during an atomic write
    leaves behind in the run dir and its ``checkpoints/``; returns them. Only call this while
    no other process writes to the run dir."""
    stale = [
        p
        for folder in (run.root, run.checkpoints)
        if folder.is_dir()
        for p in folder.glob(".*.tmp")
        if p.is_file()
    ]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


FINGERPRINT_WORDS = {
    "model_architecture": "another model architecture (parameter names, shapes or dtypes)",
    "model_weights": "other starting weights of the model",
    "train_data": "other train_data (size, labels or content)",
    "val_data": "other val_data (size, labels or content)",
    "test_data": "other test_data (size, labels or content)",
}


def config_differences(old: RunConfig, new: RunConfig, limit: int = 4) -> str:
    """The dotted keys whose values differ between two configs, as ``key: old -> new`` text."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    keys = [k for k in sorted(set(a) | set(b)) if k != "name" and a.get(k) != b.get(k)]
    shown = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


def _other_run(old: RunConfig, new: RunConfig) -> str:
    """What a run dir holding ``old`` holds, said to ``new``: a run of another model or other
    data given from Python when only those differ (:class:`~robustft.config.FingerprintConfig`),
    else a different config with the keys that differ."""
    a, b = old.fingerprints.given(), new.fingerprints.given()
    differ = [key for key in FINGERPRINT_WORDS if a.get(key) != b.get(key)]
    if "model_architecture" in differ and "model_weights" in differ:
        differ.remove("model_weights")  # other shapes are other weights: say the first
    same_config = dataclasses.replace(new, fingerprints=old.fingerprints).run_id() == old.run_id()
    if not differ or not same_config:
        return f"a different config ({config_differences(old, new)})"
    if not a:
        return (
            "a run of a model or data given from Python whose fingerprints were not recorded "
            "(an older robustft's run: whether they are the same cannot be told)"
        )
    hint = ""
    if differ == ["model_weights"]:
        hint = (
            " (give a model made as that run's was, e.g. after the same torch.manual_seed; "
            "a model that fit trained in place holds its trained weights)"
        )
    return f"a run of {' and '.join(FINGERPRINT_WORDS[k] for k in differ)}{hint}"


def check_run_dir(run: RunDir, config: RunConfig, *, resume: bool, force: bool) -> None:
    """Whether ``config`` may (re)start in ``run``; writes nothing.

    Rules: a new or empty directory (or one whose run failed before it started) is fine. A
    directory holding a *different* config (or another model or data given from Python: see
    :class:`~robustft.config.FingerprintConfig`) is refused unless ``force`` (the message names
    what differs). A directory holding the same config with a checkpoint needs ``resume``
    (continue) or ``force`` (start over). ``resume`` without a checkpoint (a run killed before
    its first epoch ended) starts from the beginning, so a retry loop can always pass
    ``--resume``. Messages name the options as the caller passes them
    (:func:`robustft.errors.option`).

    Raises:
        UserError: the directory holds another run or a checkpoint and neither flag was given.
    """
    if run.root.exists() and not run.root.is_dir():
        raise UserError(f"run dir {run.root} exists and is not a directory")
    if not run.config.is_file() or force:
        return
    try:
        existing = build_config(load_yaml(run.config))
    except UserError:
        existing = None
    force_it, run_dir = option("force"), option("run_dir", None)
    if existing is None:
        raise UserError(
            f"run dir {run.root} holds an unreadable config.yaml; pass {force_it} to overwrite "
            f"it or choose another {run_dir}"
        )
    if existing.run_id() != config.run_id():
        raise UserError(
            f"run dir {run.root} holds {_other_run(existing, config)}; pass {force_it} to "
            f"overwrite it or choose another {run_dir}"
        )
    if run.has_checkpoint() and not resume:
        raise UserError(
            f"run dir {run.root} already holds this run; pass {option('resume')} to continue "
            f"it or {force_it} to start over"
        )


def init_run_dir(run: RunDir, config: RunConfig, *, force: bool) -> None:
    """Make ``run`` hold ``config``: cleared first with ``force``; temporary files of
    interrupted atomic writes removed; ``config.yaml`` written. Call it only once setup has
    succeeded, so a failed start leaves nothing that blocks its retry."""
    if force:
        _clear(run)
    run.root.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(run)
    atomic_write_text(run.config, config.to_yaml())


@contextlib.contextmanager
def locked(run: RunDir) -> Iterator[RunDir]:
    """Hold the run directory's lock (``<run>/.lock``, an exclusive ``flock``) for one writer.

    The kernel releases the lock when its process exits, however it exits, so a lock whose
    owner died is never stale. A directory this call had to create is removed again if the
    body fails before writing anything else into it (a failed start leaves no trace).

    Raises:
        UserError: another process holds the lock (the message names its pid).
    """
    if run.root.exists() and not run.root.is_dir():
        raise UserError(f"run dir {run.root} exists and is not a directory")
    created = not run.root.exists()
    run.root.mkdir(parents=True, exist_ok=True)
    handle = run.lock.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise UserError(
                f"run dir {run.root} is in use by {owner}; wait for it to finish or stop it "
                "(two processes must not train into one run directory)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {platform.node()} since {time.strftime('%H:%M:%S')}")
        handle.flush()
        yield run
    except BaseException:
        if created and [p.name for p in run.root.iterdir()] == [run.lock.name]:
            shutil.rmtree(run.root, ignore_errors=True)
        raise
    finally:
        handle.close()  # releases the lock


def environment(device: torch.device, argv: list[str] | None = None) -> dict[str, Any]:
    """Provenance: versions, platform, device and command line."""
    import timm
    import torch
    import torchvision

    return {
        "robustft": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "argv": argv if argv is not None else sys.argv,
    }


def write_env(
    run: RunDir, device: torch.device, *, memory_format: Mapping[str, Any] | None = None
) -> None:
    """``env.json``: :func:`environment`, and the memory formats the run chose
    (``memory_format``: ``{"train": {requested, chosen, reason}, "eval": {...}}``)."""
    env = environment(device)
    if memory_format is not None:
        env["memory_format"] = dict(memory_format)
    atomic_write_json(run.env, env)
