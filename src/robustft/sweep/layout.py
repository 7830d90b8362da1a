"""A sweep directory: where its files are, where a sweep command writes, what re-running it
would do with each run (:func:`plan`) and what its database and run directories say now
(:func:`read_status`).

Layout (default ``sweeps/<name>/``): ``sweep.yaml`` (the spec as run, base inlined),
``sweep.db`` (:mod:`robustft.sweep.store`), ``runs/<run_id>/`` (:mod:`robustft.run.rundir`).
The run directories are the truth, the database an index over them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from robustft.errors import UserError
from robustft.run.rundir import RunDir
from robustft.sweep.spec import RunSpec, SweepSpec, load_sweep
from robustft.sweep.store import StoredRun, SweepStore, as_planned
from robustft.utils.fsio import atomic_write_text


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

    @property
    def runs(self) -> Path:
        """``runs/``: the run directories, named by run id."""
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    def write_spec(self, spec: SweepSpec) -> None:
        """``sweep.yaml``: the spec as run (base inlined), under a header naming its source."""
        header = f"# sweep {spec.name}, as run from {spec.source} (base inlined)\n"
        atomic_write_text(self.spec, header + yaml.safe_dump(spec.to_dict(), sort_keys=False))


def default_sweep_dir(spec: SweepSpec, base: str | Path = "sweeps") -> Path:
    return Path(base) / spec.name


def resolve_sweep_dir(
    target: str | Path, *, out: str | Path | None = None, status: bool = False
) -> Path:
    """The sweep directory of ``target``: ``out``, else the sweep file's default
    (:func:`default_sweep_dir`); for a status (``status``) ``target`` may also be the sweep
    directory itself.

    Raises:
        UserError: a directory given without ``status``; for a status, a path that is neither
            a directory nor a YAML file; a sweep file that does not load.
    """
    path = Path(target)
    if path.is_dir():
        if not status:
            raise UserError(f"{path} is a directory; pass a sweep YAML file (or use --status)")
        return path
    if status and path.suffix not in (".yaml", ".yml") and not path.exists():
        raise UserError(
            f"sweep directory not found: {path}; pass a sweep directory or a sweep YAML file"
        )
    return Path(out) if out else default_sweep_dir(load_sweep(path))


@dataclass(frozen=True)
class PlannedRun:
    """What running the sweep would do with one run, from its run directory: ``skip`` (it
    holds ``result.json``), ``resume`` (after ``epochs_done`` recorded epochs) or ``train``."""

    run: RunSpec
    action: Literal["skip", "resume", "train"]
    epochs_done: int = 0


def plan(runs: Sequence[RunSpec], sweep_dir: str | Path) -> list[PlannedRun]:
    """What running ``runs`` in ``sweep_dir`` would do with each (``--dry-run``); training
    nothing, writing nothing."""
    layout = SweepDir(Path(sweep_dir))
    planned = []
    for run in runs:
        run_dir = RunDir(layout.run_dir(run.run_id))
        done = len(run_dir.read_metrics().rows)
        if run_dir.result.is_file():
            planned.append(PlannedRun(run, "skip", done))
        elif done:
            planned.append(PlannedRun(run, "resume", done))
        else:
            planned.append(PlannedRun(run, "train"))
    return planned


@dataclass(frozen=True)
class SweepStatus:
    """What a sweep directory holds (``--status``).

    Attributes:
        records: the runs recorded in ``sweep.db``; with the sweep file's runs, those first
            in its order (``pending`` when not recorded yet), then the recorded runs no longer
            in it (:func:`~robustft.sweep.store.as_planned`).
        unrecorded: ids of runs not recorded as done whose run directories hold
            ``result.json`` (finished by ``--index`` runs, which leave ``sweep.db`` alone).
    """

    records: list[StoredRun]
    unrecorded: list[str]


def read_status(
    sweep_dir: str | Path, runs: Sequence[RunSpec] | None = None, *, source: str | None = None
) -> SweepStatus:
    """The status of ``sweep_dir``; ``runs``: the expansion of its sweep file as it is now
    (``source``, named in messages).

    Raises:
        UserError: no ``sweep.db`` (the message says how to record run directories that
            ``--index`` runs left without one).
    """
    layout = SweepDir(Path(sweep_dir))
    command = f"robustft sweep {source or 'SWEEP.yaml'}"
    if not layout.db.is_file() and layout.runs.is_dir() and any(layout.runs.iterdir()):
        raise UserError(
            f"no sweep database at {layout.db}, but {layout.runs} holds run directories (--index "
            f"runs leave sweep.db alone): record them with `{command} --collect --out "
            f"{sweep_dir}`, then use --status"
        )
    with SweepStore.open_existing(layout.db) as store:
        records = store.records()
    if runs is not None:
        records = as_planned(records, runs)
    unrecorded = [
        rec.id
        for rec in records
        if rec.status != "done" and RunDir(layout.run_dir(rec.id)).result.is_file()
    ]
    return SweepStatus(records, unrecorded)
