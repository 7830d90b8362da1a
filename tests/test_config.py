"""Config loading, validation and overrides."""

from __future__ import annotations

import pytest

from robustft.config import RunConfig, build_config, load_config, parse_override
from robustft.errors import UserError


def test_defaults_are_the_paper_recipe() -> None:
    cfg = RunConfig()
    assert cfg.train.epochs == 50
    assert cfg.attack.schedule == "hinge(t1=12,t2=37)"
    assert cfg.attack.name == "apgd-ce" and cfg.attack.steps == 7
    assert cfg.eval.attack == "apgd-ce" and cfg.eval.steps == 10
    assert cfg.attack.eps == pytest.approx(8 / 255)


def test_yaml_and_overrides(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 5\nattack:\n  eps: 4/255\n")
    cfg = load_config(path, ["train.lr=3e-4", "attack.schedule=linear(t2=3)", "model.weights=null"])
    assert cfg.train.epochs == 5 and cfg.train.lr == pytest.approx(3e-4)
    assert cfg.attack.eps == 4 / 255
    assert cfg.attack.schedule == "linear(t2=3)"
    assert cfg.model.weights is None


def test_round_trip_through_yaml_keeps_run_id(tmp_path) -> None:
    cfg = build_config({"attack": {"eps": "4/255"}, "train": {"epochs": 3}})
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    back = load_config(path)
    assert back == cfg and back.run_id() == cfg.run_id()
    assert build_config({"train": {"epochs": 4}}).run_id() != cfg.run_id()


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["train.epochs=ten"], ["train.epochs", "integer"]),
        (["train.epochz=3"], ["unknown key", "train.epochs"]),
        (["attack.eps=8"], ["exceeds", "8/255"]),
        (["attack.eps=-1/255"], [">= 0"]),
        (["attack.eps=abc"], ["cannot parse"]),
        (["train.optimizer=adamx"], ["adamw"]),
        (["train.lr=0"], ["train.lr"]),
        (["noequals"], ["key=value"]),
        (["train=3"], ["mapping"]),
        (["data.val_fraction=1.5"], ["fraction"]),
    ],
)
def test_bad_values_are_one_line_errors(overrides: list[str], words: list[str]) -> None:
    with pytest.raises(UserError) as info:
        build_config({}, overrides)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_bad_yaml_file(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: [1,\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(path)
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_parse_override_values() -> None:
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert parse_override("a=8/255") == (["a"], "8/255")
    assert parse_override("a=hinge(t1=1,t2=2)") == (["a"], "hinge(t1=1,t2=2)")
    assert parse_override("a=true") == (["a"], True)


def test_resource_settings_do_not_change_the_run_id() -> None:
    base = build_config({})
    assert build_config({}, ["train.num_workers=4", "eval.batch_size=16"]).run_id() == base.run_id()
    assert build_config({}, ["train.threads=1"]).run_id() != base.run_id()
    assert build_config({}, ["eval.steps=20"]).run_id() != base.run_id()
