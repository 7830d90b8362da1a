"""Every named choice of a config is checked before anything runs (issue 20): ``robustft sweep``
refuses a bad name in one line naming the key, the value and the choices, with ``--dry-run``
too, before planning a run; ``robustft tune`` before Ray starts; a config that names no valid
norm is not built at all. Each of these planned, started or built before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from robustft import cli
from robustft.config import build_config
from robustft.errors import UserError
from robustft.training.build import check_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
LR = ["--search", "train.lr=uniform(1e-4,1e-3)"]


def dry_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: dict[str, Any]
) -> tuple[int, str, str]:
    """``robustft sweep --dry-run`` of a one-run sweep over configs/smoke.yaml + ``settings``."""
    path = tmp_path / "sweep.yaml"
    sweep = {"name": "choices", "base": SMOKE, "set": settings, "methods": {"fix": {}}}
    path.write_text(yaml.safe_dump(sweep))
    code = cli.main(["sweep", str(path), "--dry-run", "--out", str(tmp_path / "s")])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        (  # the case: planned as a run to train
            {"model.mode": "lorra"},
            ["config model.mode", "'lorra'", "did you mean 'lora'", "bitfit, full, linear"],
        ),
        (
            {"model.name": "timm:resnet5000"},
            ["config model.name", "'resnet5000'", "did you mean 'resnet50'"],
        ),
        (
            {"model.name": "torchvision:resnet19"},
            ["config model.name", "'resnet19'", "did you mean 'resnet18'"],
        ),
        (
            {"model.name": "foo"},
            ["config model.name", "unknown model 'foo'", "timm:<name>", "efficientnet_lite0"],
        ),
        ({"model.name": "timm:"}, ["config model.name", "unknown model 'timm:'"]),
        (
            {"data.name": "cifar11"},
            ["config data.name", "'cifar11'", "did you mean 'cifar10'", "imagefolder:<path>"],
        ),
        ({"data.name": "imagefolder:"}, ["config data.name", "no path given"]),
    ],
)
def test_sweep_dry_run_refuses_unknown_names_before_planning(
    settings: dict[str, Any], words: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = dry_run(tmp_path, capsys, settings)
    assert code == 2, (out, err)
    assert err.startswith("robustft: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)
    assert not (tmp_path / "s").exists()


def test_names_that_need_no_download_are_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # hf: names are the Hub's (not checked offline); a pretrained tag timm knows; a folder
    # that exists only where the run trains
    for settings in (
        {"model.name": "hf:someone/some-vit"},
        {"model.name": "timm:resnet50.a1_in1k"},
        {"model.name": "torchvision:resnet18", "data.name": "imagefolder:/nowhere/pets"},
    ):
        code, _, err = dry_run(tmp_path, capsys, settings)
        assert code == 0, (settings, err)


def test_an_unknown_norm_is_refused_when_the_config_is_built() -> None:
    with pytest.raises(UserError) as excinfo:
        build_config({"attack": {"norm": "zz"}})
    assert str(excinfo.value) == "config attack.norm: unknown value 'zz'; valid: linf, l2, l2-token"
    with pytest.raises(UserError, match=r"attack\.norm.*did you mean 'l2'"):
        build_config({}, ["attack.norm=L2"])


def test_check_config_names_the_key_of_every_check() -> None:
    cases = {
        "attack.name=pgf": "config attack.name: unknown attack 'pgf' (did you mean 'pgd'?)",
        "eval.attack=apgd": "config eval.attack: unknown attack 'apgd'",
        "attack.schedule=hinje": "config attack.schedule: unknown schedule 'hinje'",
    }
    for override, message in cases.items():
        with pytest.raises(UserError) as excinfo:
            check_config(build_config({}, [override]))
        assert str(excinfo.value).startswith(message), str(excinfo.value)
    with pytest.raises(UserError, match=r"^config eval\.attack: attack 'square' supports only"):
        check_config(build_config({}, ["attack.norm=l2", "eval.attack=square"]))
    check_config(build_config({}, ["model.name=custom:MyNet", "data.name=custom:MySet"]))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ["--set", "attack.name=pgf", *LR],
            ["config attack.name", "unknown attack 'pgf'"],
        ),
        (
            ["--set", "model.mode=lorra", *LR],
            ["config model.mode", "'lorra'"],
        ),
        (
            ["--set", "attack.norm=l2", "--set", "eval.attack=square", *LR],
            ["config eval.attack", "supports only norm linf"],
        ),
        (  # a search bound: every value it can sample is checked
            ["--search", "attack.name=choice(pgd,pgf)"],
            ["--search attack.name=choice(pgd,pgf) (attack.name=pgf)", "unknown attack 'pgf'"],
        ),
        (
            ["--search", "model.name=choice(efficientnet_lite0,timm:resnet5000)"],
            ["model.name=timm:resnet5000", "unknown timm model 'resnet5000'"],
        ),
    ],
)
def test_tune_checks_every_choice_before_ray_starts(
    args: list[str],
    words: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import robustft.launchers.ray
    import robustft.tune.driver

    def ray_started(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray started")

    monkeypatch.setattr(robustft.launchers.ray, "require_ray", lambda: None)
    monkeypatch.setattr(robustft.tune.driver, "tune_runs", ray_started)
    code = cli.main(["tune", SMOKE, "--out", str(tmp_path / "t"), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("robustft: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)
    assert not (tmp_path / "t").exists()
