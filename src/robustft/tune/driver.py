"""Hyperparameter tuning with ASHA through Ray Tune (``robustft tune CONFIG --search ...``).

The paper tuned learning rate and weight decay per backbone and dataset with ASHA on the clean
validation accuracy of RFT-fix. Here Ray Tune samples ``--trials`` configurations from the
``--search`` distributions (seeded), runs each as a trial that trains an ordinary robustft run
(:func:`robustft.training.fit.fit`) in its own run directory, and reports the chosen metric of every
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
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from robustft.config import load_yaml
from robustft.errors import UserError
from robustft.tune.spec import TuneSpec
from robustft.tune.trial import run_trial
from robustft.tune.trials import TuneDir, TuneResult, collect_trials, write_outputs

_logger = logging.getLogger(__name__)


def tune_runs(
    spec: TuneSpec,
    tune_dir: str | Path,
    *,
    address: str | None = None,
    on_result: Callable[[str, dict[str, Any]], None] | None = None,
    force: bool = False,
) -> TuneResult:
    """Run (or resume) the tuning; write the trials table and ``best.yaml``.

    Args:
        on_result: called with (trial id, reported metrics) after every epoch of every trial.
        force: start over in a tune directory that holds another tuning.

    Returns:
        The trials, best first, and the tune directory's layout.

    Raises:
        UserError: Ray missing, the directory holds another tuning, no trial finished.
        KeyboardInterrupt: interrupted (Ray Tune saved its state: call again to resume); no
            trial is marked and no table written.
    """
    from robustft.launchers.ray import connect, require_ray
    from robustft.utils.fsio import atomic_write_text

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 then prints nothing
    ray = require_ray()
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    layout = TuneDir(Path(tune_dir).resolve())
    _check_tune_dir(layout, spec, force=force)
    earlier = extension(spec, tune_dir, force=force)
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
    return TuneResult(spec, layout, trials)


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


def extension(
    spec: TuneSpec, tune_dir: str | Path, *, force: bool = False
) -> tuple[int, int] | None:
    """(the trials kept, ``spec.trials``) when :func:`tune_runs` of ``spec`` in ``tune_dir``
    extends the tuning there (:func:`earlier_trials`); None otherwise, and with ``force``
    (which starts over)."""
    return None if force else earlier_trials(TuneDir(Path(tune_dir).resolve()), spec)


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
