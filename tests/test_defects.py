"""Defects a new user found (biased subsets, export metadata, silent checkpoint fallbacks, two
writers in one run dir, escaping names, blocked retries, tracebacks, misleading messages); each
test failed before its fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import StopAfterFirstEpoch
from robustft import cli
from robustft.config import build_config
from robustft.models import build_model
from robustft.run.checkpoint import save_checkpoint

CLASSES = ("cat", "dog", "eel")
ROOT = Path(__file__).resolve().parents[1]


def image_folder(root: Path, per_class: int = 6, size: int = 12) -> Path:
    """``root/{train,test}/<class>/img*.png``: random images, ``per_class`` per class and split."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"img{i}.png")
    return root


def always_predicts(label: int, data_name: str, path: Path, image_size: int = 32) -> Path:
    """A checkpoint of efficientnet_lite0 whose head always answers ``label``."""
    config = build_config({"data": {"name": data_name, "image_size": image_size}})
    torch.manual_seed(0)
    model = build_model(config.model.name, num_classes=len(CLASSES), pretrained=False)
    state = model.state_dict()
    state["net.classifier.weight"].zero_()
    state["net.classifier.bias"].copy_(torch.tensor([0.0, 0.0, 0.0]))
    state["net.classifier.bias"][label] = 100.0
    payload = {
        "config": config.to_dict(),
        "run_id": config.run_id(),
        "model": state,
        "num_classes": len(CLASSES),
        "class_names": list(CLASSES),
        "epoch": 1,
    }
    save_checkpoint(path, payload)
    return path


