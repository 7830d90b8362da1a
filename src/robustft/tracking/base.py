"""What every experiment tracker shares: :class:`Tracker`, a :class:`~robustft.callbacks.Callbacks`
that logs a run to one backend and never lets a logging failure stop the run.

A tracker opens (or, on ``--resume``, reopens) its backend's run in ``on_start``, from the ids
it stored in the run directory's ``tracking.json``; it logs each epoch's ``metrics.jsonl`` row
in ``on_epoch_end`` (and, on resume, the rows of earlier epochs it had not logged yet, so a run
killed between its checkpoint and its log line is still one complete curve), the end-of-run
numbers, findings and robustness curve in ``on_result``, and closes the backend's run in
``on_close``. A backend that fails at any of these is switched off with one warning; the run
and its own files are never affected.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, cast

from robustft.callbacks import Callbacks
from robustft.config import LogConfig
from robustft.errors import first_line
from robustft.run.result import SUMMARY_KEYS, RunResult
from robustft.run.rundir import RunDir
from robustft.units import format_eps
from robustft.utils.text import markdown_table, percent

_logger = logging.getLogger("robustft.tracking")


def epoch_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a ``metrics.jsonl`` row (``epoch`` excepted) as floats: eps, lr, loss and
    accuracies, validation, the overfitting monitor's values (flags as 0/1), passes and
    throughput. Non-numbers and non-finite values are left out."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == "epoch" or value is None or isinstance(value, str):
            continue
        if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


def result_summary(result: RunResult) -> dict[str, float]:
    """The end-of-run numbers of ``result.json`` (those of
    :data:`robustft.run.result.SUMMARY_KEYS` that are set)."""
    values = {key: result.get(key) for key in SUMMARY_KEYS}
    return {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> scalar for a config of sections (lists as comma-separated text, None as
    ``"null"``): what backends take as hyperparameters."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flat_config(value, f"{prefix}{key}."))
        elif isinstance(value, (list, tuple)):
            out[f"{prefix}{key}"] = ",".join(str(v) for v in value)
        else:
            out[f"{prefix}{key}"] = "null" if value is None else value
    return out


def findings_text(result: RunResult) -> str:
    """The run's findings and evaluation warnings, one line each (empty when none)."""
    lines = [
        f"{f.get('code')}: {f.get('message')} -> {f.get('suggestion')}"
        for f in result.get("findings") or ()
    ]
    lines += [f"warning: {w}" for w in result.get("warnings") or ()]
    return "\n".join(lines)


def curve_rows(curve: Any) -> list[tuple[float, float, int]]:
    """The robustness curve as (eps, accuracy, attacked) rows."""
    return list(zip(curve.epsilons, curve.accuracy, curve.attacked))


def curve_markdown(curve: Any, norm: str) -> str:
    """The robustness curve as a markdown table (eps in the norm's unit, accuracy in %)."""
    rows = [[format_eps(e, norm), percent(a), str(n)] for e, a, n in curve_rows(curve)]
    return markdown_table([f"eps ({norm})", "accuracy (%)", "attacked"], rows)


class Tracker(Callbacks):
    """Logs one run to one backend (subclasses implement :meth:`open`, :meth:`log_epoch`,
    :meth:`log_result` and :meth:`close`). Failures switch the tracker off with one warning."""

    name: ClassVar[str] = ""  # the log.backends name
    extra: ClassVar[str] = ""  # the pip extra that installs the backend

    def __init__(self, log: LogConfig) -> None:
        self.log = log
        self.run: RunDir | None = None
        self.norm = "linf"
        self.last_epoch = 0
        self.entry: dict[str, Any] = {}
        self.off = False

    # ---- what a backend implements

    def open(
        self, run: RunDir, config: dict[str, Any], previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Start the backend's run, or continue the one ``previous`` (this backend's entry in
        ``tracking.json``) names; returns the entry to store (ids, paths)."""
        raise NotImplementedError

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def log_result(self, result: RunResult, curve: Any) -> None:
        raise NotImplementedError

    def close(self, error: BaseException | None) -> None:
        raise NotImplementedError

    # ---- the hooks

    def _guard(self, what: str, fn: Callable[[], None]) -> None:
        if self.off:
            return
        try:
            fn()
        except Exception as err:  # a tracking failure must never end the run
            self.off = True
            hint = (
                f"; check its settings, or pip install 'robustft[{self.extra}]'"
                if what == "start"
                else ""
            )
            _logger.warning(
                "%s logging is off for the rest of this run: %s failed (%s: %s)%s; the run "
                "goes on and its run directory is complete",
                self.name,
                what,
                type(err).__name__,
                first_line(err),
                hint,
            )
            _logger.debug("%s %s failed", self.name, what, exc_info=True)
            if what != "close":
                self._guard_close(err)

    def _guard_close(self, err: BaseException) -> None:
        try:
            self.close(err)
        except Exception:
            _logger.debug("%s close after failure failed", self.name, exc_info=True)

    def on_start(
        self, run_dir: Path, config: dict[str, Any], history: list[dict[str, Any]]
    ) -> None:
        self.run = RunDir(Path(run_dir))
        self.norm = str((config.get("attack") or {}).get("norm", "linf"))

        def start() -> None:
            assert self.run is not None
            previous = self.run.read_tracking().get(self.name)  # gone after --force
            self.entry = self.open(self.run, config, previous)
            self.last_epoch = int((previous or {}).get("last_epoch", 0))
            for row in history:  # epochs the backend has not seen (killed before logging)
                if int(row["epoch"]) > self.last_epoch:
                    self._log_row(row)
            self._save()

        self._guard("start", start)

    def _log_row(self, row: Mapping[str, Any]) -> None:
        self.log_epoch(int(row["epoch"]), epoch_metrics(row))
        self.last_epoch = int(row["epoch"])

    def _save(self) -> None:
        assert self.run is not None
        self.run.write_tracking(self.name, {**self.entry, "last_epoch": self.last_epoch})

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        def log() -> None:
            self._log_row(row)
            self._save()

        self._guard("logging epoch", log)

    def on_result(self, result: Mapping[str, Any], curve: Any) -> None:
        record = cast(RunResult, result)  # fit reports result.json's record
        self._guard("logging the result", lambda: self.log_result(record, curve))

    def on_close(self, error: BaseException | None) -> None:
        self._guard("close", lambda: self.close(error))

    # ---- shared helpers

    def run_name(self) -> str:
        """The tracked run's name: the run directory's (``<name>-<run id>``)."""
        assert self.run is not None
        return self.run.root.name

    def curve_png(self, curve: Any) -> bytes | None:
        """The robustness curve plot (PNG) of ``curve`` (a :class:`RobustnessCurve`)."""
        from robustft.run.figures import curve_png

        return curve_png(curve.to_dict(), title=f"{self.run_name()}: accuracy under attack")
