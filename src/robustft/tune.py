"""Hyperparameter tuning with ASHA through Ray Tune (``robustft tune CONFIG --search ...``).

The paper tuned learning rate and weight decay per backbone and dataset with ASHA on the clean
validation accuracy of RFT-fix. Here Ray Tune samples ``--trials`` configurations from the
``--search`` distributions (seeded), runs each as a trial that trains an ordinary robustft run
(:func:`robustft.train.fit`) in its own run directory, and reports the chosen metric of every
epoch's ``metrics.jsonl`` row (default ``val_acc``) to Ray Tune's ASHAScheduler (the last
epoch's once the final evaluation is written), which stops trials that fall behind at its rungs
(epochs ``grace``, ``grace * rf``, ...). Nothing of the
search or of ASHA is implemented here: Ray Tune is the engine, and ``robustft tune`` needs it
(``pip install 'robustft[ray]'``); without ``--address`` it runs on a local Ray instance.

Tune directory (default ``tunes/<config name>/``)::

    tune.yaml         the tuning as run (base config, searches, trials, metric, ASHA settings)
    ray/              Ray Tune's experiment (its state, for resuming)
    trials/<run id>/  one run directory per trial; an early-stopped one holds early_stopped.json
    trials.md, trials.csv   the table of trials (best first)
    best.yaml         the best finished trial's config, ready for ``robustft train``

Run again with the same arguments, it resumes (Ray Tune restores the experiment; an unfinished
trial resumes its run directory from the last checkpoint; finished trials are not run again).

Run again with a larger ``--trials`` (nothing else changed), it extends the tuning: Ray Tune
cannot grow an experiment (``Tuner.restore`` keeps its ``num_samples``), so a new experiment
samples all the trials from the same seed. Ray Tune's sampler draws one configuration after the
other from one seeded generator, so the first ones are the earlier trials' configurations:
those find their run directories finished (``result.json``) or stopped early
(``early_stopped.json``) and report their recorded epochs to ASHA without training again (its
rungs then hold their values); the new ones train and are judged against them.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import logging
import math
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robustft.callbacks import Callbacks
from robustft.config import RunConfig, apply_overrides, build_config, load_yaml
from robustft.errors import UserError, did_you_mean
from robustft.rundir import RunDir

_logger = logging.getLogger(__name__)

KINDS = {"loguniform": 2, "uniform": 2, "randint": 2, "choice": -1}  # argument counts (-1: 1+)
METRICS = {"val_acc": "max", "val_robust_acc": "max", "train_acc": "max", "train_loss": "min"}
EARLY_STOPPED = "early_stopped.json"
_SEARCH = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*=\s*([a-z]+)\s*\((.*)\)\s*$")


@dataclass(frozen=True)
class Search:
    """One searched key: ``key=kind(args)``, e.g. ``train.lr=loguniform(1e-5,1e-2)``."""

    key: str
    kind: str
    args: tuple[Any, ...]

    def __str__(self) -> str:
        return f"{self.key}={self.kind}({','.join(str(a) for a in self.args)})"

    def domain(self) -> Any:
        """The Ray Tune search space of this key."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.args))
        if self.kind == "randint":  # inclusive bounds, as written
            return tune.randint(int(self.args[0]), int(self.args[1]) + 1)
        return getattr(tune, self.kind)(float(self.args[0]), float(self.args[1]))


