"""Text runs end to end on the same code paths as images: a tiny BERT saved as on the Hub
(``hf:<folder>``) fine-tuned on a small review file (``text:<path>``) under an eps schedule in the
embedding space, evaluated, resumed and reloaded; and the config-level refusals of text settings
that do not apply."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from conftest import StopAfterFirstEpoch, save_tiny_bert
from robustft.cli import main
from robustft.config import build_config
from robustft.errors import UserError
from robustft.run.load import load_trained_model
from robustft.run.rundir import RunDir
from robustft.training.build import build_data, check_config, embed_text, eval_grid
from robustft.training.fit import fit

GOOD = ["the drug worked well", "great no side effects", "it worked well for my pain", "great"]
BAD = ["it made me sick", "bad side effects", "the drug made me sick", "bad bad"]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hugging Face's offline mode (see tests/test_hf_models.py)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV of 48 short reviews, 2 classes (each text repeated with small variations)."""
    rows = ["review,rating"]
    for i in range(6):
        rows += [f"{t}{' great' * (i % 2)},positive" for t in GOOD]
        rows += [f"{t}{' bad' * (i % 2)},negative" for t in BAD]
    path = tmp_path_factory.mktemp("reviews") / "reviews.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def text_config(bert: Path, reviews: Path, **overrides: object) -> dict[str, object]:
    config: dict[str, object] = {
        "name": "text-tiny",
        "model": {"name": f"hf:{bert}", "mode": "full"},
        "data": {
            "name": f"text:{reviews}",
            "text_column": "review",
            "label_column": "rating",
            "max_length": 12,
            "val_fraction": 0.25,
            "test_fraction": 0.25,
        },
        "train": {"epochs": 3, "batch_size": 8, "lr": 0.01, "warmup_epochs": 0, "threads": 1},
        "attack": {
            "name": "pgd",
            "norm": "l2-token",
            "steps": 2,
            "eps": 0.5,
            "schedule": "hinge(t1=1,t2=2)",
        },
        "eval": {"steps": 3},
        "monitor": {"co": "on", "examples": 8},
    }
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value  # type: ignore[index]
    return config


@pytest.fixture(scope="module")
def trained(bert: Path, reviews: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "text"
    fit(build_config(text_config(bert, reviews)), run)
    return run


def test_a_text_run_trains_on_the_schedule_and_evaluates_in_the_embedding_space(
    trained: Path,
) -> None:
    run = RunDir(trained)
    rows = run.read_metrics().rows
    assert [round(r["eps"], 6) for r in rows] == [0.0, 0.5, 0.5]  # hinge(t1=1,t2=2) on 0.5
    assert all("co_pgd_acc" in r for r in rows[1:])  # the CO monitor ran in embedding space
    result = json.loads((trained / "result.json").read_text())
    curve = json.loads((trained / "robustness.json").read_text())
    assert result["norm"] == "l2-token"
    assert curve["attack"]["space"] == "embedding"
    assert curve["epsilons"] == pytest.approx([0.5 * k / 8 for k in range(9)])  # eighths
    accuracy = curve["accuracy"]
    assert accuracy[0] == pytest.approx(result["clean_accuracy"])
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(accuracy))
    assert curve["gradient_free_check"]["skipped"].startswith("no gradient-free check")


def test_a_reloaded_text_run_predicts_exactly_as_trained(
    trained: Path, bert: Path, reviews: Path
) -> None:
    model, config, _ = load_trained_model(trained, device="cpu")
    data = embed_text(build_data(config), model)
    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    assert x.shape[-1] == model.net.dim + 1
    result = json.loads((trained / "result.json").read_text())
    with torch.no_grad():
        predictions = model(x).argmax(1)
    labels = torch.tensor([data.test[i][1] for i in range(len(data.test))])
    accuracy = float((predictions == labels).float().mean())
    assert accuracy == pytest.approx(result["clean_accuracy"])


def test_an_interrupted_text_run_resumes_to_the_uninterrupted_result(
    trained: Path, bert: Path, reviews: Path, tmp_path: Path
) -> None:
    config = build_config(text_config(bert, reviews))
    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "r", callbacks=StopAfterFirstEpoch())
    assert len(RunDir(tmp_path / "r").read_metrics().rows) == 1
    resumed = fit(config, tmp_path / "r", resume=True)
    reference = json.loads((trained / "result.json").read_text())
    for key in ("clean_accuracy", "robust_accuracy", "expected_robustness", "final_val_acc"):
        assert resumed[key] == reference[key], key
    rows = RunDir(tmp_path / "r").read_metrics().rows
    for a, b in zip(RunDir(trained).read_metrics().rows, rows, strict=True):
        assert (a["train_loss"], a["val_acc"]) == (b["train_loss"], b["val_acc"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.name": "efficientnet_lite0"}, "is a image backbone but data.name"),
        ({"attack.norm": "linf"}, "set attack.norm: l2-token"),
        ({"attack.norm": "l2"}, "set attack.norm: l2-token"),
        ({"eval.autoattack": "standard"}, "AutoAttack attacks images"),
        ({"data.max_length": 0}, "max_length"),
    ],
)
def test_text_settings_that_do_not_apply_are_refused_before_anything_runs(
    bert: Path, reviews: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(UserError, match=message):
        check_config(build_config(text_config(bert, reviews, **overrides)))


def test_an_image_dataset_with_the_text_backbone_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "configs/smoke.yaml",
            "--set",
            "model.name=minilm",
            "--run-dir",
            str(run),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "minilm is a text backbone but data.name digits is image" in err[0]
    assert not run.exists()


def test_an_hf_image_model_with_text_data_is_refused_once_built(
    bert: Path, reviews: Path, tmp_path: Path
) -> None:
    from robustft.models import build_model

    config = build_config(text_config(bert, reviews))
    data = build_data(config)
    image = build_model("efficientnet_lite0", num_classes=2, pretrained=False)
    with pytest.raises(UserError, match="the model takes image inputs but the data is text"):
        embed_text(data, image)


def test_the_text_eval_grid_is_in_eighths_unless_a_step_is_given(bert: Path, reviews: Path) -> None:
    config = build_config(text_config(bert, reviews, **{"attack.eps": 0.4}))
    assert eval_grid(config) == pytest.approx([0.05 * k for k in range(9)])
    stepped = build_config(text_config(bert, reviews, **{"eval.eps_step": 0.2, "attack.eps": 0.4}))
    assert eval_grid(stepped) == pytest.approx([0.0, 0.2, 0.4])


def test_the_text_demo_compares_three_schedules_of_one_valid_text_setting() -> None:
    from robustft.demo import demo_configs

    configs = demo_configs(6, 0.3, text=True)
    assert [c.name for c in configs] == ["demo-text-standard", "demo-text-fix", "demo-text-sched"]
    for config in configs:
        check_config(config)  # minilm with drugreview, l2-token: nothing refused
        assert config.data.modality == "text" and config.attack.norm == "l2-token"
    dicts = [c.to_dict() for c in configs]
    for d in dicts:
        d.pop("name")
        d["attack"].pop("schedule")
        d["attack"].pop("eps")
    assert dicts[0] == dicts[1] == dicts[2]
    assert [c.attack.eps for c in configs] == [0, 0.3, 0.3]
