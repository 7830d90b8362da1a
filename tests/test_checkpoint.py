"""Atomic writes, integrity hashes, safe loading, fallback to the previous checkpoint."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from robustft.checkpoint import (
    atomic_write_json,
    load_checkpoint,
    load_checkpoint_with_fallback,
    save_checkpoint,
)
from robustft.errors import UserError


def test_round_trip_and_prev(tmp_path) -> None:
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    assert load_checkpoint(path)["epoch"] == 2
    assert load_checkpoint(str(path) + ".prev")["epoch"] == 1
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_corrupt_file_is_refused_then_falls_back(tmp_path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, {"epoch": 2})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data[: len(data) - 10]))
    with pytest.raises(UserError, match=r"corrupt|hash"):
        load_checkpoint(path)
    notes: list[str] = []
    assert load_checkpoint_with_fallback(path, notes.append)["epoch"] == 1
    assert notes and "falling back" in notes[0]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_does_not_run(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"payload": _Evil()}))
    with pytest.raises(UserError, match=r"unsafe|corrupt"):
        load_checkpoint(path)
    torch.save({"x": _Evil()}, tmp_path / "evil2.pt")
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "evil2.pt")
    assert not (tmp_path / "PWNED").exists()


def test_atomic_json_keeps_old_file_on_failure(tmp_path) -> None:
    path = tmp_path / "r.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})
    assert path.read_text().strip().startswith("{") and '"a": 1' in path.read_text()


def test_atomic_files_are_readable_like_ordinary_files(tmp_path) -> None:
    path = tmp_path / "r.json"
    atomic_write_json(path, {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
