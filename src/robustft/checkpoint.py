"""Checkpoints and result files written atomically and loaded safely.

Writes go to a temporary file in the same directory, are fsynced, then renamed over the target,
so a reader (or a resumed run) sees either the old complete file or the new complete file,
never a torn one. Checkpoints are loaded with ``torch.load(weights_only=True)``: a checkpoint
cannot execute code. Each checkpoint carries a SHA-256 of its payload, checked on load.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robustft.errors import UserError, first_line

FORMAT = "robustft-checkpoint-v1"


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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same dir, fsync, rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for everyone to read
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _serialize(obj: Any) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Save ``payload`` (tensors, numbers, strings, lists, dicts) with an integrity hash.

    The file is ``{"format", "sha256", "payload": bytes}``; the hash covers the serialised
    payload. If a checkpoint already exists at ``path`` it is kept as ``<path>.prev`` first, so
    a fallback survives a corrupt newest file.
    """
    blob = _serialize(payload)
    wrapper = {"format": FORMAT, "sha256": hashlib.sha256(blob).hexdigest(), "payload": blob}
    target = Path(path)
    if target.exists():
        os.replace(target, target.with_name(target.name + ".prev"))
    atomic_write_bytes(target, _serialize(wrapper))


def _safe_load(data: bytes, source: Path) -> Any:
    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"checkpoint {source}: refused to load unsafe or foreign content "
            f"({first_line(err)}); only robustft checkpoints (plain tensors and numbers) are "
            "accepted"
        ) from None
    except Exception as err:  # torch fails on garbage in many ways (IndexError, struct.error...)
        raise UserError(
            f"checkpoint {source}: corrupt or truncated ({err.__class__.__name__})"
        ) from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and verify a checkpoint written by :func:`save_checkpoint`.

    Raises:
        UserError: missing, corrupt, unsafe, or failing its integrity hash.
    """
    source = Path(path)
    if not source.is_file():
        raise UserError(f"checkpoint not found: {source}")
    wrapper = _safe_load(source.read_bytes(), source)
    if not isinstance(wrapper, dict) or wrapper.get("format") != FORMAT:
        raise UserError(f"checkpoint {source}: not a robustft checkpoint (unknown format)")
    blob = wrapper.get("payload")
    if not isinstance(blob, bytes) or hashlib.sha256(blob).hexdigest() != wrapper.get("sha256"):
        raise UserError(f"checkpoint {source}: integrity hash mismatch (file damaged)")
    payload = _safe_load(blob, source)
    if not isinstance(payload, dict):
        raise UserError(f"checkpoint {source}: unexpected content")
    return payload


def previous(path: str | Path) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint ``path`` replaced: ``<path>.prev``."""
    return Path(str(path) + ".prev")


def load_checkpoint_with_fallback(
    path: str | Path, on_fallback: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Load ``path``; if it is damaged, fall back to ``<path>.prev`` (reporting why). For
    resuming training, where an older checkpoint only means retraining an epoch.

    Raises:
        UserError: ``path`` is damaged and there is no usable ``.prev`` either.
    """
    try:
        return load_checkpoint(path)
    except UserError as err:
        prev = previous(path)
        if not prev.is_file():
            raise
        try:
            payload = load_checkpoint(prev)
        except UserError as prev_err:
            raise UserError(
                f"no usable checkpoint: {err}; {prev_err}; start the run again with --force"
            ) from None
        if on_fallback is not None:
            on_fallback(f"{err}; falling back to {prev.name}")
        return payload


def load_latest_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load ``path`` with no fallback: for evaluating or exporting a run, whose results describe
    its newest checkpoint, an older one must never stand in for it silently. When ``path`` is
    damaged, the message says whether ``<path>.prev`` is intact (and how to use it explicitly).

    Raises:
        UserError: ``path`` is missing or damaged.
    """
    try:
        return load_checkpoint(path)
    except UserError as err:
        prev = previous(path)
        if not prev.is_file() or not Path(path).is_file():
            raise
        try:
            epoch = load_checkpoint(prev).get("epoch")
        except UserError:
            raise UserError(
                f"{err}; its previous checkpoint {prev.name} is damaged too: no usable "
                "checkpoint, retrain the run (robustft train CONFIG --run-dir DIR --force)"
            ) from None
        raise UserError(
            f"{err}; the previous checkpoint (epoch {epoch}) is intact but older than the "
            f"run's results: to use it anyway, pass the file {prev} instead of the run"
        ) from None