def parse_search(text: str) -> Search:
    """Parse and check ``KEY=KIND(ARGS)``.

    Raises:
        UserError: bad syntax, an unknown key or kind, bounds out of order or invalid for the
            key (the message names it).
    """
    from robustft.sweep import config_keys

    match = _SEARCH.match(text)
    if match is None:
        raise UserError(
            f"--search {text!r}: expected KEY=KIND(ARGS), e.g. 'train.lr=loguniform(1e-5,1e-2)'"
        )
    key, kind, raw = match.groups()
    keys = config_keys()
    if key not in keys or key == "name":
        raise UserError(f"--search {text!r}: unknown config key '{key}'{did_you_mean(key, keys)}")
    if kind not in KINDS:
        raise UserError(
            f"--search {text!r}: unknown distribution '{kind}'{did_you_mean(kind, KINDS)}; "
            f"valid: {', '.join(KINDS)}"
        )
    args = tuple(_value(part) for part in raw.split(",")) if raw.strip() else ()
    count = KINDS[kind]
    if (count > 0 and len(args) != count) or not args:
        want = "two bounds" if count == 2 else "one or more values"
        raise UserError(f"--search {text!r}: {kind} takes {want}")
    if kind != "choice":
        if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            raise UserError(f"--search {text!r}: bounds must be numbers")
        if not args[0] < args[1] or (kind == "loguniform" and args[0] <= 0):
            raise UserError(f"--search {text!r}: need low < high (and low > 0 for loguniform)")
    return Search(key, kind, args)


