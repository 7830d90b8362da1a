"""The results store of a sweep: one SQLite database (``sweep.db``) per sweep directory.

Tables (schema version 1, in ``PRAGMA user_version``):

* ``runs``: one row per run. ``id`` (run id, primary key), ``position`` (order in the sweep;
  NULL once the sweep file no longer has the run), ``method``, ``grid`` (JSON: the grid keys'
  values), ``config`` (JSON: the resolved config), ``status`` (``pending``, ``running``,
  ``done``, ``failed``), ``error`` (one line), ``pid``/``pid_start``/``host`` (who runs it),
  ``started``/``finished`` (ISO 8601 UTC), ``seconds`` (wall clock of the last attempt), the
  final metrics ``clean_accuracy``, ``robust_accuracy``, ``expected_robustness``,
  ``adaptation_delay``, ``final_val_acc``, ``train_seconds``, ``eval_seconds``, and ``result``
  (JSON: the run's ``result.json``).
* ``epochs``: one row per finished epoch, primary key ``(run_id, epoch)``: ``eps``, ``lr``,
  ``train_loss``, ``train_acc``, ``val_acc``, ``val_robust_acc``, ``seconds`` and ``metrics``
  (JSON: the whole ``metrics.jsonl`` row).

The database runs in WAL mode with a busy timeout, and every write is one ``BEGIN IMMEDIATE``
transaction: concurrent processes (``--status`` readers, a second sweep process on the same
directory) never see a half-recorded run, and a run is marked done in the same transaction that
stores all its epochs. Only the sweep process (the driver) writes it, never its workers or Ray
tasks.

WAL needs memory shared between the processes using the file, which a network filesystem
(NFS, Lustre, GPFS, CIFS...) cannot give: there, found in ``/proc/mounts``, or when WAL cannot
be switched on, or with ``ROBUSTFT_SQLITE_JOURNAL=delete``, the database uses the rollback
journal (``journal_mode=DELETE``, ``synchronous=FULL``) instead, with a warning. Even so, keep
one driver per sweep directory on such a filesystem: its locks are only as good as the
filesystem's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustft.errors import UserError
from robustft.run.result import NumberKey, RunResult
from robustft.utils.fsio import now

if TYPE_CHECKING:
    from robustft.sweep.spec import RunSpec

_logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
JOURNAL_ENV = "ROBUSTFT_SQLITE_JOURNAL"  # "wal" or "delete": overrides the detection
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ceph",
        "fuse.ceph",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.sshfs",
        "9p",
        "afs",
        "panfs",
        "wekafs",
        "fuse.juicefs",
        "fuse.s3fs",
        "fuse.gcsfuse",
    }
)
HOST = socket.gethostname()


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``), to tell it from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` (started at ``start``, if known) still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return start is None or _process_start(pid) in (None, start)


def filesystem_type(path: str | Path, mounts: str | None = None) -> str | None:
    """The type of the filesystem holding ``path`` (the longest mount point above it in
    ``/proc/mounts``, or in ``mounts``, text in that format); None when unknown."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def journal_mode(path: str | Path) -> str:
    """``wal``, or ``delete`` on a network filesystem or when ``ROBUSTFT_SQLITE_JOURNAL`` says
    so."""
    forced = os.environ.get(JOURNAL_ENV, "").strip().lower()
    if forced in ("wal", "delete"):
        return forced
    return "delete" if filesystem_type(Path(path).parent) in NETWORK_FILESYSTEMS else "wal"


