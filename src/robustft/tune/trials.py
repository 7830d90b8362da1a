"""The trials of a tuning: where its files go (:class:`TuneDir`), each trial's status, metric
and results read back from Ray Tune and the trials' run directories, and the outputs written at
the end: ``trials.md`` and ``trials.csv`` (best first) and ``best.yaml``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustft.errors import UserError
from robustft.run.result import HEADLINE_KEYS, RunResult
from robustft.run.rundir import RunDir
from robustft.tune.spec import TuneSpec, trial_config
from robustft.utils.text import csv_text, markdown_table, percent, short_number


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


@dataclass
class Trial:
    """One row of the trials table."""

    number: int
    run_id: str
    values: dict[str, Any]
    status: str  # done, early-stopped, failed, pending
    epochs: int
    metric: float | None
    result: RunResult | None = None
    error: str | None = None
    run_dir: Path = field(default_factory=Path)


def collect_trials(spec: TuneSpec, layout: TuneDir, grid: Any) -> list[Trial]:
    """The trials of a finished tuning from Ray Tune's results and the trials' run
    directories; marks early-stopped run directories (``early_stopped.json``)."""
    from robustft.utils.fsio import atomic_write_json

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
            run.early_stopped.unlink(missing_ok=True)  # stale: it finished after all
        elif result.error is not None:
            status = "failed"
        elif rows:  # ended by Ray Tune without a result: ASHA stopped it at a rung
            status = "early-stopped"
            atomic_write_json(
                run.early_stopped,
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


@dataclass(frozen=True)
class TuneResult:
    """A tuning's outcome: its ``trials`` (best first) and the directory holding its tables."""

    spec: TuneSpec
    layout: TuneDir
    trials: list[Trial]

    def counts(self) -> dict[str, int]:
        """Trials by status: ``done``, ``early-stopped`` (by ASHA), ``failed``."""
        return {
            s: sum(t.status == s for t in self.trials) for s in ("done", "early-stopped", "failed")
        }

    def best(self) -> Trial:
        """The best trial that trained all its epochs.

        Raises:
            UserError: none finished (the message names the trials table, which says why).
        """
        try:
            return best_trial(self.trials)
        except UserError as err:
            raise UserError(f"{err} ({self.layout.table_md})") from None

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Headers and rows of the trials table (:func:`trials_table`)."""
        return trials_table(self.spec, self.trials)


def write_outputs(spec: TuneSpec, layout: TuneDir, trials: Sequence[Trial]) -> None:
    """``trials.md``, ``trials.csv`` and (when a trial finished) ``best.yaml``."""
    from robustft.utils.fsio import atomic_write_text

    headers, rows = trials_table(spec, trials)
    atomic_write_text(layout.table_md, markdown_table(headers, rows) + "\n")
    atomic_write_text(layout.table_csv, csv_text(headers, rows))
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


def trials_table(spec: TuneSpec, trials: Sequence[Trial]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the trials table (best first)."""
    from robustft.sweep.spec import short_keys

    names = short_keys([s.key for s in spec.searches])
    headers = ["trial", "run id", *(names[s.key] for s in spec.searches), "status", "epochs"]
    headers += [spec.metric, "clean %", "robust %", "exp. rob. %"]
    rows = []
    for t in trials:
        r: RunResult | dict[str, Any] = t.result or {}
        rows.append(
            [
                str(t.number),
                t.run_id,
                *(short_number(t.values[s.key]) for s in spec.searches),
                t.status,
                str(t.epochs),
                short_number(t.metric),
                *(percent(r.get(k)) for k in HEADLINE_KEYS),
            ]
        )
    return headers, rows