def _value(text: str) -> Any:
    """A distribution argument: an int, a float (``1e-4``, which YAML reads as a string), else
    a YAML value (``true``, ``sgd``)."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


@dataclass(frozen=True)
class TuneSpec:
    """A tuning: base config, searched keys and ASHA settings.

    Attributes:
        config: the base config as a nested mapping (file plus ``--set`` overrides).
        searches: the searched keys.
        trials: configurations sampled (Ray Tune's ``num_samples``).
        metric, mode: the metrics-row key ASHA compares and ``max`` or ``min``.
        grace: ASHA's grace period (epochs before the first rung).
        reduction: ASHA's reduction factor (1/reduction of the trials pass each rung).
        seed: the sampler's seed (the same trials every time).
        cpus, gpus: resources of each trial.
    """

    config: Mapping[str, Any]
    searches: tuple[Search, ...]
    trials: int = 16
    metric: str = "val_acc"
    mode: str = "max"
    grace: int = 1
    reduction: int = 2
    seed: int = 0
    cpus: int = 1
    gpus: int = 0

    def __post_init__(self) -> None:
        if not self.searches:
            raise UserError("robustft tune needs at least one --search KEY=KIND(ARGS)")
        keys = [s.key for s in self.searches]
        if len(set(keys)) != len(keys):
            raise UserError(f"--search names a key twice: {', '.join(keys)}")
        if self.trials < 1:
            raise UserError(f"--trials must be >= 1, got {self.trials}")
        if self.metric not in METRICS:
            raise UserError(
                f"--metric {self.metric}: not a per-epoch metric ASHA can compare"
                f"{did_you_mean(self.metric, METRICS)}; valid: {', '.join(METRICS)}"
            )
        if self.mode not in ("max", "min"):
            raise UserError(f"--mode must be max or min, got {self.mode!r}")
        if self.grace < 1 or self.reduction < 2:
            raise UserError("--grace must be >= 1 and --reduction-factor >= 2")
        if self.cpus < 1 or self.gpus < 0:
            raise UserError("--cpus-per-trial must be >= 1 and --gpus-per-trial >= 0")
        if self.gpus > 1:  # run_trial trains in the trial's own process: one device
            raise UserError(
                f"--gpus-per-trial {self.gpus}: a trial trains in one process on one GPU; use 0 "
                "or 1 (several GPUs per run: robustft sweep --launcher ray --gpus-per-run N)"
            )
        base = self.base()
        for search in self.searches:  # every bound (every choice) must make a valid config
            for value in search.args:
                trial_config(self.config, {search.key: value})
        if self.metric == "val_robust_acc" and base.val.robust_every != 1:
            raise UserError(
                "--metric val_robust_acc needs it every epoch: --set val.robust_every=1"
            )
        if self.grace > base.train.epochs:
            raise UserError(f"--grace {self.grace} exceeds train.epochs={base.train.epochs}")

    def base(self) -> RunConfig:
        return build_config(dict(self.config))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["config"] = copy.deepcopy(dict(self.config))
        out["searches"] = [str(s) for s in self.searches]
        return out


def trial_config(base: Mapping[str, Any], values: Mapping[str, Any]) -> RunConfig:
    """The config of a trial: ``base`` with the sampled ``values`` (dotted keys) set.

    Raises:
        UserError: a value the config refuses (names the key and value).
    """
    data = apply_overrides(dict(base), [])
    for key, value in values.items():
        node = data
        *sections, leaf = key.split(".")
        for part in sections:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return build_config(data)
    except UserError as err:
        raise UserError(f"--search: {err}") from None


@dataclass(frozen=True)
class TuneDir:
    """Paths inside a tune directory."""

    root: Path

    @property
    def spec(self) -> Path:
        return self.root / "tune.yaml"

    @property
    def experiment(self) -> Path:
        return self.root / "ray"

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def best(self) -> Path:
        return self.root / "best.yaml"

    @property
    def table_md(self) -> Path:
        return self.root / "trials.md"

    @property
    def table_csv(self) -> Path:
        return self.root / "trials.csv"


def default_tune_dir(spec: TuneSpec, base: str | Path = "tunes") -> Path:
    return Path(base) / spec.base().name


# ------------------------------------------------------------------------------ a trial


class _Report(Callbacks):
    """A trial's callbacks: every finished epoch's metric goes to Ray Tune (the checkpoint of
    that epoch is already on disk, so a trial stopped here loses nothing), except the last
    epoch's, which is sent once the final evaluation is written. ASHA may stop a trial at any
    report, also at the last epoch (a trial resumed past a rung it was never judged at is
    judged at its next report, whatever the epoch): reported before the evaluation, such a
    trial lost its result after training every epoch and was listed as early-stopped."""

    def __init__(self, metric: str, run_id: str, epochs: int) -> None:
        self.metric, self.run_id, self.epochs = metric, run_id, epochs
        self.last: dict[str, Any] | None = None  # the last epoch's row, sent after the result

    def on_start(
        self, run_dir: Path, config: dict[str, Any], history: list[dict[str, Any]]
    ) -> None:
        if history and int(history[-1]["epoch"]) >= self.epochs:  # resumed for its evaluation
            self.last = history[-1]

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        if int(row["epoch"]) >= self.epochs:
            self.last = row
        else:
            self._send(row)

    def on_result(self, result: dict[str, Any], curve: Any) -> None:
        if self.last is not None:
            self._send(self.last)

    def replay(self, run: RunDir) -> None:
        """Report the recorded epochs of a trial that an earlier tuning finished or stopped
        (one this tuning extends), marked ``recorded``: ASHA's rungs get its values, and it
        does not train again."""
        for row in run.read_metrics().rows:
            self._send(row, recorded=True)

    def _send(self, row: dict[str, Any], *, recorded: bool = False) -> None:
        from ray import tune

        value = row.get(self.metric)
        if value is None or not math.isfinite(float(value)):
            value = -math.inf if METRICS[self.metric] == "max" else math.inf
        report = {self.metric: float(value), "epoch": int(row["epoch"]), "run_id": self.run_id}
        tune.report({**report, "recorded": recorded})


def run_trial(params: dict[str, Any]) -> None:
    """The Ray Tune trainable: train (or resume) the trial's run directory."""
    import torch

    from robustft.train import fit

    setup = params["robustft"]
    values = {key: params[key] for key in setup["keys"]}
    config = trial_config(setup["config"], values)
    run_dir = Path(setup["trials"]) / config.run_id()
    torch.set_num_threads(int(setup["cpus"]))
    device = "cuda" if setup["gpus"] else "cpu"
    report = _Report(setup["metric"], config.run_id(), config.train.epochs)
    run = RunDir(run_dir)
    if run.result.is_file() or (run.root / EARLY_STOPPED).is_file():
        report.replay(run)  # a trial of the tuning this one extends: kept as it ended
        return
    fit(config, run_dir, resume=True, callbacks=report, device=device)


# ------------------------------------------------------------------------ the tuning


@dataclass
class Trial:
    """One row of the trials table."""

    number: int
    run_id: str
    values: dict[str, Any]
    status: str  # done, early-stopped, failed, pending
    epochs: int
    metric: float | None
    result: dict[str, Any] | None = None
    error: str | None = None
    run_dir: Path = field(default_factory=Path)


def tune_runs(
    spec: TuneSpec,
    tune_dir: str | Path,
    *,
    address: str | None = None,
    on_result: Callable[[str, dict[str, Any]], None] | None = None,
    force: bool = False,
) -> list[Trial]:
    """Run (or resume) the tuning; write the trials table and ``best.yaml``.

    Args:
        on_result: called with (trial id, reported metrics) after every epoch of every trial.
        force: start over in a tune directory that holds another tuning.

    Returns:
        The trials, best first.

    Raises:
        UserError: Ray missing, the directory holds another tuning, no trial finished.
        KeyboardInterrupt: interrupted (Ray Tune saved its state: call again to resume); no
            trial is marked and no table written.
    """
    from robustft.checkpoint import atomic_write_text
    from robustft.launchers.ray import connect, require_ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 then prints nothing
    ray = require_ray()
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    layout = TuneDir(Path(tune_dir).resolve())
    _check_tune_dir(layout, spec, force=force)
    earlier = None if force else earlier_trials(layout, spec)
    if earlier is not None:  # a new experiment of all the trials (see the module docstring)
        import shutil

        _logger.info("extending the tuning in %s from %d to %d trials", layout.root, *earlier)
        shutil.rmtree(layout.experiment, ignore_errors=True)  # before tune.yaml says more
    layout.trials.mkdir(parents=True, exist_ok=True)
    atomic_write_text(layout.spec, yaml.safe_dump(spec.to_dict(), sort_keys=False))
    base = spec.base()
    setup = {
        "config": dict(spec.config),
        "keys": [s.key for s in spec.searches],
        "trials": str(layout.trials),
        "metric": spec.metric,
        "cpus": spec.cpus,
        "gpus": spec.gpus,
    }
    trainable = tune.with_resources(run_trial, {"cpu": spec.cpus, "gpu": spec.gpus})
    param_space = {**{s.key: s.domain() for s in spec.searches}, "robustft": setup}
    started = connect(address)
    try:
        if tune.Tuner.can_restore(str(layout.experiment)):
            _logger.info("resuming the tuning in %s", layout.experiment)
            tuner = tune.Tuner.restore(
                str(layout.experiment),
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=True,
                param_space=param_space,
            )
        else:
            scheduler = ASHAScheduler(
                time_attr="epoch",
                # past the last epoch: a trial that passes every rung trains to the end and is
                # evaluated (at max_t Ray Tune would stop it before its final evaluation)
                max_t=base.train.epochs + 1,
                grace_period=spec.grace,
                reduction_factor=spec.reduction,
            )
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    metric=spec.metric,
                    mode=spec.mode,
                    scheduler=scheduler,
                    num_samples=spec.trials,
                    search_alg=BasicVariantGenerator(random_state=spec.seed),
                    reuse_actors=False,
                ),
                run_config=tune.RunConfig(
                    name=layout.experiment.name,
                    storage_path=str(layout.root),
                    verbose=0,
                    callbacks=[_Relay(on_result)] if on_result else [],
                    failure_config=tune.FailureConfig(max_failures=2),
                ),
            )
        with _stop_gracefully() as received, _without_restore_hint():
            grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    if received:  # Ray Tune returns normally from an interrupted tuning too
        raise KeyboardInterrupt(f"{signal.Signals(received[0]).name}; Ray Tune saved its state")
    trials = collect_trials(spec, layout, grid)
    write_outputs(spec, layout, trials)
    return trials


