"""``robustft.evaluate_run``: the evaluation of a trained run that ``robustft eval`` makes, from
Python (issue 20 point 4): the run's own settings by default (it reproduces result.json), the
settings that differ noted, bad arguments refused in one line naming the Python argument, and
AutoAttack stored in the run only beside a curve of the same sample."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import robustft
from conftest import TinyCNN
from robustft.callbacks import Callbacks
from robustft.config import load_config
from robustft.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
TINY = [  # two epochs of a tiny timm network on 300 digits: seconds
    "model.name=timm:test_efficientnet",
    "model.pretrained=false",
    "data.image_size=16",
    "data.max_train_per_class=30",
    "train.lr=0.01",
    "attack.eps=0",  # standard fine-tuning: broken at 32/255, so AutoAttack ends fast
    "attack.schedule=constant",
    "val.max_examples=20",
    "eval.attack=pgd",
    "eval.steps=2",
    "eval.max_examples=8",
    "eval.eps_max=32/255",
    "eval.eps_step=8/255",
    "train.threads=1",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run: curve of PGD-2 on 8 test examples (seed 0), grid 0..32/255."""
    from robustft.training.fit import cpu_threads, fit

    run_dir = tmp_path_factory.mktemp("evaluate_run") / "run"
    with cpu_threads(1):
        fit(load_config(SMOKE, TINY), run_dir, device="cpu")
    return run_dir


