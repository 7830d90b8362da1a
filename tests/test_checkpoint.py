"""Atomic writes, integrity hashes, safe loading, fallback to the previous checkpoint; the
streamed v2 format, v1 files still read, a full disk."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from robustft.errors import UserError
from robustft.run import checkpoint
from robustft.run.checkpoint import (
    FORMAT_V1,
    TRAILER_BYTES,
    load_checkpoint,
    load_checkpoint_with_fallback,
    save_checkpoint,
)
from robustft.utils.fsio import DiskFull, atomic_write_json


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


# ------------------------------------------------------------ v2 format, v1 files, disk full


def save_v1(path: Path, payload: dict[str, Any]) -> None:
    """A checkpoint as robustft 0.1 wrote it (format v1: the payload's bytes wrapped)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    blob = buffer.getvalue()
    wrapper = {"format": FORMAT_V1, "sha256": hashlib.sha256(blob).hexdigest(), "payload": blob}
    buffer = io.BytesIO()
    torch.save(wrapper, buffer)
    path.write_bytes(buffer.getvalue())


def test_v2_file_is_the_state_once_plus_a_trailer(tmp_path: Path) -> None:
    payload = {"epoch": 3, "w": torch.randn(250_000), "opt": {"m": torch.randn(250_000)}}
    path = tmp_path / "last.pt"
    save_checkpoint(path, payload)
    size = path.stat().st_size
    assert 2_000_000 < size < 2_000_000 + 8192  # 2 MB of tensors, a few kB of zip and trailer
    tail = path.read_bytes()[-TRAILER_BYTES:].decode().split()
    assert tail[0] == "robustft-checkpoint-v2" and tail[1] == f"size={size - TRAILER_BYTES}"
    digest = hashlib.sha256(path.read_bytes()[: size - TRAILER_BYTES]).hexdigest()
    assert tail[2] == f"sha256={digest}"
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["opt"]["m"], payload["opt"]["m"])


def test_v1_files_are_still_read(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_v1(path, {"epoch": 7, "w": torch.arange(5)})
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 7 and torch.equal(loaded["w"], torch.arange(5))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"corrupt|hash"):
        load_checkpoint(path)


def test_flipped_byte_and_truncation_of_v2_are_caught(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.randn(1000)})
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01
    path.write_bytes(bytes(flipped))
    with pytest.raises(UserError, match="integrity hash mismatch"):
        load_checkpoint(path)
    path.write_bytes(good[:-1])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_checkpoint(path)


def _fill_disk_after(monkeypatch: pytest.MonkeyPatch, nbytes: int) -> None:
    """Make checkpoint writes fail with ENOSPC once ``nbytes`` have been written."""
    real = checkpoint._HashingWriter.write

    def write(self: Any, data: Any) -> int:
        if self.size + memoryview(data).nbytes > nbytes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(checkpoint._HashingWriter, "write", write)


def test_disk_full_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(1000)})
    save_checkpoint(path, {"epoch": 2, "w": torch.ones(1000)})
    _fill_disk_after(monkeypatch, 1000)
    with pytest.raises(DiskFull) as info:
        save_checkpoint(path, {"epoch": 3, "w": torch.ones(100_000)})
    message = str(info.value)
    assert "\n" not in message and f"cannot write last.pt in {path.parent}" in message
    assert "needs about 465.5 kB" in message and "free" in message  # 400 kB + 64 KiB margin
    assert load_checkpoint(path)["epoch"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left
    atomic_write_json(tmp_path / "r.json", {"a": 1})
    real_fdopen = os.fdopen

    def full_disk_fdopen(fd: int, mode: str) -> Any:
        handle = real_fdopen(fd, mode)
        handle.write = _raise_enospc
        return handle

    monkeypatch.setattr(os, "fdopen", full_disk_fdopen)
    with pytest.raises(DiskFull, match=r"cannot write r.json in .* \(needs about 13 B"):
        atomic_write_json(tmp_path / "r.json", {"a": 2})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}


def _raise_enospc(*args: object) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


TINY = [
    "--set=model.name=timm:test_efficientnet",
    "--set=model.pretrained=false",
    "--set=data.image_size=16",
    "--set=data.max_train_per_class=2",
    "--set=train.threads=1",
    "--set=eval.max_examples=8",
    "--set=eval.steps=1",
]


