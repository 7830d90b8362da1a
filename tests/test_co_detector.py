"""The early catastrophic-overfitting detector (issue 22): its signals in the metrics rows, its
rule on recorded rows, gradient alignment, the monitor sample's bad input and the
leave-one-setting-out study script on synthetic run directories."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

from conftest import TinyCNN
from robustft import cli
from robustft.config import load_config
from robustft.monitor import (
    ALIGN_KEY,
    DETECTED_KEY,
    DETECTOR,
    SIGNALS,
    OverfitRule,
    derived_signals,
    detected_onset,
    overfit_onset,
    sample_signals,
)
from robustft.report.collect import _epoch_record
from robustft.run.result import diagnose
from robustft.training.evaluate import check_monitor_sample
from robustft.units import format_eps

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
TINY = [
    "model.name=timm:test_efficientnet",
    "model.pretrained=false",
    "data.image_size=16",
    "data.max_train_per_class=2",
    "eval.max_examples=8",
    "eval.steps=1",
]


def _load_study() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "co_detector_study", ROOT / "scripts" / "co_detector_study.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["co_detector_study"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_gradient_alignment_is_one_for_a_linear_model_and_lower_for_a_nonlinear_one() -> None:
    """The cosine between input gradients at x and at a random point of the eps-ball: a linear
    model's gradient barely moves (only the softmax does), a ReLU network's turns."""
    from conftest import digits_tensors

    x, y = digits_tensors(16)
    data = TensorDataset(x[:64], y[:64])
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
    torch.manual_seed(0)
    cnn = TinyCNN()
    kwargs: dict[str, Any] = {"norm": "linf", "examples": 64, "seed": 0}
    aligned = sample_signals(linear, data, 8 / 255, **kwargs)[ALIGN_KEY]
    bent = sample_signals(cnn, data, 8 / 255, **kwargs)[ALIGN_KEY]
    assert aligned is not None and aligned > 0.999
    assert bent is not None and bent < 0.95
    wider = sample_signals(cnn, data, 32 / 255, **kwargs)[ALIGN_KEY]
    assert wider is not None and wider < bent  # the farther the point, the less aligned
    assert cnn.training  # the measurement restores the mode


def test_a_monitor_sample_larger_than_the_validation_split_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """digits' validation split holds 216 images: a 217-image monitor sample is bad input, one
    line and exit 2 before any epoch; 216 is accepted, and a run whose monitor is off (PGD
    training, monitor.co auto) is not refused."""
    run = tmp_path / "r"
    base = ["train", str(SMOKE), "--run-dir", str(run), "--device", "cpu"]
    sets = [a for s in [*TINY, "attack.name=fgsm-rs"] for a in ("--set", s)]
    assert cli.main([*base, *sets, "--set", "monitor.examples=217"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert err.startswith("robustft: error: config monitor.examples: 217 is larger than")
    assert "(216 images)" in err and "at most 216" in err
    assert not (run / "metrics.jsonl").exists()
    config = load_config(SMOKE, [*TINY, "attack.name=fgsm-rs", "monitor.examples=216"])
    check_monitor_sample(config, 216)  # the whole split is a valid sample
    default = load_config(SMOKE, [*TINY, "attack.name=fgsm-rs"])  # monitor.examples: 128
    check_monitor_sample(default, 24)  # the default is "at most 128": a small split is whole
    base[3] = str(tmp_path / "pgd")
    pgd = [a for s in TINY for a in ("--set", s)]
    assert cli.main([*base, *pgd, "--set", "monitor.examples=217"]) == 0, capsys.readouterr().err


def test_monitored_rows_carry_the_detector_signals(tmp_path: Path) -> None:
    """A tiny monitored run records every candidate signal and the detector's flag."""
    run = tmp_path / "r"
    args = ["train", str(SMOKE), "--run-dir", str(run), "--device", "cpu"]
    sets = [*TINY, "attack.name=fgsm-rs", "monitor.examples=16"]
    assert cli.main([*args, *(a for s in sets for a in ("--set", s))]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "co_clean_acc" not in rows[0]  # epoch 1 trains at eps 0: nothing monitored
    row = rows[1]
    for key in ("co_pgd_acc", "co_fgsm_acc", "co_clean_acc"):
        assert 0 <= row[key] <= 1
    assert row["co_gap"] == pytest.approx(row["co_fgsm_acc"] - row["co_pgd_acc"])
    assert row["co_fgsm_above_clean"] == pytest.approx(row["co_fgsm_acc"] - row["co_clean_acc"])
    ratio = row["co_pgd_fgsm_ratio"]
    assert ratio is None or ratio == pytest.approx(row["co_pgd_acc"] / row["co_fgsm_acc"])
    assert -1 <= row[ALIGN_KEY] <= 1
    assert row[DETECTED_KEY] == DETECTOR.fires(rows[:2])
    assert set(SIGNALS) <= set(row)


def _run_dir(
    root: Path,
    name: str,
    *,
    per_class: int,
    eps: float,
    attack: str,
    robust: float,
    monitored: list[tuple[float, float]],
) -> Path:
    """A finished run directory: config, result, curve at [0, eps] and metrics rows with the
    monitor's (PGD, FGSM) accuracies from epoch 1 (no clean accuracy or alignment: an older
    run, whose derived signals the study fills in)."""
    path = root / name
    path.mkdir(parents=True)
    steps = 7 if attack == "pgd" else None
    config = {
        "name": name,
        "data": {"name": "digits", "max_train_per_class": per_class},
        "attack": {"name": attack, "steps": steps, "eps": format_eps(eps)},  # as config.yaml
        "model": {"mode": "full"},
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "result.json").write_text(json.dumps({"name": name, "robust_accuracy": robust}))
    curve = {"epsilons": [0.0, eps], "accuracy": [0.9, robust]}
    (path / "robustness.json").write_text(json.dumps(curve))
    rows = [
        {"epoch": i + 1, "eps": eps, "val_acc": 0.9, "co_pgd_acc": p, "co_fgsm_acc": f}
        for i, (p, f) in enumerate(monitored)
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_study_chooses_thresholds_on_the_other_settings_and_reports_held_out_misses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three settings, each a PGD-7 run and an FGSM-RS run that overfit (robust far below half
    of PGD-7's, FGSM accuracy high); in the third the FGSM-RS run's PGD/FGSM ratio (0.5) and gap
    (0.4) are milder than the thresholds the other two settings give (0.35, 0.46): held out, it
    is missed. A fourth setting has no PGD-7 run (unlabelled), and an FGSM run whose FGSM
    accuracy stays low is not CO."""
    study = _load_study()
    eps4, eps8 = 4 / 255, 8 / 255
    _run_dir(tmp_path, "a-pgd", per_class=20, eps=eps4, attack="pgd", robust=0.5,
             monitored=[(0.3, 0.4), (0.45, 0.5)])  # fmt: skip
    _run_dir(tmp_path, "a-fgsm", per_class=20, eps=eps4, attack="fgsm-rs", robust=0.05,
             monitored=[(0.04, 0.8)])  # fmt: skip
    _run_dir(tmp_path, "b-pgd", per_class=20, eps=eps8, attack="pgd", robust=0.4,
             monitored=[(0.35, 0.5)])  # fmt: skip
    _run_dir(tmp_path, "b-fgsm", per_class=20, eps=eps8, attack="fgsm-rs", robust=0.02,
             monitored=[(0.08, 0.8)])  # fmt: skip
    _run_dir(tmp_path, "c-pgd", per_class=100, eps=eps8, attack="pgd", robust=0.6,
             monitored=[(0.325, 0.5)])  # fmt: skip
    _run_dir(tmp_path, "c-fgsm", per_class=100, eps=eps8, attack="fgsm-rs", robust=0.05,
             monitored=[(0.4, 0.8)])  # fmt: skip
    _run_dir(tmp_path, "c-weak", per_class=100, eps=eps8, attack="fgsm", robust=0.05,
             monitored=[(0.01, 0.1)])  # fmt: skip
    _run_dir(tmp_path, "d-fgsm", per_class=100, eps=16 / 255, attack="fgsm-rs", robust=0.0,
             monitored=[(0.0, 0.9)])  # fmt: skip
    out = tmp_path / "study.json"
    assert study.main([str(tmp_path), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    result = json.loads(out.read_text())
    labels = {Path(r["path"]).name: r["label"] for r in result["per_run"]}
    assert labels == {
        "a-pgd": False, "a-fgsm": True, "b-pgd": False, "b-fgsm": True,
        "c-pgd": False, "c-fgsm": True, "c-weak": False, "d-fgsm": None,
    }  # fmt: skip
    flags = {Path(r["path"]).name: r["flagged"] for r in result["per_run"]}
    assert flags["c-fgsm"] is False and flags["a-fgsm"] and flags["b-fgsm"]
    assert not any(flags[n] for n in ("a-pgd", "b-pgd", "c-pgd", "c-weak"))
    assert flags["d-fgsm"] is None  # unlabelled: in no fold
    held = result["held_out"]
    assert (held["tp"], held["fp"], held["fn"], held["tn"]) == (2, 0, 1, 4)
    assert held["precision"] == 1.0 and held["recall"] == pytest.approx(2 / 3)
    assert "held-out precision 100.0%, recall 66.7% (TP 2, FP 0, FN 1, TN 4; 7 labelled runs " \
        "in 3 settings)" in text  # fmt: skip
    assert "unlabelled" in text
    ship = result["ship"]
    assert ship["signal"] in ("co_pgd_fgsm_ratio", "co_gap")
    # the fold thresholds: between the PGD-7 and the overfit values of the other settings
    if ship["signal"] == "co_pgd_fgsm_ratio":
        assert 0.1 < ship["threshold"] < 0.6
    assert study.main([str(tmp_path / "empty")]) == 2
    # a reference recorded elsewhere labels the setting without a PGD-7 run
    given = ["--reference", "digits:100:16/255:full=0.3", "--json", str(out)]
    assert study.main([str(tmp_path), *given]) == 0
    labels = {Path(r["path"]).name: r["label"] for r in json.loads(out.read_text())["per_run"]}
    assert labels["d-fgsm"] is True


# Recorded monitor values (co_pgd_acc, co_fgsm_acc, co_clean_acc, co_grad_align) per epoch of
# four real runs of configs/reproduction/paper_b_data.yaml and fast_safe_pilot.yaml (seed 0,
# 128 validation images, epochs 1..n): FGSM-RS with 100 images per class at 4 and 8/255
# (catastrophic overfitting: robust accuracy 21.5% and 9.5% against PGD-7's 69.0% and 58.0%),
# PGD-7 at 100 per class and 4/255 (healthy: it resists PGD from epoch 5 on) and PGD-7 at 20
# per class and 4/255 (never robust: 2.0%).
FGSM_RS_100_4 = [
    (0.0, 0.1719, 0.25, 0.0325),
    (0.0156, 0.4688, 0.6406, 0.03),
    (0.0078, 0.6328, 0.8125, 0.09),
    (0.0078, 0.7656, 0.8516, 0.0953),
    (0.0234, 0.8281, 0.8984, 0.1111),
    (0.0547, 0.8281, 0.8828, 0.1065),
    (0.0938, 0.8594, 0.9219, 0.098),
    (0.1094, 0.8359, 0.8984, 0.1125),
    (0.1016, 0.875, 0.9062, 0.1213),
    (0.0781, 0.8984, 0.9453, 0.1239),
    (0.1094, 0.8984, 0.9219, 0.1075),
    (0.125, 0.8906, 0.9141, 0.11),
    (0.1094, 0.8984, 0.9062, 0.1097),
    (0.1094, 0.8906, 0.8984, 0.115),
    (0.1406, 0.8906, 0.9297, 0.0985),
]
FGSM_RS_100_8 = [
    (0.0, 0.1406, 0.1953, 0.0084),
    (0.0, 0.2422, 0.3281, 0.0233),
    (0.0, 0.4062, 0.4766, 0.0323),
    (0.0, 0.4375, 0.4453, 0.0219),
    (0.0, 0.3828, 0.4141, 0.0294),
    (0.0, 0.5312, 0.5391, 0.0264),
    (0.0234, 0.5234, 0.5391, 0.0167),
    (0.0, 0.7031, 0.7266, 0.0159),
    (0.0, 0.6328, 0.6562, 0.0257),
    (0.0, 0.6797, 0.6953, 0.0304),
    (0.0, 0.6562, 0.6719, 0.0168),
    (0.0234, 0.6875, 0.7031, 0.0203),
    (0.0391, 0.6953, 0.6953, 0.0246),
    (0.0078, 0.625, 0.6484, 0.0245),
    (0.0469, 0.6562, 0.6719, 0.0231),
]
PGD7_100_4 = [
    (0.0078, 0.2344, 0.3516, 0.0111),
    (0.0234, 0.4219, 0.5625, 0.0095),
    (0.0078, 0.6016, 0.7344, 0.0238),
    (0.1406, 0.7656, 0.8281, 0.0188),
    (0.2812, 0.8672, 0.9297, 0.0535),
    (0.4531, 0.8984, 0.9219, 0.0732),
    (0.5391, 0.8984, 0.9297, 0.0808),
    (0.5391, 0.8984, 0.9531, 0.1063),
    (0.6484, 0.9297, 0.9609, 0.1049),
    (0.6406, 0.9219, 0.9609, 0.1212),
    (0.7031, 0.9219, 0.9531, 0.1217),
    (0.7031, 0.9297, 0.9531, 0.1442),
    (0.7031, 0.9297, 0.9531, 0.1306),
    (0.7109, 0.9297, 0.9453, 0.1316),
    (0.6875, 0.9375, 0.9688, 0.1102),
]
PGD7_20_4 = [
    (0.0, 0.0078, 0.2031, 0.1528),
    (0.0, 0.1094, 0.2344, 0.1104),
    (0.0, 0.1719, 0.3828, 0.0807),
    (0.0, 0.2031, 0.4141, 0.0616),
    (0.0, 0.2891, 0.4141, 0.0393),
    (0.0, 0.3047, 0.4531, 0.0304),
    (0.0, 0.2969, 0.5625, 0.0326),
    (0.0, 0.2656, 0.5781, 0.0321),
    (0.0, 0.3125, 0.5312, 0.022),
    (0.0078, 0.3281, 0.5469, 0.0231),
    (0.0156, 0.3438, 0.5547, 0.0339),
    (0.0078, 0.3359, 0.5938, 0.0197),
    (0.0078, 0.3906, 0.5781, 0.0271),
    (0.0234, 0.3438, 0.5469, 0.032),
    (0.0156, 0.3438, 0.5859, 0.026),
]


def _rows(values: list[tuple[float, float, float, float]], eps: float) -> list[dict[str, Any]]:
    keys = ("co_pgd_acc", "co_fgsm_acc", "co_clean_acc", "co_grad_align")
    rows = []
    for epoch, measured in enumerate(values, start=1):
        row: dict[str, Any] = {"epoch": epoch, "eps": eps, "val_acc": 0.9}
        row.update(zip(keys, measured))
        row.update(derived_signals(row["co_pgd_acc"], row["co_fgsm_acc"], row["co_clean_acc"]))
        rows.append(row)
    return rows


def test_the_detector_flags_recorded_overfit_runs_and_not_recorded_pgd7_runs() -> None:
    """The recorded FGSM-RS runs overfit from their first epochs and the collapse rule never
    flags them (PGD accuracy never had 10% to collapse from); the detector does, at epochs 6
    and 9 of 15. It flags neither PGD-7 run, although in its epochs 3-5 the healthy
    one also resists FGSM (60-87%) far better than PGD (1-28%): one matching epoch is not
    enough."""
    co_4, co_8 = _rows(FGSM_RS_100_4, 4 / 255), _rows(FGSM_RS_100_8, 8 / 255)
    healthy, weak = _rows(PGD7_100_4, 4 / 255), _rows(PGD7_20_4, 4 / 255)
    for rows in (co_4, co_8):
        assert overfit_onset(rows, OverfitRule()) is None
        onset = detected_onset(rows)
        assert onset is not None and onset <= 9  # of 15 epochs
    assert detected_onset(co_4) == 6 and detected_onset(co_8) == 9
    assert detected_onset(healthy) is None and detected_onset(weak) is None
    assert detected_onset(healthy, replace(DETECTOR, epochs=1)) == 3


def test_the_detector_finding_reaches_result_and_report() -> None:
    """diagnose (result.json's findings) and the report's rows (EpochRecord) both give the
    co_detected finding with its epoch; a healthy run gets none."""
    rows = _rows(FGSM_RS_100_4, 4 / 255)
    onset = detected_onset(rows)
    result = {"num_classes": 10, "eps_g": 4 / 255, "clean_accuracy": 0.96}
    config = {"attack": {"name": "fgsm-rs"}, "monitor": {}}
    for history in (rows, [_epoch_record(r).as_row() for r in rows]):
        findings = {f.code: f for f in diagnose(result, history, config)}
        assert f"detected at epoch {onset} " in findings["co_detected"].message
        assert "multi-step attack" in findings["co_detected"].suggestion
    healthy = _rows(PGD7_100_4, 4 / 255)
    assert "co_detected" not in {f.code for f in diagnose(result, healthy, config)}