@contextlib.contextmanager
def _stop_gracefully() -> Iterator[list[int]]:
    """Within the block, SIGINT and SIGTERM (Ctrl-C, a batch scheduler) are recorded in the
    yielded list and passed on to Ray Tune as SIGUSR1, on which it ends the tuning with its
    state saved; a second one interrupts at once. Ray Tune's own SIGINT handler is switched
    off: it returns from an interrupted ``Tuner.fit()`` as from a finished one (interrupted
    trials even count as terminated), so the caller could not tell them apart. Outside the
    main thread (signals cannot be handled there) nothing changes."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        if len(received) > 1 or not callable(signal.getsignal(signal.SIGUSR1)):
            raise KeyboardInterrupt  # a second signal, or Ray Tune's loop not started yet
        os.kill(os.getpid(), signal.SIGUSR1)  # Ray Tune's handler: stop, save, return

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        if env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env


class _NoRestoreHint(logging.Filter):
    """Drops Ray Tune's "Resume experiment with: Tuner.restore(...)" after an interrupt: the
    CLI says what to do (run the same command again), and Tuner.restore is not it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


@contextlib.contextmanager
def _without_restore_hint() -> Iterator[None]:
    """Within the block, Ray Tune's resume hint is not logged (:class:`_NoRestoreHint`)."""
    logger, hint = logging.getLogger("ray.tune.tune"), _NoRestoreHint()
    logger.addFilter(hint)
    try:
        yield
    finally:
        logger.removeFilter(hint)