def test_max_examples_is_a_stratified_sample_not_the_first_n(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 1: the test split of an image folder is sorted by class, so the first 6 examples
    were all 'cat' and a model that always answers 'eel' scored 0% instead of its 1/3."""
    folder = image_folder(tmp_path / "pets")
    ckpt = always_predicts(2, f"imagefolder:{folder}", tmp_path / "last.pt")
    out = tmp_path / "curve.json"
    args = ["eval", str(ckpt), "--attack", "fgsm", "--eps-max", "1/255", "--max-examples", "6"]
    code = cli.main([*args, "--device", "cpu", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    curve = json.loads(out.read_text())
    assert curve["accuracy"][0] == pytest.approx(1 / 3)
    chosen = curve["examples"]
    assert chosen["method"] == "stratified" and chosen["n"] == 6 and chosen["of"] == 18
    labels = [i // 6 for i in chosen["indices"]]  # the test split is sorted by class
    assert sorted(labels) == [0, 0, 1, 1, 2, 2]


def test_export_records_the_trained_input_size(tmp_path: Path) -> None:
    """Defect 2: a model trained at 32 px was exported with input_size 224 (the backbone's
    pretraining size)."""
    from robustft.run.export import read_metadata

    ckpt = always_predicts(0, "digits", tmp_path / "last.pt", image_size=32)
    out = tmp_path / "model.safetensors"
    assert cli.main(["export", str(ckpt), "--out", str(out)]) == 0
    meta = read_metadata(out)
    assert meta["input_size"] == "32"
    assert meta["pretrained_input_size"] == "224"


def test_resume_keeps_the_thread_count_the_run_started_with(tmp_path: Path) -> None:
    """Defect 3: float sums depend on the thread count; a run started with 1 thread and resumed
    in a process with 2 must still end as the 1-thread run does, and say how many it used."""
    from robustft.config import load_config
    from robustft.run.checkpoint import load_checkpoint
    from robustft.training.fit import cpu_threads, fit

    config = load_config(ROOT / "configs" / "smoke.yaml")
    with cpu_threads(1):
        reference = fit(config, tmp_path / "one-thread")
        with pytest.raises(KeyboardInterrupt):
            fit(config, tmp_path / "resumed", callbacks=StopAfterFirstEpoch())
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["threads"] == 1
    with cpu_threads(2):
        resumed = fit(config, tmp_path / "resumed", resume=True)
        assert torch.get_num_threads() == 2  # restored after the run
    assert reference["threads"] == resumed["threads"] == 1
    for key in ("clean_accuracy", "robust_accuracy", "expected_robustness", "final_val_acc"):
        assert resumed[key] == reference[key], key
    rows = [
        [json.loads(line)["train_loss"] for line in (tmp_path / d / "metrics.jsonl").open()]
        for d in ("one-thread", "resumed")
    ]
    assert rows[0] == rows[1]


def test_train_threads_pins_the_count(tmp_path: Path) -> None:
    from robustft.config import load_config
    from robustft.training.fit import fit

    config = load_config(
        ROOT / "configs" / "smoke.yaml", ["train.threads=1", "eval.max_examples=8"]
    )
    assert fit(config, tmp_path / "r")["threads"] == 1


def test_eval_and_export_refuse_an_older_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 4: with last.pt corrupt, export and eval used last.pt.prev silently."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    always_predicts(0, "digits", folder / "last.pt")
    always_predicts(1, "digits", folder / "last.pt")  # the first becomes last.pt.prev
    (folder / "last.pt").write_bytes(b"torn")
    out = tmp_path / "a" / "m.safetensors"  # each export in a folder of its own (model card)
    assert cli.main(["export", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "corrupt" in err and "last.pt.prev" in err, err
    assert not out.exists()
    assert cli.main(["eval", str(tmp_path), "--max-examples", "4", "--device", "cpu"]) == 2
    assert "intact but older" in capsys.readouterr().err
    # asked for explicitly, the previous checkpoint is used
    assert cli.main(["export", str(folder / "last.pt.prev"), "--out", str(out)]) == 0
    capsys.readouterr()
    # both damaged: no advice to use .prev
    (folder / "last.pt.prev").write_bytes(b"torn too")
    assert cli.main(["export", str(tmp_path), "--out", str(tmp_path / "b" / "n.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "damaged too" in err and "pass the file" not in err, err


def _train(run_dir: Path, *extra: str) -> list[str]:
    smoke = str(ROOT / "configs" / "smoke.yaml")
    return [sys.executable, "-m", "robustft.cli", "train", smoke, "--run-dir", str(run_dir), *extra]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_second_process_cannot_train_into_a_locked_run_dir(tmp_path: Path) -> None:
    """Defect 5: two `robustft train` processes ran to the end in one run directory. The lock
    is refused while its owner lives, and free again once the owner is SIGKILLed."""
    run_dir = tmp_path / "r"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        _train(run_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if (run_dir / "config.yaml").is_file():  # written once the lock is held
                break
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second could start"
        second = subprocess.run(
            _train(run_dir, "--resume"), env=env, capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1 and f"pid {first.pid}" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    third = subprocess.run(
        _train(run_dir, "--resume"), env=env, capture_output=True, text=True, timeout=300
    )
    assert third.returncode == 0, third.stderr
    assert (run_dir / "result.json").is_file()


def test_a_run_name_cannot_escape_the_runs_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 6: name: ../../x wrote outside runs/."""
    config = tmp_path / "c.yaml"
    config.write_text("name: ../../x\n")
    assert cli.main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustft: error: config name:") and "letters, digits" in err


def test_a_failed_start_does_not_block_its_retry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 7: a run failing during setup left config.yaml behind, and the retry with the fix
    was refused as 'a different config'; configs that do differ are named key by key."""
    folder = image_folder(tmp_path / "pets", per_class=6)
    (folder / "train" / "cat" / "img0.png").write_bytes(b"\x89PNG truncated")
    run_dir = tmp_path / "run"
    base = [
        "train",
        str(ROOT / "configs" / "smoke.yaml"),
        "--run-dir",
        str(run_dir),
        "--set",
        f"data.name=imagefolder:{folder}",
    ]
    assert cli.main(base) == 2
    assert "img0.png" in capsys.readouterr().err
    assert not run_dir.exists()
    assert cli.main([*base, "--set", "data.bad_images=skip"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert cli.main([*base, "--set", "data.bad_images=skip", "--set", "train.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "train.lr: 0.001 -> 0.5" in err and err.count("\n") == 1, err


def test_eval_batch_size_steps_and_eps_max_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defects 8 and 11: --batch-size 0 gave a DataLoader traceback; --eps-max 0 said the run
    was trained at eps 0."""
    ckpt = always_predicts(0, "digits", tmp_path / "last.pt")
    for flags, words in (
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--batch-size", "-3"], "--batch-size must be >= 1"),
        (["--eps-max", "0"], "--eps-max must be > 0"),
    ):
        assert cli.main(["eval", str(ckpt), *flags]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("command", ["train", "eval"])
@pytest.mark.parametrize("device", ["tpu", "cuda:7", "cuda"])
def test_unavailable_devices_are_one_line(
    command: str, device: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 9: --device cuda without CUDA and --device tpu raised RuntimeError tracebacks."""
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if command == "train":
        argv = _train(tmp_path / "r")[3:]
    else:
        argv = ["eval", str(always_predicts(0, "digits", tmp_path / "last.pt"))]
    assert cli.main([*argv, "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "this machine has: auto, cpu" in err, err
    assert not (tmp_path / "r").exists()


def test_monitor_co_on_and_off_as_documented(tmp_path: Path) -> None:
    """Defect 10: YAML reads `co: on` as true, which was refused; `--set 'monitor.co="on"'`
    kept its quotes."""
    from robustft.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("monitor: {co: on}\n")
    assert load_config(path).monitor.co == "on"
    path.write_text("monitor: {co: off}\n")
    assert load_config(path).monitor.co == "off"
    assert load_config(None, ['monitor.co="on"']).monitor.co == "on"
    assert load_config(None, ["monitor.co='auto'"]).monitor.co == "auto"
    assert load_config(path).run_id() == load_config(None, ["monitor.co=off"]).run_id()


def test_one_epoch_run_names_the_warmup_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 12: --set train.epochs=1 failed on train.warmup_epochs, a key never set."""
    config = tmp_path / "c.yaml"  # train.warmup_epochs is left at its default, 1
    config.write_text("train: {epochs: 3}\nattack: {schedule: constant}\n")
    assert cli.main(["train", str(config), "--set", "train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "--set train.warmup_epochs=0" in err and err.count("\n") == 1, err


def test_resume_with_nothing_to_resume_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 13: --resume with no checkpoint silently started from epoch 1."""
    argv = _train(tmp_path / "r", "--resume", "--set", "eval.max_examples=8")[3:]
    assert cli.main(argv) == 0
    assert "nothing to resume" in capsys.readouterr().out


def test_small_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Defect 17, the small ones."""
    from robustft.config import build_config
    from robustft.errors import UserError
    from robustft.units import parse_eps

    with pytest.raises(UserError) as info:
        parse_eps("300/255")
    assert "/255/255" not in str(info.value)
    with pytest.raises(UserError) as info:
        build_config({}, ["train=5"])
    assert str(info.value).startswith("config train: expected a section")
    assert cli.main(["sweep", "--status", str(tmp_path / "missing")]) == 2
    assert "sweep directory not found" in capsys.readouterr().err


def test_eval_defaults_to_the_runs_settings_and_labels_units(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defects 14 and 17: `robustft eval RUN` ignored the run's eval section; an l2 table mixed
    0/255, 0.1 and 51/255; `--attack fgsm --steps 5` said "fgsm, 5 steps"; warnings printed
    twice; no progress without a terminal."""
    config = build_config(
        {
            "data": {"name": "digits", "image_size": 32},
            "attack": {"norm": "l2", "eps": 0.2},
            "eval": {"attack": "pgd", "steps": 2, "eps_step": 0.1, "max_examples": 8},
        }
    )
    torch.manual_seed(0)
    model = build_model(config.model.name, num_classes=10, pretrained=False)
    payload = {
        "config": config.to_dict(),
        "run_id": config.run_id(),
        "model": model.state_dict(),
        "num_classes": 10,
        "class_names": [str(i) for i in range(10)],
    }
    save_checkpoint(tmp_path / "last.pt", payload)
    assert cli.main(["eval", str(tmp_path / "last.pt"), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "note:" not in out  # the run's own settings: pgd, 2 steps, 0.1 grid, 8 examples
    assert "eps (l2)" in out and "0.1" in out and "0.2" in out and "/255" not in out, out
    assert "(pgd, 2 steps, l2, cascade, 8 examples (stratified sample of" in out, out
    assert "robustness curve" in err  # progress, though stderr is not a terminal
    argv = ["eval", str(tmp_path / "last.pt"), "--attack", "fgsm", "--steps", "5"]
    assert cli.main([*argv, "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "(fgsm, l2," in out and "5 steps" not in out.split("\n")[-2], out
    assert "note: not the run's own evaluation settings: attack fgsm (run: pgd)" in out, out
    for line in out.splitlines():
        if line.startswith("warning: "):
            assert line.removeprefix("warning: ") not in err  # printed once, not logged too


class _ConstantPredictor(torch.nn.Module):
    """Answers class 0 for every image (a tiny input term keeps gradients flowing)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 10) + 1e-3 * self.w * x.mean()
        logits[:, 0] += 5.0
        return logits


def test_no_masking_warning_for_a_constant_predictor(
    digits_data: tuple[torch.Tensor, ...],
) -> None:
    """Defect 15: a near-constant predictor at 10% clean accuracy got 'accuracy 100% at eps
    0.5: possible gradient masking' from its few correct examples, all of one class."""
    from robustft import attacks
    from robustft.robustness.evaluate import robustness_curve

    *_, x_test, y_test = digits_data
    curve = robustness_curve(
        _ConstantPredictor(),
        (x_test, y_test),
        attacks.create("pgd", steps=2),
        [0, 1 / 255],
        gradient_free_examples=0,
    )
    assert curve.clean_accuracy < 0.15
    check = curve.masking_check
    assert check is not None and check["accuracy"] == 1.0 and check["classes"] == 1
    assert isinstance(check["n"], int)
    assert not [w for w in curve.warnings if "masking" in w], curve.warnings


def test_no_masking_warning_when_the_curve_already_broke_the_examples(
    trained_model: torch.nn.Module, digits_data: tuple[torch.Tensor, ...]
) -> None:
    """Defect 15: an l2 run at 0% robust accuracy was told 'possible masking' because the
    attack at the huge masking eps did worse than at eps_g; an example broken inside the small
    ball is broken inside the big one."""
    from dataclasses import dataclass

    from robustft.attacks import PGD
    from robustft.robustness.evaluate import robustness_curve

    @dataclass(frozen=True, kw_only=True)
    class FailsAtHugeEps(PGD):
        def __call__(self, model, x, y, eps, **kwargs):  # type: ignore[no-untyped-def]
            largest = float(eps) if isinstance(eps, float) else float(torch.as_tensor(eps).max())
            return x.clone() if largest > 5 else super().__call__(model, x, y, eps, **kwargs)

    *_, x_test, y_test = digits_data
    curve = robustness_curve(
        trained_model,
        (x_test[:200], y_test[:200]),
        FailsAtHugeEps(norm="l2", steps=10),
        [0, 4.0],
        gradient_free_examples=0,
    )
    assert curve.robust_accuracy < 0.05
    assert curve.masking_check is not None and curve.masking_check["accuracy"] < 0.05
    assert not [w for w in curve.warnings if "masking" in w], curve.warnings