@pytest.fixture
def one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Recorder(Callbacks):
    """The hooks evaluate_run calls, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_note(self, text: str) -> None:
        self.calls.append(("note", text))

    def on_stage(self, name: str) -> None:
        self.calls.append(("stage", name))

    def on_eval_start(self, total: int) -> None:
        self.calls.append(("start", total))


def test_evaluate_run_reproduces_result_json_by_default(run: Path, one_thread: None) -> None:
    result = json.loads((run / "result.json").read_text())
    stored = json.loads((run / "robustness.json").read_text())
    evaluation = robustft.evaluate_run(run, device="cpu")
    curve = evaluation.curve
    for key in ("clean_accuracy", "robust_accuracy", "expected_robustness"):
        assert getattr(curve, key) == result[key], key
    assert list(curve.correct) == stored["correct"] and curve.examples == stored["examples"]
    assert curve.eps_max == result["eval_eps_max"] and curve.attack == result["eval_attack"]
    assert evaluation.changed == () and evaluation.state is None and evaluation.notes() == []
    settings = evaluation.settings
    assert (settings.attack, settings.steps, settings.max_examples) == ("pgd", 2, 8)
    assert (evaluation.autoattack, evaluation.stored) == (None, False)
    # a checkpoint file evaluates the same
    again = robustft.evaluate_run(run / "checkpoints" / "last.pt", device="cpu")
    assert again.curve.correct == curve.correct


def test_evaluate_run_notes_an_override_before_evaluating(run: Path, one_thread: None) -> None:
    recorder = Recorder()
    evaluation = robustft.evaluate_run(
        run, attack="fgsm", eps_step="16/255", max_examples=4, device="cpu", progress=recorder
    )
    assert evaluation.changed == (
        "attack fgsm (run: pgd)",
        "eps_step 16/255 (run: 8/255)",
        "max_examples 4 (run: 8)",
    )
    note = "not the run's own evaluation settings: " + ", ".join(evaluation.changed)
    assert evaluation.notes() == [note]
    # the note comes first, before the curve is measured
    assert recorder.calls == [("note", note), ("stage", "robustness curve"), ("start", 4)]
    assert list(evaluation.curve.epsilons) == [0, 16 / 255, 32 / 255]
    assert evaluation.curve.n_examples == 4
    # batch_size is a resource, not a result: not a difference
    assert robustft.evaluate_run(run, batch_size=3, device="cpu").changed == ()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"seed": -1}, "seed must be an integer in [0, 2**64), got -1"),
        ({"seed": 2**64}, f"seed must be an integer in [0, 2**64), got {2**64}"),
        ({"steps": 0}, "steps must be >= 1, got 0"),
        ({"max_examples": 2.5}, "max_examples must be >= 1, got 2.5"),
        ({"batch_size": "8"}, "batch_size must be >= 1, got '8'"),
        ({"early_stop": "no"}, "early_stop must be True or False, got 'no'"),
        ({"mode": "cascades"}, "mode: unknown value 'cascades' (did you mean 'cascade'?)"),
        ({"norm": "l3"}, "norm: unknown value 'l3'"),
        ({"autoattack": "rand"}, "autoattack: unknown value 'rand'"),
        ({"bad_images": "drop"}, "bad_images: unknown value 'drop'; valid: refuse, skip"),
        ({"norm": "l2"}, "norm='l2' differs from the run's; pass eps_max in l2 units"),
        ({"eps_max": 0}, "eps_max must be > 0, e.g. 8/255 (eps 0 is the clean accuracy)"),
        ({"eps_max": "8/256x"}, "eps_max: cannot parse '8/256x'"),
        ({"eps_max": 2}, "eps_max: 2 exceeds 1 in [0,1] pixel units (did you mean 2/255?)"),
        ({"attack": ["pgd"]}, "attack must be an attack's name such as apgd-ce, got a list"),
        ({"data": ()}, "data must be a dataset's name such as imagefolder:DIR, got a tuple"),
    ],
)
def test_evaluate_run_refuses_bad_arguments_in_one_line_naming_them(
    run: Path, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(UserError) as caught:
        robustft.evaluate_run(run, device="cpu", **arguments)
    text = str(caught.value)
    assert text.startswith(message) and "\n" not in text and "--" not in text, text


def test_evaluate_run_stores_autoattack_only_beside_the_same_sample(
    run: Path, tmp_path: Path, one_thread: None
) -> None:
    run = Path(shutil.copytree(run, tmp_path / "run"))
    before = json.loads((run / "result.json").read_text())
    assert before["autoattack"] is None

    other = robustft.evaluate_run(run, autoattack="standard", max_examples=4, device="cpu")
    assert other.autoattack is not None and other.autoattack.n == 4
    assert other.curve.autoattack == other.autoattack.to_dict()
    assert not other.stored
    assert other.not_stored_because == (
        "measured on 4 examples (seed 0), the run's curve on 8 examples (seed 0); measure it "
        "without max_examples and seed to store it"
    )
    assert json.loads((run / "result.json").read_text()) == before

    seeded = robustft.evaluate_run(run, autoattack="standard", seed=1, device="cpu")
    assert not seeded.stored
    assert "the run's curve on 8 examples (seed 0)" in seeded.not_stored_because
    checkpoint = robustft.evaluate_run(run / "checkpoints" / "last.pt", autoattack="standard")
    assert checkpoint.not_stored_because == "a checkpoint file was given, not a run directory"
    assert json.loads((run / "result.json").read_text()) == before

    own = robustft.evaluate_run(run, autoattack="standard", device="cpu")
    assert own.stored and own.not_stored_because == ""
    result = json.loads((run / "result.json").read_text())
    assert result["autoattack_accuracy"] == own.autoattack.accuracy
    assert (result["autoattack"]["n"], result["autoattack"]["seed"]) == (8, 0)
    stored = json.loads((run / "robustness.json").read_text())["autoattack"]
    assert stored == own.autoattack.to_dict()


def test_evaluate_run_checks_autoattack_before_the_curve(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing pyautoattack failed only after the whole curve was measured."""
    import robustft.robustness.evaluate

    def curve(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the curve was measured")

    monkeypatch.setattr(robustft.robustness.evaluate, "robustness_curve", curve)
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # not installed
    with pytest.raises(UserError, match=r"pip install 'robustft\[autoattack\]'"):
        robustft.evaluate_run(run, autoattack="standard", device="cpu")


def test_evaluate_run_of_a_model_given_from_python_takes_it_again(tmp_path: Path) -> None:
    config = {
        "data.image_size": 16,
        "data.max_train_per_class": 10,
        "train.epochs": 1,
        "train.warmup_epochs": 0,
        "train.threads": 1,
        "attack.name": "fgsm",
        "attack.eps": "2/255",
        "attack.schedule": "constant",
        "eval.attack": "fgsm",
        "eval.max_examples": 16,
        "eval.eps_max": "2/255",
    }
    torch.manual_seed(0)
    result = robustft.fit(config, model=TinyCNN(), run_dir=tmp_path / "run", device="cpu")
    with pytest.raises(UserError, match=r"robustft\.load\(RUN, model=MyNet\(\)\)"):
        robustft.evaluate_run(tmp_path / "run", device="cpu")
    evaluation = robustft.evaluate_run(tmp_path / "run", model=TinyCNN(), device="cpu")
    assert evaluation.curve.expected_robustness == result["expected_robustness"]