def test_train_on_a_full_disk_ends_in_one_line_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The epoch-2 checkpoint hits a full disk: one line, exit 2, epoch 1 kept; once space is
    back (and the kept checkpoint rewritten in the v1 format, as an old run's would be),
    --resume finishes with the numbers of an uninterrupted run."""
    from robustft import cli
    from robustft.training import fit as train

    smoke = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
    assert cli.main(["train", smoke, "--run-dir", str(tmp_path / "ref"), *TINY]) == 0
    reference = json.loads((tmp_path / "ref" / "result.json").read_text())
    saves = {"n": 0}
    real_save = train.save_checkpoint

    def counting_save(path: Any, payload: dict[str, Any]) -> None:
        saves["n"] += 1
        if saves["n"] == 2:
            _fill_disk_after(monkeypatch, 4096)
        real_save(path, payload)

    monkeypatch.setattr(train, "save_checkpoint", counting_save)
    run = tmp_path / "run"
    capsys.readouterr()
    assert cli.main(["train", smoke, "--run-dir", str(run), *TINY]) == 2
    *progress, line = capsys.readouterr().err.splitlines()  # progress lines, then the error
    assert all(p.startswith("[smoke] epoch 1 ") for p in progress), progress
    assert line.startswith(f"robustft: error: disk full: cannot write last.pt in {run}/checkpoints")
    assert "needs about" in line and "--resume" in line
    last = run / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 1 and not list(run.rglob("*.tmp"))
    monkeypatch.undo()
    save_v1(last, load_checkpoint(last))
    assert cli.main(["train", smoke, "--run-dir", str(run), "--resume", *TINY]) == 0
    resumed = json.loads((run / "result.json").read_text())
    for key in ("clean_accuracy", "robust_accuracy", "expected_robustness", "final_val_acc"):
        assert resumed[key] == reference[key], key


def _can_mount_tmpfs(where: Path) -> bool:
    """Whether ``unshare -rm`` (a private user and mount namespace) can mount a tmpfs here:
    root, or unprivileged user namespaces allowed."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(where))}"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", probe], capture_output=True)
    return done.returncode == 0


@pytest.mark.slow
def test_a_real_small_filesystem_fills_then_the_run_resumes(tmp_path: Path) -> None:
    """The issue's scenario on a real filesystem: a 2 MB tmpfs (in a private mount namespace)
    holds epoch 1's 1.3 MB checkpoint but not epoch 2's; the run ends with the one line and
    exit code 2, epoch 1's checkpoint intact; grown to 16 MB, --resume finishes the run."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if not _can_mount_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs (needs root or unprivileged user namespaces)")
    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    train = [sys.executable, "-m", "robustft", "train", str(smoke), "--run-dir", f"{mnt}/run"]
    train += ["--device", "cpu", *TINY]
    check = [
        sys.executable,
        "-c",
        "import sys; from robustft.run.checkpoint import load_checkpoint; "
        "print('epoch', load_checkpoint(sys.argv[1])['epoch'])",
        f"{mnt}/run/checkpoints/last.pt",
    ]
    q = shlex.join
    script = "\n".join(
        [
            f"mount -t tmpfs -o size=2m tmpfs {q([str(mnt)])}",
            f"{q(train)}; echo exit=$?",
            f"{q(check)}",
            f"mount -o remount,size=16m {q([str(mnt)])}",
            f"{q([*train, '--resume'])} >/dev/null; echo exit=$?",
            f"ls {q([str(mnt)])}/run",
        ]
    )
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True)
    out = done.stdout + done.stderr
    errors = [line for line in out.splitlines() if line.startswith("robustft: error:")]
    assert len(errors) == 1 and "Traceback" not in out, out
    assert errors[0].startswith(f"robustft: error: disk full: cannot write last.pt in {mnt}/run"), (
        out
    )
    assert "needs about 1.3 MB" in errors[0], out
    assert out.count("exit=2") == 1 and "epoch 1\n" in out and out.count("exit=0") == 1, out
    assert "result.json" in out.split("exit=0")[1], out