class _Relay:
    """A Ray Tune callback passing each trial's reports on (the CLI prints them)."""

    def __new__(cls, on_result: Callable[[str, dict[str, Any]], None]) -> Any:
        from ray import tune

        class Relay(tune.Callback):  # type: ignore[misc]
            def on_trial_result(
                self,
                iteration: int,
                trials: list[Any],
                trial: Any,
                result: dict[Any, Any],
                **info: Any,
            ) -> Any:
                on_result(str(trial.trial_id), dict(result))

        return Relay()


def _previous(layout: TuneDir) -> dict[str, Any]:
    """The tuning the tune directory holds (``tune.yaml``; empty when none or unreadable)."""
    if not layout.spec.is_file():
        return {}
    try:
        old = load_yaml(layout.spec)
    except UserError:
        return {}
    return old if isinstance(old, dict) else {}


def earlier_trials(layout: TuneDir, spec: TuneSpec) -> tuple[int, int] | None:
    """(the trials of the tuning in ``layout``, ``spec.trials``) when ``spec`` extends it: the
    same tuning with more trials; else None."""
    old, new = _previous(layout), spec.to_dict()
    trials = old.get("trials")
    if not isinstance(trials, int) or {**old, "trials": spec.trials} != new:
        return None
    return (trials, spec.trials) if trials < spec.trials else None


def _check_tune_dir(layout: TuneDir, spec: TuneSpec, *, force: bool) -> None:
    """Refuse a tune directory that holds another tuning (unless ``force``: cleared); the same
    tuning with more trials is an extension (:func:`earlier_trials`), with fewer refused."""
    import shutil

    if not layout.spec.is_file():
        return
    old = _previous(layout)
    if old == spec.to_dict() or (not force and earlier_trials(layout, spec) is not None):
        return
    if not force and {**old, "trials": spec.trials} == spec.to_dict():
        raise UserError(
            f"tune dir {layout.root} holds a tuning of {old['trials']} trials, which --trials "
            f"{spec.trials} would drop; pass --trials {old['trials']} or more (a larger number "
            "extends it, keeping its trials), --force to start over there, or another --out"
        )
    if not force:
        changed = sorted(k for k in spec.to_dict() if old.get(k) != spec.to_dict()[k])
        raise UserError(
            f"tune dir {layout.root} holds another tuning (differs in: {', '.join(changed)}); "
            "pass --force to start over there or choose another --out"
        )
    shutil.rmtree(layout.experiment, ignore_errors=True)
    shutil.rmtree(layout.trials, ignore_errors=True)
    for path in (layout.best, layout.table_md, layout.table_csv):
        path.unlink(missing_ok=True)


