"""The Python API: robustft.fit on a user's model and datasets, resume, evaluate, load; the
README's Python section and the example script run as written."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

import robustft
from conftest import TinyCNN, digits_tensors
from robustft.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
FAST = {
    "train.epochs": 2,
    "train.warmup_epochs": 0,
    "train.batch_size": 64,
    "attack.name": "pgd",
    "attack.steps": 2,
    "attack.eps": "4/255",
    "attack.schedule": "constant",
    "eval.steps": 2,
    "eval.max_examples": 32,
    "eval.eps_max": "2/255",
}


@pytest.fixture(scope="module")
def data() -> tuple[TensorDataset, TensorDataset]:
    x, y = digits_tensors()
    return TensorDataset(x[:300], y[:300]), TensorDataset(x[-100:], y[-100:])


def test_readme_python_section_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every code block of the README's "Python API" section, in order, as a user pastes it."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert (tmp_path / "runs" / "python-api" / "result.json").is_file()


def test_config_forms(tmp_path: Path) -> None:
    from robustft.api import as_config

    dotted = as_config({"train.epochs": 3, "attack": {"eps": "4/255"}, "attack.steps": 2})
    assert (dotted.train.epochs, dotted.attack.eps, dotted.attack.steps) == (3, 4 / 255, 2)
    path = tmp_path / "c.yaml"
    path.write_text("train: {epochs: 3}\nattack: {eps: 4/255, steps: 2}\n")
    assert as_config(path).run_id() == dotted.run_id() == as_config(dotted).run_id()
    with pytest.raises(UserError, match=r"unknown key 'train\.epoch'"):
        as_config({"train.epoch": 3})


def test_user_model_trains_in_place_and_resume_checks_its_parameters(
    tmp_path: Path, data: tuple[TensorDataset, TensorDataset]
) -> None:
    train, test = data
    torch.manual_seed(0)
    model = TinyCNN()
    before = model.head.weight.detach().clone()
    result = robustft.fit(FAST, model=model, train_data=train, test_data=test, run_dir=tmp_path)
    assert not torch.equal(before, model.head.weight)  # trained in place
    assert result["robust_accuracy"] <= result["expected_robustness"] <= result["clean_accuracy"]
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["model"]["name"] == "custom:TinyCNN"
    assert config["data"]["name"] == "custom:TensorDataset"

    other = TinyCNN()  # the same class, another head: parameter names and shapes differ
    other.head = nn.Linear(128, 10, bias=False)
    (tmp_path / "result.json").unlink()  # as if interrupted after its last checkpoint
    with pytest.raises(UserError) as info:
        robustft.fit(
            FAST, model=other, train_data=train, test_data=test, run_dir=tmp_path, resume=True
        )
    message = str(info.value)  # refused by the run's identity, before any weight is loaded
    assert "\n" not in message and "another model architecture" in message
    assert "force=True" in message


def test_load_and_evaluate_reproduce_the_run(
    tmp_path: Path, data: tuple[TensorDataset, TensorDataset]
) -> None:
    train, test = data
    torch.manual_seed(0)
    result = robustft.fit(FAST, model=TinyCNN(), train_data=train, test_data=test, run_dir=tmp_path)
    saved = json.loads((tmp_path / "robustness.json").read_text())
    trained = robustft.load(tmp_path, model=TinyCNN())
    curve = robustft.evaluate(
        trained, test, eps_max="2/255", attack="apgd-ce", steps=2, max_examples=32
    )
    assert list(curve.accuracy) == saved["accuracy"]
    assert list(curve.correct) == saved["correct"]  # example for example
    assert curve.expected_robustness == result["expected_robustness"]
    with pytest.raises(UserError, match=r"robustft.load\(RUN, model=MyNet\(\)\)"):
        robustft.load(tmp_path)


def test_modes_apply_to_a_user_model_or_fail_in_one_line(
    tmp_path: Path, data: tuple[TensorDataset, TensorDataset]
) -> None:
    from robustft.models import has_lora

    train, test = data

    class NoHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 10, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean(dim=(2, 3))

    with pytest.raises(UserError, match=r"model\.mode=linear needs the classification head"):
        robustft.fit(
            {**FAST, "model.mode": "linear"},
            model=NoHead(),
            train_data=train,
            test_data=test,
            run_dir=tmp_path / "linear",
        )
    assert not (tmp_path / "linear").exists()
    torch.manual_seed(0)
    model = TinyCNN()
    model.lora_targets = ("features.4",)  # type: ignore[assignment]  # the second conv
    robustft.fit(
        {**FAST, "model.mode": "lora", "model.lora_rank": 2, "train.epochs": 1},
        model=model,
        train_data=train,
        test_data=test,
        run_dir=tmp_path / "lora",
    )
    assert has_lora(model)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == [
        "features.4.lora_A.default.weight",
        "features.4.lora_B.default.weight",
        "head.bias",
        "head.weight",
    ]
    with pytest.raises(UserError, match="gives 10 logits but the data has 3 classes"):
        three = TensorDataset(train.tensors[0][:30], train.tensors[1][:30] % 3)
        robustft.fit(FAST, model=TinyCNN(), train_data=three, test_data=three, run_dir=tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"train_data": "images"}, "train_data and test_data together"),
        ({"train_data": (torch.rand(4, 3, 8, 8) * 2, torch.zeros(4, dtype=torch.long))}, "[0, 1]"),
        ({"train_data": (torch.rand(4, 8, 8), torch.zeros(4, dtype=torch.long))}, "(C, H, W)"),
    ],
)
def test_bad_data_is_one_line(tmp_path: Path, kwargs: dict[str, object], words: str) -> None:
    test = (torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    full = {"test_data": test, **kwargs} if "together" not in words else kwargs
    with pytest.raises(UserError) as info:
        robustft.fit(FAST, run_dir=tmp_path / "r", **full)  # type: ignore[arg-type]
    assert words in str(info.value) and "\n" not in str(info.value)


def test_cli_refuses_a_user_model_run_in_one_line(
    tmp_path: Path, data: tuple[TensorDataset, TensorDataset], capsys: pytest.CaptureFixture[str]
) -> None:
    from robustft import cli

    train, test = data
    torch.manual_seed(0)
    fast = {**FAST, "train.epochs": 1}
    robustft.fit(fast, model=TinyCNN(), train_data=train, test_data=test, run_dir=tmp_path)
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "model given from Python (custom:TinyCNN)" in err and err.count("\n") == 1


def test_commands_build_without_the_training_loop(tmp_path: Path) -> None:
    """`robustft eval` and `export` load what they need through robustft.run.load, not the
    training loop."""
    from test_defects import always_predicts, image_folder

    folder = image_folder(tmp_path / "pets")
    ckpt = always_predicts(0, f"imagefolder:{folder}", tmp_path / "last.pt")
    out = str(tmp_path / "m.safetensors")
    code = (
        "import sys; from robustft import cli\n"
        f"assert cli.main(['eval', {str(ckpt)!r}, '--max-examples', '8', '--steps', '1',"
        " '--device', 'cpu']) == 0\n"
        f"assert cli.main(['export', {str(ckpt)!r}, '--out', {out!r}]) == 0\n"
        "loop = {'robustft.training.loop', 'robustft.training.fit'} & set(sys.modules)\n"
        "assert not loop, f'the training loop was imported: {loop}'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def test_python_dash_m_robustft() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "robustft", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("robustft ")


def _example(run_dir: Path) -> list[str]:
    script = str(ROOT / "examples" / "custom_model.py")
    return [
        sys.executable,
        script,
        "--run-dir",
        str(run_dir),
        "--epochs",
        "2",
        "--train-size",
        "300",
    ]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_example_script_killed_and_resumed(tmp_path: Path) -> None:
    """The example script (own CNN, TensorDatasets) SIGKILLed after its first epoch and run
    again ends with the numbers of an uninterrupted run, and robustft.evaluate on the loaded
    model reproduces the run's curve."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    reference = subprocess.run(
        _example(tmp_path / "ref"), env=env, capture_output=True, text=True, timeout=900
    )
    assert reference.returncode == 0, reference.stderr[-2000:]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _example(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = killed / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the example finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "result.json").exists()
    resumed = subprocess.run(_example(killed), env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout == reference.stdout
    first, second = resumed.stdout.splitlines()[:2]
    assert first.split()[-1] == second.split()[-1]  # re-evaluated == trained-run E.rob
    ref_rows = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    new_rows = metrics.read_text().splitlines()
    loss = [[json.loads(r)["train_loss"] for r in rows] for rows in (ref_rows, new_rows)]
    assert loss[0] == loss[1]
