"""Adaptive schedules: ``auto`` (convergence-triggered) and ``hinge(auto)`` (clean probe)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustft.config import load_config
from robustft.errors import UserError
from robustft.schedules import Auto, Hinge, HingeAuto, convergence_epoch, parse_schedule
from robustft.training.fit import fit

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def test_convergence_epoch_patience_and_tolerance() -> None:
    accs = [0.1, 0.5, 0.8, 0.81, 0.80, 0.82, 0.81, 0.80, 0.80]
    # best 0.80 at epoch 3; gains of at most 2 points for 5 epochs -> converged at epoch 8
    assert convergence_epoch(accs, patience=5, tolerance=0.02) == 8
    assert convergence_epoch(accs, patience=3, tolerance=0.0) == 9  # 0.82 at epoch 6 resets
    assert convergence_epoch([0.1, 0.2, 0.3, 0.4], patience=2, tolerance=0.02) is None


def test_auto_resolves_to_linear_ramp_to_the_end() -> None:
    auto = parse_schedule("auto")
    assert auto == Auto(patience=5, tolerance=0.02)
    assert auto.alpha(3, 20) == 0.0
    accs = [0.1, 0.5, 0.8, 0.81, 0.80, 0.82, 0.81, 0.80]
    resolved = auto.resolve(accs, 20)
    assert isinstance(resolved, Hinge) and str(resolved) == "hinge(t1=8,t2=20)"
    assert resolved.alpha(8, 20) == 0.0 and resolved.alpha(20, 20) == 1.0
    assert auto.resolve(accs[:5], 20) is auto  # not converged yet: stays at eps 0


def test_hinge_auto_text_forms_and_resolution() -> None:
    s = parse_schedule("hinge(auto)")
    assert isinstance(s, HingeAuto)
    assert parse_schedule(str(s)) == s == parse_schedule("hinge(t1=auto)")
    assert s.probe_epochs(20) == 10
    # 90% of the probe's final 0.9 is 0.81, first reached at epoch 4; T2 = 75% of 20 = 15
    assert str(s.resolve([0.2, 0.5, 0.8, 0.85, 0.88, 0.9], 20)) == "hinge(t1=4,t2=15)"
    with pytest.raises(UserError):
        parse_schedule("hinge(auto,t2=60)").check(50)
    with pytest.raises(UserError, match="patience"):
        parse_schedule("auto(patience=0)")


@pytest.mark.parametrize("spec", ["auto(patience=1,tolerance=0.5)", "hinge(auto)"])
def test_adaptive_schedules_train_and_record_their_choice(spec: str, tmp_path: Path) -> None:
    overrides = [f"attack.schedule={spec}", "train.epochs=3", "eval.max_examples=8"]
    result = fit(load_config(SMOKE, overrides), tmp_path / "run")
    assert result["schedule"] == str(parse_schedule(spec))
    resolved = result["schedule_resolved"]
    assert resolved.startswith("hinge(t1=")
    if spec == "hinge(auto)":
        probe = json.loads((tmp_path / "run" / "probe.json").read_text())
        assert probe["epochs"] == 2 and len(probe["val_acc"]) == 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    t1 = int(resolved.split("t1=")[1].split(",")[0])
    assert all(r["eps"] == 0 for r in rows if r["epoch"] <= t1)
