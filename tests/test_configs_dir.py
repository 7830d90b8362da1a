"""The shipped example and paper configs load, validate and say what they expect."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from robustft.config import load_config
from robustft.demo import demo_configs
from robustft.training.build import check_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _is_sweep(path: Path) -> bool:
    """Sweep files name a base config; run configs never have that key."""
    return "base" in (yaml.safe_load(path.read_text()) or {})


ALL = sorted(p for p in CONFIGS.rglob("*.yaml") if not _is_sweep(p))
SWEEPS = sorted(p for p in CONFIGS.rglob("*.yaml") if _is_sweep(p))


@pytest.mark.parametrize("path", ALL, ids=[str(p.relative_to(CONFIGS)) for p in ALL])
def test_config_is_valid_and_documented(path: Path) -> None:
    config = load_config(path)
    check_config(config)  # schedule binds to the epoch count, attacks exist
    head = path.read_text().splitlines()[0]
    assert head.startswith("#"), "every config starts with a comment saying what it is"
    if "paper" in path.parts:
        text = path.read_text()
        assert "Expected" in text and "Hardware" in text
        assert config.train.epochs == 50 and config.attack.schedule == "hinge(t1=12,t2=37)"
        assert config.attack.steps == 7 and config.eval.steps == 10
        assert config.model.name.startswith("timm:")


def test_paper_grid_is_complete() -> None:
    names = {p.stem for p in (CONFIGS / "paper").glob("*.yaml")}
    backbones = ["vit", "swin", "convnext", "resnet50", "clipvit", "clipconvnext"]
    datasets = ["aircraft", "caltech256", "cars", "cub", "dogs"]
    assert names == {f"{b}-{d}" for b in backbones for d in datasets}


def test_digits_configs_match_the_demo() -> None:
    for config in demo_configs():
        method = config.name.removeprefix("demo-")
        shipped = load_config(CONFIGS / f"digits_{method}.yaml")
        assert shipped.run_id() == config.run_id(), method


def test_text_configs_match_the_text_demo() -> None:
    for config in demo_configs(text=True):
        method = config.name.removeprefix("demo-text-")
        shipped = load_config(CONFIGS / "text" / f"drugreview_{method}.yaml")
        assert shipped.run_id() == config.run_id(), method


def test_sweep_files_are_found() -> None:
    assert {p.parent.name for p in SWEEPS} >= {"sweeps", "reproduction"}


@pytest.mark.parametrize("path", SWEEPS, ids=[str(p.relative_to(CONFIGS)) for p in SWEEPS])
def test_sweep_files_expand(path: Path) -> None:
    from robustft.sweep.spec import expand, load_sweep

    runs = expand(load_sweep(path))
    assert runs and len({r.run_id for r in runs}) == len(runs)
