"""Checkpoints and result files written atomically and loaded safely.

Writes go to a temporary file in the same directory, are fsynced, then renamed over the target,
so a reader (or a resumed run) sees either the old complete file or the new complete file,
never a torn one. Checkpoints are loaded with ``torch.load(weights_only=True)``: a checkpoint
cannot execute code.

A checkpoint (format ``robustft-checkpoint-v2``) is the payload's ordinary ``torch.save`` zip,
streamed straight into the temporary file through a writer that hashes the bytes as they pass,
followed by a fixed-size trailer of :data:`TRAILER_BYTES` bytes naming the format, the zip's
length and its SHA-256 (``torch.load`` reads the zip and ignores the bytes after it). The state
is written once and never held in memory as bytes: the file is the state's size and saving
costs about a chunk of memory beyond the payload itself (the v1 format serialised the payload
to bytes, then pickled those bytes again inside a second ``torch.save`` with the hash: about
1.35 times the state on disk and several copies of it in memory). Files of the v1 format are
still read.

When the disk is full (or a quota is reached) while a file is written, the temporary file is
removed, the previous file stays as it was, and :class:`DiskFull` (a one-line
:class:`~robustft.errors.UserError`) names the directory and the space needed.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from robustft.errors import UserError, first_line, option
from robustft.utils.fsio import (
    _write_atomically,
    previous,
)

FORMAT = "robustft-checkpoint-v2"
FORMAT_V1 = "robustft-checkpoint-v1"  # {"format", "sha256", "payload": bytes}; read, not written
TRAILER_BYTES = 128
_CHUNK = 1 << 20


class _HashingWriter:
    """A write-only file object that passes bytes on to ``handle`` and hashes them on the way
    (``torch.save`` needs only ``write`` and ``flush``)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle, self.sha256, self.size = handle, hashlib.sha256(), 0

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.size += view.nbytes
        self.handle.write(view)
        return view.nbytes

    def flush(self) -> None:
        self.handle.flush()


def _trailer(size: int, digest: str) -> bytes:
    line = f"\n{FORMAT} size={size} sha256={digest}".ljust(TRAILER_BYTES - 1) + "\n"
    return line.encode("ascii")


def _read_trailer(handle: IO[bytes], source: Path) -> tuple[int, str] | None:
    """(zip length, SHA-256) from a v2 checkpoint's trailer; None when the file has none."""
    total = os.fstat(handle.fileno()).st_size
    if total < TRAILER_BYTES:
        return None
    handle.seek(total - TRAILER_BYTES)
    text = handle.read(TRAILER_BYTES).decode("ascii", errors="replace")
    if FORMAT not in text:
        return None
    words = text.split()
    fields = dict(w.partition("=")[::2] for w in words[1:])
    size, digest = fields.get("size", ""), fields.get("sha256", "")
    if (
        len(words) != 3
        or words[0] != FORMAT
        or not size.isdigit()
        or int(size) + TRAILER_BYTES != total
        or len(digest) != 64
    ):
        raise UserError(f"checkpoint {source}: corrupt or truncated (its trailer is damaged)")
    return int(size), digest


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) payload: about the size of its checkpoint."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Save ``payload`` (tensors, numbers, strings, lists, dicts) with an integrity hash.

    The payload is streamed once into a temporary file (``torch.save`` through a hashing
    writer), the trailer appended, the file fsynced and renamed over ``path``; an existing
    checkpoint at ``path`` becomes ``<path>.prev`` at that moment, so a fallback survives a
    corrupt newest file. The older ``.prev`` is deleted before writing: the disk holds at most
    two checkpoint files at any moment (the current one, and its ``.prev`` or the temporary
    file), so a run needs room for twice its checkpoint.

    Raises:
        DiskFull: the disk filled up while writing; ``path`` still holds the previous
            checkpoint.
    """
    import torch

    target = Path(path)

    def write(handle: IO[bytes]) -> None:
        writer = _HashingWriter(handle)
        torch.save(payload, writer)  # type: ignore[arg-type]
        handle.write(_trailer(writer.size, writer.sha256.hexdigest()))

    if target.exists():
        previous(target).unlink(missing_ok=True)
    needed = _tensor_bytes(payload) + (1 << 16)
    _write_atomically(target, write, needed=needed, keep_previous=True)


def _safe_load(data: IO[bytes], source: Path) -> Any:
    import torch

    try:
        return torch.load(data, map_location="cpu", weights_only=True)
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


def _chunks(handle: IO[bytes], size: int) -> Iterator[bytes]:
    handle.seek(0)
    left = size
    while left > 0:
        chunk = handle.read(min(_CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


def _load_v1(handle: IO[bytes], source: Path) -> Any:
    """The payload of a ``robustft-checkpoint-v1`` file (a ``torch.save`` of ``{"format",
    "sha256", "payload": bytes}``)."""
    handle.seek(0)
    wrapper = _safe_load(handle, source)
    if not isinstance(wrapper, dict) or wrapper.get("format") != FORMAT_V1:
        raise UserError(f"checkpoint {source}: not a robustft checkpoint (unknown format)")
    blob = wrapper.get("payload")
    if not isinstance(blob, bytes) or hashlib.sha256(blob).hexdigest() != wrapper.get("sha256"):
        raise UserError(f"checkpoint {source}: integrity hash mismatch (file damaged)")
    return _safe_load(io.BytesIO(blob), source)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and verify a checkpoint written by :func:`save_checkpoint` (or by robustft
    versions that wrote the v1 format).

    Raises:
        UserError: missing, corrupt, unsafe, or failing its integrity hash.
    """
    source = Path(path)
    if not source.is_file():
        raise UserError(f"checkpoint not found: {source}")
    with source.open("rb") as handle:  # one open file: a concurrent rename cannot swap it
        trailer = _read_trailer(handle, source)
        if trailer is None:
            payload = _load_v1(handle, source)
        else:
            size, digest = trailer
            sha256 = hashlib.sha256()
            for chunk in _chunks(handle, size):
                sha256.update(chunk)
            if sha256.hexdigest() != digest:
                raise UserError(f"checkpoint {source}: integrity hash mismatch (file damaged)")
            handle.seek(0)
            payload = _safe_load(handle, source)
    if not isinstance(payload, dict):
        raise UserError(f"checkpoint {source}: unexpected content")
    return payload


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
                f"no usable checkpoint: {err}; {prev_err}; start the run again with "
                f"{option('force')}"
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