def collect_trials(spec: TuneSpec, layout: TuneDir, grid: Any) -> list[Trial]:
    """The trials of a finished tuning from Ray Tune's results and the trials' run
    directories; marks early-stopped run directories (``early_stopped.json``)."""
    from robustft.checkpoint import atomic_write_json

    trials: list[Trial] = []
    for index, result in enumerate(grid):
        number = trial_number(str((result.metrics or {}).get("trial_id", "")), index)
        values = {s.key: result.config.get(s.key) for s in spec.searches}
        config = trial_config(spec.config, values)
        run = RunDir(layout.trials / config.run_id())
        rows = run.read_metrics().rows
        done = run.read_result()
        metric = rows[-1].get(spec.metric) if rows else None
        if done is not None:
            status = "done"
            (run.root / EARLY_STOPPED).unlink(missing_ok=True)  # stale: it finished after all
        elif result.error is not None:
            status = "failed"
        elif rows:  # ended by Ray Tune without a result: ASHA stopped it at a rung
            status = "early-stopped"
            atomic_write_json(
                run.root / EARLY_STOPPED,
                {
                    "by": "ASHA (Ray Tune)",
                    "after_epoch": len(rows),
                    "metric": spec.metric,
                    "value": metric,
                },
            )
        else:
            status = "pending"
        error = None if result.error is None else str(result.error).strip().splitlines()[-1]
        trials.append(
            Trial(number, config.run_id(), values, status, len(rows), metric, done, error, run.root)
        )
    order = {"done": 0, "early-stopped": 1, "pending": 2, "failed": 3}

    def rank(t: Trial) -> tuple[int, bool, float, int]:
        value = 0.0 if t.metric is None else float(t.metric)
        return order[t.status], t.metric is None, -value if spec.mode == "max" else value, t.number

    return sorted(trials, key=rank)


def trial_number(trial_id: str, fallback: int) -> int:
    """A trial's number, 1-based in the order Ray Tune created the trials (its id ends in
    ``_00003`` for the fourth)."""
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) + 1 if tail.isdigit() else fallback + 1


def best_trial(trials: Sequence[Trial]) -> Trial:
    """The best trial that trained all its epochs (``trials`` come best first).

    Raises:
        UserError: none finished.
    """
    for trial in trials:
        if trial.status == "done":
            return trial
    raise UserError("no trial finished all its epochs; see the trials table for why")


def write_outputs(spec: TuneSpec, layout: TuneDir, trials: Sequence[Trial]) -> None:
    """``trials.md``, ``trials.csv`` and (when a trial finished) ``best.yaml``."""
    from robustft.checkpoint import atomic_write_text

    headers, rows = trials_table(spec, trials)
    atomic_write_text(layout.table_md, markdown(headers, rows) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(headers)
    writer.writerows(rows)
    atomic_write_text(layout.table_csv, buffer.getvalue())
    try:
        best = best_trial(trials)
    except UserError:
        return
    config = trial_config(spec.config, best.values)
    header = (
        f"# best of {len(trials)} trials by {spec.metric} ({spec.mode}): trial {best.number}, "
        f"run {best.run_id}; train it with: robustft train {layout.best}\n"
    )
    atomic_write_text(layout.best, header + config.to_yaml())


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trials_table(spec: TuneSpec, trials: Sequence[Trial]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the trials table (best first)."""
    from robustft.sweep import short_keys

    names = short_keys([s.key for s in spec.searches])
    headers = ["trial", "run id", *(names[s.key] for s in spec.searches), "status", "epochs"]
    headers += [spec.metric, "clean %", "robust %", "exp. rob. %"]
    rows = []
    for t in trials:
        r = t.result or {}
        pct = [_number(None if r.get(k) is None else round(100 * r[k], 2)) for k in _RESULT_KEYS]
        rows.append(
            [
                str(t.number),
                t.run_id,
                *(_number(t.values[s.key]) for s in spec.searches),
                t.status,
                str(t.epochs),
                _number(t.metric),
                *pct,
            ]
        )
    return headers, rows


_RESULT_KEYS = ("clean_accuracy", "robust_accuracy", "expected_robustness")


def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
