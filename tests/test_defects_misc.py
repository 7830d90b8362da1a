"""Defects a new user found (round 3, issue 19): an adaptation threshold binary tasks cannot
reach, relative data paths, hf: exports transformers cannot open, and small ones (fault
messages, SIGTERM, timm offline, model card footer, the demo's findings, one-image classes,
hf: normalisation, YAML anchor keys); each test failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import TinyCNN, digits_tensors
from robustft import cli
from robustft.diagnostics import adaptation_threshold, diagnose_run, task_adaptation_delay

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
EPS = 8 / 255


def rows(acc: list[float], eps: list[float]) -> list[dict[str, Any]]:
    """metrics.jsonl rows: 1-based epochs, val_acc fractions, eps in pixel units."""
    return [{"epoch": i + 1, "eps": e, "val_acc": a} for i, (a, e) in enumerate(zip(acc, eps))]


# ----------------------------------------------------------------------------- point 3


@pytest.mark.parametrize("classes", [2, 3, 4, 5, 6, 10, 40, 200])
def test_every_task_can_cross_the_adaptation_threshold(classes: int) -> None:
    """Point 3: max(5%, 2 x chance), strictly exceeded, was 100% for 2 classes (unreachable)
    and 66.7% for 3; now chance plus a margin of at most a fifth of the rest."""
    chance = 1 / classes
    threshold = adaptation_threshold(classes)
    assert chance < threshold <= chance + 0.2 * (1 - chance) + 1e-12
    assert threshold <= 0.6  # a binary task crosses it at 61%
    expected = {2: 0.6, 3: 1 / 3 + 0.4 / 3, 10: 0.2, 40: 0.05, 200: 0.05}
    if classes in expected:
        assert threshold == pytest.approx(expected[classes])


def test_binary_and_three_class_runs_adapt_and_collapse_like_ten_class_runs() -> None:
    """Point 3: the issue's 2-class run at 87.5% and 3-class run at 63.6% validation accuracy
    were 'never adapted'; a collapse from a 90% peak of a binary run went unseen."""
    hinge = [0.0, 0.0, EPS / 2, EPS, EPS, EPS]
    two = rows([0.5, 0.575, 0.75, 0.875, 0.875, 0.875], hinge)
    three = rows([0.333, 0.40, 0.545, 0.636, 0.636, 0.636], hinge)
    ten = rows([0.1, 0.15, 0.45, 0.8, 0.8, 0.8], hinge)
    for history, classes in ((two, 2), (three, 3), (ten, 10)):
        assert task_adaptation_delay(history, classes) == 3
        assert diagnose_run(history, {"clean_accuracy": 0.8}, num_classes=classes) == []
    at_chance = rows([0.5, 0.55, 0.5, 0.6, 0.5, 0.55], hinge)  # 60% is not above 60%
    found = diagnose_run(at_chance, {}, num_classes=2)
    assert [f.code for f in found] == ["never_adapts"]
    assert found[0].message.startswith("validation accuracy never exceeded 60.0% (best 60.0%")
    collapse = rows([0.8, 0.9, 0.9, 0.55, 0.5, 0.5], hinge)  # back to chance as eps grew
    found = diagnose_run(collapse, {}, num_classes=2, schedule_text="hinge(t1=2,t2=4)")
    assert [f.code for f in found] == ["collapse_on_ramp"]
    assert "from 90.0% (epoch 2, eps 0) to 50.0% (epoch 5" in found[0].message


def _digits_run(classes: int, run_dir: Path) -> dict[str, Any]:
    """A real 3-epoch run of TinyCNN on the digits of the first ``classes`` classes."""
    import robustft

    x, y = digits_tensors()
    keep = y < classes
    x, y = x[keep], y[keep]
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(x)))
    x, y = x[perm][:240], y[perm][:240]
    torch.manual_seed(0)
    config = {
        "name": f"digits{classes}",
        "train.epochs": 3,
        "train.batch_size": 32,
        "train.lr": 3e-3,
        "train.warmup_epochs": 0,
        "train.threads": 1,
        "attack.name": "fgsm",
        "attack.eps": "8/255",
        "attack.schedule": "hinge(t1=1,t2=3)",
        "eval.attack": "fgsm",
        "eval.eps_max": "2/255",
        "eval.max_examples": 24,
    }
    return robustft.fit(
        config,
        model=TinyCNN(classes),
        train_data=(x[:160], y[:160]),
        test_data=(x[160:], y[160:]),
        run_dir=run_dir,
        device="cpu",
    )


def test_real_2_3_and_10_class_runs_get_a_delay_and_the_report_uses_it(tmp_path: Path) -> None:
    """Point 3 end to end: result.json's delay and findings, and the report's delay column and
    delay-vs-clean inputs; a run written under the old threshold (result.json says "never")
    is re-measured from its history, as the report's findings are."""
    from robustft.report.collect import load_run
    from robustft.report.delay import delay_point

    for classes in (2, 3, 10):
        run_dir = tmp_path / f"c{classes}"
        result = _digits_run(classes, run_dir)
        history = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
        best = max(r["val_acc"] for r in history)
        assert best > adaptation_threshold(classes), (classes, history)
        assert result["num_classes"] == classes
        assert result["adaptation_delay"] == task_adaptation_delay(history, classes)
        assert result["adaptation_delay"] is not None
        assert "never_adapts" not in [f["code"] for f in result["findings"]]
        old = dict(result, adaptation_delay=None)  # as the old threshold wrote it for 2 classes
        (run_dir / "result.json").write_text(json.dumps(old))
        point = delay_point(load_run(run_dir))
        assert point.delay == result["adaptation_delay"] and not point.censored


