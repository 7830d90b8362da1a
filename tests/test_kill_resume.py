"""A real SIGKILL in the middle of `robustft train`, then --resume: same final numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robustft.config import load_config
from robustft.training.fit import fit

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def _train_cmd(run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "robustft.cli",
        "train",
        str(SMOKE),
        "--run-dir",
        str(run_dir),
        *extra,
    ]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_after_first_epoch_then_resume(tmp_path: Path) -> None:
    reference = fit(load_config(SMOKE), tmp_path / "reference")
    run_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        _train_cmd(run_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "result.json").exists()
    assert [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()] == [1]
    done = subprocess.run(_train_cmd(run_dir, "--resume"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    resumed = json.loads((run_dir / "result.json").read_text())
    for key in ("clean_accuracy", "robust_accuracy", "expected_robustness", "final_val_acc"):
        assert resumed[key] == reference[key], key
    assert not list(run_dir.rglob("*.tmp"))
