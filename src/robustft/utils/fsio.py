"""Files written atomically, and the clock of records.

Writes go to a temporary file in the same directory, are fsynced, then renamed over the target,
so a reader (or a resumed run) sees either the old complete file or the new complete file,
never a torn one. When the disk is full (or a quota is reached) while a file is written, the
temporary file is removed, the previous file stays as it was, and :class:`DiskFull` (a one-line
:class:`~robustft.errors.UserError`) names the directory and the space needed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from robustft.errors import UserError, option

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(UserError):
    """No space left (or quota exceeded) while writing a file; nothing was replaced."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _human(nbytes: float) -> str:
    """``41.2 MB``: a byte count for messages (decimal units)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(nbytes) < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"  # pragma: no cover (the loop returns)


def _disk_full(target: Path, needed: int | None) -> DiskFull:
    """The one-line error for a write that ran out of space: where, how much, what to do."""
    try:
        free: int | None = shutil.disk_usage(target.parent).free
    except OSError:
        free = None
    need = f"about {_human(needed)}" if needed else "more space"
    have = f", {_human(free)} free" if free is not None else ""
    return DiskFull(
        f"disk full: cannot write {target.name} in {target.parent} (needs {need}{have}); free "
        f"space there, then rerun (a run resumes with {option('resume')}; the previous file is "
        "kept)"
    )


def _write_atomically(
    target: Path,
    write: Callable[[IO[bytes]], object],
    *,
    needed: int | None,
    keep_previous: bool = False,
) -> None:
    """Call ``write(handle)`` on a temporary file next to ``target``, fsync it, then rename it
    over ``target`` (first moving an existing ``target`` to ``<target>.prev`` when
    ``keep_previous``). On any failure the temporary file is removed and ``target`` is left as
    it was.

    Raises:
        DiskFull: no space left or quota exceeded (``needed``: the bytes the file needs).
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        if _out_of_space(err):
            raise _disk_full(target, needed) from None
        raise
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for everyone to read
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous and target.exists():
            os.replace(target, previous(target))
        os.replace(tmp, target)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if _out_of_space(err):
            raise _disk_full(target, needed) from None
        raise
    _fsync_dir(target.parent)


def _out_of_space(err: BaseException | None) -> bool:
    """Whether ``err`` or an exception it was raised from is ENOSPC or EDQUOT (``torch.save``
    re-raises a failed write of its file object as a RuntimeError)."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same dir, fsync, rename).

    Raises:
        DiskFull: the disk filled up; ``path`` keeps its old content.
    """
    _write_atomically(Path(path), lambda handle: handle.write(data), needed=len(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def now() -> str:
    """The current UTC time in ISO 8601 (seconds), as stored in ``started``/``finished``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def previous(path: str | Path) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint ``path`` replaced: ``<path>.prev``."""
    return Path(str(path) + ".prev")