# ----------------------------------------------------------------------------- point 19


def test_the_demo_shows_standard_fine_tunings_own_findings(tmp_path: Path) -> None:
    """Point 19: the demo diagnosed RFT-fix and Epsilon-Scheduling only, so standard
    fine-tuning that never adapted was shown as healthy."""
    from robustft.commands.demo import _findings
    from robustft.demo import demo_configs
    from robustft.run.rundir import RunDir

    runs = []
    curves = {"standard": [0.1, 0.12, 0.15, 0.18], "fix": [0.1, 0.3, 0.5, 0.6]}
    curves["sched"] = [0.2, 0.6, 0.8, 0.85]
    for config in demo_configs(4, EPS):
        method = config.name.removeprefix("demo-")
        eps = 0.0 if method == "standard" else EPS
        run = RunDir(tmp_path / method)
        run.root.mkdir()
        run.write_metrics(rows(curves[method], [eps] * 4))
        clean = curves[method][-1]
        result = {"clean_accuracy": clean, "robust_accuracy": 0.1, "eps_g": eps, "num_classes": 10}
        runs.append((config, run.root, result))
    lines = _findings(runs)
    assert lines[0].startswith("  standard: never_adapts: validation accuracy never exceeded 20.0%")
    assert len(lines) == 1  # fix and sched adapted; standard is no reference for itself


# ----------------------------------------------------------------------------- point 13