_EPOCH_COLUMNS = ("eps", "lr", "train_loss", "train_acc", "val_acc", "val_robust_acc", "seconds")
_RESULT_COLUMNS: tuple[NumberKey, ...] = (  # result.json's numbers, as columns of runs
    "clean_accuracy",
    "robust_accuracy",
    "expected_robustness",
    "adaptation_delay",
    "final_val_acc",
    "train_seconds",
    "eval_seconds",
)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS runs (
        id TEXT PRIMARY KEY,
        position INTEGER,
        method TEXT NOT NULL,
        grid TEXT NOT NULL,
        config TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'running', 'done', 'failed')),
        error TEXT,
        pid INTEGER,
        pid_start TEXT,
        host TEXT,
        started TEXT,
        finished TEXT,
        seconds REAL,
        clean_accuracy REAL,
        robust_accuracy REAL,
        expected_robustness REAL,
        adaptation_delay INTEGER,
        final_val_acc REAL,
        train_seconds REAL,
        eval_seconds REAL,
        result TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS epochs (
        run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        epoch INTEGER NOT NULL,
        eps REAL,
        lr REAL,
        train_loss REAL,
        train_acc REAL,
        val_acc REAL,
        val_robust_acc REAL,
        seconds REAL,
        metrics TEXT NOT NULL,
        PRIMARY KEY (run_id, epoch)
    )""",
)


@dataclass(frozen=True)
class StoredRun:
    """One row of the ``runs`` table, plus the number of recorded epochs."""

    id: str
    position: int | None
    method: str
    grid: dict[str, Any]
    config: dict[str, Any]
    status: str
    error: str | None = None
    pid: int | None = None
    pid_start: str | None = None
    host: str | None = None
    started: str | None = None
    finished: str | None = None
    seconds: float | None = None
    clean_accuracy: float | None = None
    robust_accuracy: float | None = None
    expected_robustness: float | None = None
    adaptation_delay: int | None = None
    final_val_acc: float | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    result: RunResult | None = None
    epochs: int = 0

    @property
    def stale(self) -> bool:
        """A ``running`` claim whose process is gone (killed sweep or worker)."""
        if self.status != "running" or self.pid is None or self.host != HOST:
            return False
        return not process_alive(self.pid, self.pid_start)

    @property
    def shown_status(self) -> str:
        """The status, with stale ``running`` claims shown as ``interrupted``."""
        return "interrupted" if self.stale else self.status

    def elapsed(self, at: datetime | None = None) -> float | None:
        """Seconds: training + evaluation of a done run (summed over resumed attempts), the
        time since a running one started (until ``at``, default now), the wall time of a
        failed attempt; None when unknown."""
        if self.status == "done" and self.train_seconds is not None:
            return self.train_seconds + (self.eval_seconds or 0.0)
        if self.shown_status != "running" or self.started is None:
            return self.seconds
        at = at or datetime.now(timezone.utc)
        return (at - datetime.fromisoformat(self.started)).total_seconds()


class SweepStore:
    """The sweep database: ``runs`` and ``epochs`` tables in SQLite with WAL.

    Every write is one ``BEGIN IMMEDIATE`` transaction, so concurrent processes (workers,
    ``--status`` readers, a second sweep process) never see a half-recorded run.

    Args:
        path: the database file (created with its schema if missing).
        timeout: seconds to wait for another writer's lock.
    """

    def __init__(self, path: str | Path, *, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        try:  # the first statement that reads the file
            self.journal = self._set_journal(journal_mode(self.path))
        except sqlite3.DatabaseError as err:
            self._conn.close()
            if isinstance(err, sqlite3.OperationalError):  # locked, read-only: not the file's fault
                raise
            raise UserError(
                f"sweep database {path}: {err}; move it away and rerun the sweep to rebuild it "
                "from the run directories"
            ) from None
        self._conn.execute("PRAGMA foreign_keys = ON")
        sync = "NORMAL" if self.journal == "wal" else "FULL"  # NORMAL is safe with WAL only
        self._conn.execute(f"PRAGMA synchronous = {sync}")
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            self._conn.close()
            raise UserError(
                f"sweep database {path} has schema {version}; this robustft reads "
                f"{SCHEMA_VERSION} (upgrade robustft)"
            )
        if version < SCHEMA_VERSION:
            with self._tx() as db:
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _set_journal(self, wanted: str) -> str:
        """Switch to journal mode ``wanted`` (falling back from WAL to DELETE where WAL does
        not work); returns the mode in force."""
        if wanted == "wal":
            try:
                mode = str(self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            except sqlite3.OperationalError as err:
                if "locked" in str(err):
                    raise
                mode = f"error: {err}"
            if mode == "wal":
                return "wal"
            _logger.warning(
                "sweep database %s: WAL unavailable (%s); using journal_mode=DELETE",
                self.path,
                mode,
            )
        else:
            _logger.warning(
                "sweep database %s: on a network filesystem or %s=delete: using "
                "journal_mode=DELETE (no WAL)",
                self.path,
                JOURNAL_ENV,
            )
        return str(self._conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]).lower()

    @classmethod
    def open_existing(cls, path: str | Path) -> SweepStore:
        """Open a database that must already exist (for ``--status``)."""
        if not Path(path).is_file():
            raise UserError(
                f"no sweep database at {path}; run `robustft sweep SWEEP.yaml` first "
                "(or pass --out to name the sweep directory)"
            )
        return cls(path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SweepStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def register(self, runs: Sequence[RunSpec]) -> int:
        """Add the sweep's runs (pending) or refresh their labels; returns how many runs in the
        database are no longer in the sweep (their position becomes NULL)."""
        with self._tx() as db:
            db.execute("UPDATE runs SET position = NULL")
            for run in runs:
                db.execute(
                    "INSERT INTO runs (id, position, method, grid, config) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (id) DO UPDATE SET position = excluded.position,"
                    " method = excluded.method, grid = excluded.grid, config = excluded.config",
                    (
                        run.run_id,
                        run.index,
                        run.method,
                        json.dumps(dict(run.grid)),
                        json.dumps(run.config.to_dict()),
                    ),
                )
            row = db.execute("SELECT COUNT(*) FROM runs WHERE position IS NULL").fetchone()
        return int(row[0])

    def claim(self, run_id: str, pid: int, *, host: str = HOST, redo: bool = False) -> bool:
        """Mark a run ``running`` by ``pid``, atomically.

        Returns:
            False if a live process already holds the run, or if it is done (unless ``redo``:
            a done run whose files are gone); True if the run is now ours.
        """
        with self._tx() as db:
            row = db.execute(
                "SELECT status, pid, pid_start, host FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise KeyError(run_id)
            if row["status"] == "done" and not redo:
                return False
            if row["status"] == "running" and row["pid"] is not None:
                held_here = row["host"] == host
                if not held_here or process_alive(row["pid"], row["pid_start"]):
                    return False
            db.execute(
                "UPDATE runs SET status = 'running', pid = ?, pid_start = ?, host = ?,"
                " started = ?, finished = NULL, error = NULL WHERE id = ?",
                (pid, _process_start(pid), host, now(), run_id),
            )
        return True

    def set_pid(self, run_id: str, pid: int) -> None:
        """Record the worker process that now runs a claimed run."""
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET pid = ?, pid_start = ? WHERE id = ?",
                (pid, _process_start(pid), run_id),
            )

    def release(self, run_id: str) -> None:
        """Put an interrupted run back to ``pending`` (its checkpoint stays for resuming)."""
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET status = 'pending', pid = NULL, pid_start = NULL"
                " WHERE id = ? AND status = 'running'",
                (run_id,),
            )

    def record_epochs(
        self, run_id: str, rows: Sequence[Mapping[str, Any]], *, replace: bool = False
    ) -> None:
        """Insert (or update) per-epoch rows; ``replace`` first drops the run's old rows."""
        with self._tx() as db:
            self._write_epochs(db, run_id, rows, replace=replace)

    @staticmethod
    def _write_epochs(
        db: sqlite3.Connection, run_id: str, rows: Sequence[Mapping[str, Any]], *, replace: bool
    ) -> None:
        if replace:
            db.execute("DELETE FROM epochs WHERE run_id = ?", (run_id,))
        db.executemany(
            f"INSERT OR REPLACE INTO epochs (run_id, epoch, {', '.join(_EPOCH_COLUMNS)}, metrics)"
            f" VALUES (?, ?, {', '.join('?' for _ in _EPOCH_COLUMNS)}, ?)",
            [
                (run_id, int(r["epoch"]), *(r.get(c) for c in _EPOCH_COLUMNS), json.dumps(r))
                for r in rows
            ],
        )

    def record_done(
        self,
        run_id: str,
        result: RunResult,
        epochs: Sequence[Mapping[str, Any]],
        *,
        seconds: float | None,
    ) -> None:
        """Mark a run done with its result and all its epochs, in one transaction."""
        if seconds is None:
            seconds = float(result.get("train_seconds") or 0) + float(
                result.get("eval_seconds") or 0
            )
        with self._tx() as db:
            self._write_epochs(db, run_id, epochs, replace=True)
            db.execute(
                "UPDATE runs SET status = 'done', error = NULL, finished = ?, seconds = ?,"
                f" {', '.join(f'{c} = ?' for c in _RESULT_COLUMNS)}, result = ? WHERE id = ?",
                (
                    now(),
                    round(seconds, 3),
                    *(result.get(c) for c in _RESULT_COLUMNS),
                    json.dumps(dict(result)),
                    run_id,
                ),
            )

    def record_failed(
        self,
        run_id: str,
        error: str,
        epochs: Sequence[Mapping[str, Any]],
        *,
        seconds: float | None = None,
    ) -> None:
        """Mark a run failed with its one-line error (its finished epochs are kept)."""
        with self._tx() as db:
            self._write_epochs(db, run_id, epochs, replace=True)
            db.execute(
                "UPDATE runs SET status = 'failed', error = ?, finished = ?, seconds = ?"
                " WHERE id = ?",
                (error, now(), None if seconds is None else round(seconds, 3), run_id),
            )

    def records(self, *, current_only: bool = False) -> list[StoredRun]:
        """All runs (sweep order first; runs no longer in the sweep last)."""
        where = "WHERE r.position IS NOT NULL" if current_only else ""
        rows = self._conn.execute(
            "SELECT r.*, (SELECT COUNT(*) FROM epochs e WHERE e.run_id = r.id) AS n_epochs"
            f" FROM runs r {where} ORDER BY r.position IS NULL, r.position, r.id"
        ).fetchall()
        return [_record(row) for row in rows]

    def record(self, run_id: str) -> StoredRun:
        """One run's row."""
        row = self._conn.execute(
            "SELECT r.*, (SELECT COUNT(*) FROM epochs e WHERE e.run_id = r.id) AS n_epochs"
            " FROM runs r WHERE r.id = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            raise KeyError(run_id)
        return _record(row)

    def epochs(self, run_id: str) -> list[dict[str, Any]]:
        """A run's per-epoch metrics rows, in epoch order."""
        rows = self._conn.execute(
            "SELECT metrics FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,)
        ).fetchall()
        return [json.loads(r["metrics"]) for r in rows]


def as_planned(records: Sequence[StoredRun], runs: Sequence[RunSpec]) -> list[StoredRun]:
    """``records`` as the sweep file now plans its ``runs``: the file's runs in its order (as
    recorded, or ``pending`` when the database does not hold them yet), then the database's other
    runs with no position (no longer in the file)."""
    by_id = {rec.id: rec for rec in records}
    planned = [
        replace(by_id[run.run_id], position=run.index, method=run.method, grid=dict(run.grid))
        if run.run_id in by_id
        else StoredRun(
            run.run_id, run.index, run.method, dict(run.grid), run.config.to_dict(), "pending"
        )
        for run in runs
    ]
    ids = {run.run_id for run in runs}
    return planned + [replace(rec, position=None) for rec in records if rec.id not in ids]


def _record(row: sqlite3.Row) -> StoredRun:
    names = row.keys()  # iterating a Row yields values, not names
    data = {k: row[k] for k in names if k != "n_epochs"}
    for key in ("grid", "config", "result"):
        data[key] = json.loads(data[key]) if data[key] is not None else None
    return StoredRun(**data, epochs=int(row["n_epochs"]))
