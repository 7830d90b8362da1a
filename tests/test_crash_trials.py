"""Crash safety in CI: the SIGKILL trials of ``scripts/crash_trials.py``, reduced.

One train trial of each kind (a kill mid-run, during a checkpoint write, during the final
evaluation), each checked on disk right after the kill, resumed and compared bit for bit with an
uninterrupted run; then one sweep trial (``--jobs 2``, two runs) killed, re-run and checked in
its SQLite database. The run is smaller than the script's default: MobileNetV3-small-0.5 (random
init; its 10 MB checkpoint still takes long enough to write for the poll to catch), 16x16
images, 3 epochs.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "crash_trials", ROOT / "scripts" / "crash_trials.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


ct = _load_script()
SHAPE = ct.Shape(
    model="timm:mobilenetv3_small_050", image_size=16, train_per_class=4, epochs=3, eval_examples=32
)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL") or not hasattr(os, "killpg"), reason="POSIX")
def test_sigkill_trials_resume_bitwise_and_sweep_db_consistent(tmp_path: Path) -> None:
    plans = [
        # epoch 1: killed before the first checkpoint exists, resume must start from scratch
        ct.TrainPlan("mid-run", fraction=0.5, epoch=1, double=False, second_fraction=0.0),
        ct.TrainPlan("checkpoint-write", fraction=0.5, epoch=1, double=False, second_fraction=0.0),
        ct.TrainPlan("final-eval", fraction=0.2, epoch=2, double=False, second_fraction=0.0),
    ]
    with ct.adopting_orphans():
        ctx = ct.run_reference(tmp_path, SHAPE)
        results = [ct.run_train_trial(ctx, i, len(plans), p) for i, p in enumerate(plans, 1)]
        sweep_ctx = ct.run_sweep_reference(ctx, seeds=(0,))
        plan = ct.SweepPlan(jobs=2, progress=0.5, offset=0.3, double=False, second_progress=0.0)
        results.append(ct.run_sweep_trial(sweep_ctx, 1, 1, plan))
    report = "\n".join(r.line() for r in results)
    print(report)
    assert all(r.passed for r in results), report
    assert all("killed at" in r.line() for r in results), report  # every kill happened
    kinds = [r.actual for r in results[:3]]
    assert "checkpoint-write" in kinds and "final-eval" in kinds, report