def image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "eel"), n: int = 8) -> Path:
    """A pool ``root/<class>/img*.png`` of random 12-pixel images, ``n`` per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"img{i}.png")
    return root


def test_relative_data_paths_are_stored_absolute_and_found_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Point 13: ``imagefolder:pool`` was stored as written, so ``robustft eval img/runs/p2``
    from the parent directory looked for ./pool there; a missing folder's message now names
    the directory it tried."""
    from robustft.config import build_config, load_config

    image_folder(tmp_path / "img" / "pool")
    (tmp_path / "img" / "sub").mkdir()
    config_file = tmp_path / "img" / "p2.yaml"
    config_file.write_text(SMOKE.read_text().replace("name: digits", "name: imagefolder:pool"))
    absolute = f"imagefolder:{tmp_path / 'img' / 'pool'}"
    monkeypatch.chdir(tmp_path / "img")
    config = load_config(config_file)
    assert config.data.name == absolute
    fast = ["train.epochs=1", "attack.schedule=constant", "train.threads=1"]
    fast += ["model.name=timm:test_resnet", "model.pretrained=false"]  # tiny: a fast eval
    argv = ["train", "p2.yaml", "--run-dir", "runs/p2", "--device", "cpu"]
    argv += [arg for item in fast for arg in ("--set", item)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    stored = (tmp_path / "img" / "runs" / "p2" / "config.yaml").read_text()
    assert f"name: {absolute}\n" in stored
    run_id = json.loads((tmp_path / "img" / "runs" / "p2" / "result.json").read_text())["run_id"]

    # the same folder from another directory, written another way: the same run
    monkeypatch.chdir(tmp_path / "img" / "sub")
    other = build_config({"data": {"name": "imagefolder:../pool"}}, [])
    assert other.data.name == absolute
    assert load_config(config_file, ["data.name=imagefolder:../pool", *fast]).run_id() == run_id

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    evaluate = ["eval", "img/runs/p2", "--device", "cpu", "--attack", "fgsm", "--max-examples", "6"]
    assert cli.main([*evaluate, "--eps-max", "1/255"]) == 0, capsys.readouterr().err
    (tmp_path / "img" / "pool").rename(tmp_path / "img" / "moved")
    capsys.readouterr()
    assert cli.main([*evaluate, "--eps-max", "1/255"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"imagefolder: {tmp_path / 'img' / 'pool'} is not a directory" in err
    assert "\n" not in err


def test_a_class_with_a_single_image_is_named_by_its_folder(tmp_path: Path) -> None:
    """Point 19: sklearn's message named the class by its index ("[2]"), not its folder."""
    from robustft.data.factory import build_datasets
    from robustft.errors import UserError

    image_folder(tmp_path / "pool", ("cat", "dog"), n=6)
    image_folder(tmp_path / "pool", ("eel",), n=1)
    with pytest.raises(UserError) as caught:
        build_datasets(f"imagefolder:{tmp_path / 'pool'}", image_size=16, seed=0)
    message = str(caught.value)
    assert "class 'eel' has a single image" in message and "[2]" not in message
    assert message.startswith(f"imagefolder:{tmp_path / 'pool'}: cannot hold out 0.2 of 13 ")


def test_top_level_x_keys_hold_yaml_anchors(tmp_path: Path) -> None:
    """Point 19: a top-level anchor key (``x-common: &common``) was refused as an unknown key
    with no way around it; keys starting with ``x-`` or ``.`` are now ignored at the top
    level of config and sweep files (not inside sections), and do not change the run id."""
    from robustft.config import build_config, load_config
    from robustft.errors import UserError
    from robustft.sweep.spec import expand, load_sweep

    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        "x-common: &common {epochs: 3, lr: 1.0e-3}\n"
        ".hidden: 1\n"
        "train: *common\n"
        "attack: {schedule: constant}\n"
    )
    config = load_config(config_file)
    assert config.train.epochs == 3 and config.train.lr == 1e-3
    plain = {"train": {"epochs": 3, "lr": 1e-3}, "attack": {"schedule": "constant"}}
    assert config.run_id() == build_config(plain).run_id()
    (tmp_path / "bad.yaml").write_text("common: &common {epochs: 3}\ntrain: *common\n")
    with pytest.raises(UserError, match=r"unknown key 'common'.*keys starting with x- or \."):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "inner.yaml").write_text("train: {x-note: 1}\n")
    with pytest.raises(UserError, match=r"unknown key 'train\.x-note'"):
        load_config(tmp_path / "inner.yaml")
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("x-seeds: &seeds [0, 1]\nbase: run.yaml\ngrid:\n  train.seed: *seeds\n")
    runs = expand(load_sweep(sweep_file))
    assert [r.config.train.seed for r in runs] == [0, 1]


TINY = [
    "model.name=timm:test_efficientnet",
    "model.pretrained=false",
    "data.image_size=16",
    "data.max_train_per_class=2",  # 20 training images: 3 steps of 8 per epoch
    "train.batch_size=8",
    "train.threads=1",
    "attack.schedule=constant",
    "eval.max_examples=8",
    "eval.steps=1",
]


def test_fault_messages_count_steps_from_1_and_say_when_no_checkpoint_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point 19: 'numerical fault at epoch 1, step 0: ...; the last good checkpoint is kept'
    when the first epoch had not ended (no checkpoint), and 0-based steps beside 1-based
    epochs."""
    from robustft.config import load_config
    from robustft.errors import NumericalFault
    from robustft.objectives import AdversarialCE
    from robustft.training.fit import fit

    first = tmp_path / "first"
    with pytest.raises(NumericalFault) as caught:
        fit(load_config(SMOKE, [*TINY, "train.grad_norm_limit=1e-9"]), first)
    message = str(caught.value)
    assert message.startswith("numerical fault at epoch 1, step 1 of 3 (step 1 of the run): ")
    assert message.endswith("no checkpoint was written (the first epoch had not ended)")
    failure = json.loads((first / "failure.json").read_text())
    assert (failure["epoch"], failure["step"], failure["epoch_step"]) == (1, 1, 1)
    assert failure["last_good_epoch"] is None
    assert not (first / "checkpoints" / "last.pt").exists()

    original = AdversarialCE.__call__
    calls: list[int] = []

    def nan_at_step_5(self: AdversarialCE, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 5:  # epoch 2, its second step
            object.__setattr__(out, "loss", out.loss * float("nan"))
        return out

    monkeypatch.setattr(AdversarialCE, "__call__", nan_at_step_5)
    second = tmp_path / "second"
    with pytest.raises(NumericalFault) as caught:
        fit(load_config(SMOKE, TINY), second)
    message = str(caught.value)
    assert message.startswith("numerical fault at epoch 2, step 2 of 3 (step 5 of the run): ")
    assert message.endswith("the checkpoint of epoch 1 is kept")
    failure = json.loads((second / "failure.json").read_text())
    assert (failure["epoch"], failure["step"], failure["epoch_step"]) == (2, 5, 2)
    assert failure["last_good_epoch"] == 1


def test_sigterm_prints_a_line_exits_143_and_the_run_resumes(tmp_path: Path) -> None:
    """Point 19: SIGTERM (Slurm preemption) ended ``robustft train`` with exit code 143 (-15 as
    a signal) and no line, where Ctrl-C says it was interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "r"
    argv = [sys.executable, "-m", "robustft.cli", "train", str(SMOKE), "--run-dir", str(run_dir)]
    argv += [arg for item in [*TINY, "train.epochs=3"] for arg in ("--set", item)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (run_dir / "checkpoints" / "last.pt").is_file():
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be terminated"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 143, err.decode()
    assert lines[-1].startswith("robustft: terminated (SIGTERM)") and "--resume" in lines[-1]
    assert "Traceback" not in err.decode()
    assert not (run_dir / "result.json").exists()
    resumed = subprocess.run([*argv, "--resume"], env=env, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [r["epoch"] for r in history] == [1, 2, 3]


def test_timm_backbones_without_network_come_from_the_cache_or_fail_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point 19: without network a ``timm:`` backbone retried about 50 s before its one-line
    error (``hf:`` failed at once); now the cache is read at once, and an uncached model fails
    at once."""
    import socket
    import time

    import timm
    from huggingface_hub import constants
    from safetensors.torch import save_file

    from robustft.errors import UserError
    from robustft.models import build_model

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)

    def no_dns(host: str, *args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    snapshot = tmp_path / "hub" / "models--timm--test_resnet.r160_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    torch.manual_seed(1)
    source = timm.create_model("test_resnet", pretrained=False)
    save_file(source.state_dict(), str(snapshot / "model.safetensors"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    start = time.perf_counter()
    with pytest.raises(UserError) as caught:
        build_model("timm:test_vit.r160_in1k", num_classes=3)
    assert time.perf_counter() - start < 10
    message = str(caught.value)
    assert message.startswith("cannot get pretrained weights for timm:test_vit.r160_in1k: offline")
    assert "model.pretrained=false" in message
    start = time.perf_counter()
    model = build_model("timm:test_resnet.r160_in1k", num_classes=3)
    assert time.perf_counter() - start < 10
    loaded = model.net.state_dict()
    assert torch.equal(loaded["conv1.0.weight"], source.state_dict()["conv1.0.weight"])
    assert not constants.HF_HUB_OFFLINE  # restored


# ----------------------------------------------------------------------------- point 16

VIT_MEAN, VIT_STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


@pytest.fixture
def hf_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hugging Face's offline mode (its constant too: huggingface_hub reads the variable once)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def tiny_vit(folder: Path, *, processor: bool) -> Path:
    """A 2-layer ViT (3 classes, 32 px) saved by save_pretrained, with or without its image
    processor (as tests/test_hf_models.py builds it)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=3,
    )
    ViTForImageClassification(config).save_pretrained(folder)
    if processor:
        size = {"height": 32, "width": 32}
        ViTImageProcessor(size=size, image_mean=VIT_MEAN, image_std=VIT_STD).save_pretrained(folder)
    return folder


@pytest.mark.usefixtures("hf_offline")
@pytest.mark.parametrize(("mode", "processor"), [("full", True), ("lora", False)])
def test_hf_exports_open_with_transformers_from_their_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str, processor: bool
) -> None:
    """Point 16: an hf: export held model.safetensors and the card but no config.json, so
    AutoModelForImageClassification.from_pretrained(folder) failed, while the card said the
    folder could be uploaded to the Hub as it is. Point 19: the card's footer named its own
    output file instead of the run."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from robustft.run.export import load_exported

    vit = tiny_vit(tmp_path / "vit", processor=processor)
    run_dir = tmp_path / f"run-{mode}"
    argv = ["train", str(SMOKE), "--run-dir", str(run_dir), "--device", "cpu"]
    items = [f"model.name=hf:{vit}", f"model.mode={mode}", "data.image_size=32", *TINY[3:]]
    argv += [arg for item in items for arg in ("--set", item)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    out = tmp_path / "export" / "model.safetensors"
    assert cli.main(["export", str(run_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        f"transformers: AutoModelForImageClassification.from_pretrained('{out.parent}')" in printed
    )
    assert (out.parent / "preprocessor_config.json").is_file() == processor

    hf = AutoModelForImageClassification.from_pretrained(out.parent).eval()
    assert hf.config.id2label == {i: str(i) for i in range(10)}  # the digits' class names
    ours = load_exported(out)
    mean = torch.tensor(VIT_MEAN if processor else [0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor(VIT_STD if processor else [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(hf(pixel_values=(x - mean) / std).logits, ours(x), atol=1e-5)
    if processor:
        loaded = AutoImageProcessor.from_pretrained(out.parent)
        assert list(loaded.image_mean) == VIT_MEAN and list(loaded.image_std) == VIT_STD

    card = (out.parent / "README.md").read_text()
    assert "AutoModelForImageClassification.from_pretrained" in card
    footer = card.strip().splitlines()[-1]
    assert footer.endswith(f"from run `{run_dir.name}`.") and "model.safetensors" not in footer

    # an existing config.json is not overwritten without --force
    other = tmp_path / "shared" / "model.safetensors"
    other.parent.mkdir()
    (other.parent / "config.json").write_text("{}")
    assert cli.main(["export", str(run_dir), "--out", str(other), "--no-card"]) == 2
    assert "config.json exists" in capsys.readouterr().err and not other.exists()


@pytest.mark.usefixtures("hf_offline")
def test_an_hf_folder_without_a_processor_says_it_gets_imagenet_normalisation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Point 19: without preprocessor_config.json an hf: model silently got ImageNet's
    mean/std."""
    from robustft.models import build_model

    bare = tiny_vit(tmp_path / "bare", processor=False)
    with caplog.at_level("WARNING", logger="robustft.models"):
        model = build_model(f"hf:{bare}", num_classes=3)
    assert list(model.info.mean) == [0.485, 0.456, 0.406]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and warned[0].startswith(f"hf:{bare} has no image processor")
    assert "ImageNet mean/std" in warned[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="robustft.models"):
        build_model(f"hf:{tiny_vit(tmp_path / 'full', processor=True)}", num_classes=3)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
