"""``robustft eval`` on image folders: unreadable images and class-set mismatches between the
checkpoint and the dataset are one-line errors with exit code 2; matching data reaches the
evaluation. The robustness curve itself is stubbed out here (it is slow on CPU and covered by
tests/test_cli_train.py::test_eval_command): a stub records the test split and stops the run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from robustft import cli
from robustft.config import build_config
from robustft.models import build_model
from robustft.run.checkpoint import save_checkpoint

CLASSES = ("cat", "dog", "eel")
FAST = ("--attack", "fgsm", "--eps-max", "1/255", "--max-examples", "4", "--device", "cpu")


def make_pool(root: Path, classes: tuple[str, ...] = CLASSES, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"img{i}.png")
    return root


def write_checkpoint(path: Path, data_name: str, class_names: list[str] | None) -> Path:
    """A checkpoint of an untrained efficientnet_lite0 as ``fit`` writes one (the keys
    ``load_trained_model`` reads), so no training is needed."""
    config = build_config({"data": {"name": data_name, "image_size": 32}})
    torch.manual_seed(0)
    num_classes = len(class_names) if class_names is not None else 3
    model = build_model(config.model.name, num_classes=num_classes, pretrained=False)
    payload = {
        "config": config.to_dict(),
        "run_id": config.run_id(),
        "model": model.state_dict(),
        "num_classes": num_classes,
    }
    if class_names is not None:
        payload["class_names"] = class_names
    save_checkpoint(path, payload)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the training pool, a checkpoint trained on it)."""
    base = tmp_path_factory.mktemp("evaldata")
    pool = make_pool(base / "pool")
    return pool, write_checkpoint(base / "last.pt", f"imagefolder:{pool}", list(CLASSES))


class Reached(Exception):
    """Raised by the stubbed robustness curve: the checks passed and evaluation started."""


@pytest.fixture
def reached(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Stub ``robustness_curve``; the list receives the test split it was called with."""
    import robustft.robustness.evaluate

    seen: list[Any] = []

    def stub(model: Any, dataset: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(dataset)
        raise Reached

    monkeypatch.setattr(robustft.robustness.evaluate, "robustness_curve", stub)
    return seen


def eval_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["eval", *argv, *FAST])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert err.startswith("robustft: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)


def test_matching_classes_evaluate(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], reached: list
) -> None:
    _, ckpt = setup
    with pytest.raises(Reached):
        eval_cli(capsys, str(ckpt))
    assert len(reached[-1]) == 5  # 20% of 24
    other = make_pool(tmp_path / "shifted", n=10)  # same classes, other images
    with pytest.raises(Reached):
        eval_cli(capsys, str(ckpt), "--data", f"imagefolder:{other}")
    assert len(reached[-1]) == 6 and reached[-1].source.paths[0].is_relative_to(other)


@pytest.mark.parametrize(
    ("classes", "words"),
    [
        (("cat", "dog"), ["has 3 classes", "has 2", "'eel'"]),
        (("cat", "dog", "fox"), ["different classes", "'eel'", "'fox'"]),
    ],
)
def test_other_classes_are_refused(
    reached: list,
    setup: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    classes: tuple[str, ...],
    words: list[str],
) -> None:
    _, ckpt = setup
    other = make_pool(tmp_path / "other", classes=classes)
    code, _, err = eval_cli(capsys, str(ckpt), "--data", f"imagefolder:{other}")
    assert_one_line_error(code, err, "class mismatch", str(ckpt), str(other), *words)


def test_reordered_classes_are_refused(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], reached: list
) -> None:
    pool, _ = setup
    ckpt = write_checkpoint(tmp_path / "c.pt", f"imagefolder:{pool}", ["dog", "cat", "eel"])
    code, _, err = eval_cli(capsys, str(ckpt))
    assert_one_line_error(code, err, "different order", "label 0", "'dog' vs 'cat'", "permute")


def test_a_checkpoint_without_class_names_is_checked_by_count(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], reached: list
) -> None:
    pool, _ = setup
    ckpt = write_checkpoint(tmp_path / "old.pt", f"imagefolder:{pool}", None)
    code, _, err = eval_cli(capsys, str(ckpt), "--data", "digits")
    assert_one_line_error(code, err, "class mismatch", "has 3 classes", "digits has 10")


def test_unreadable_images_refuse_or_skip(
    setup: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    reached: list,
) -> None:
    _, ckpt = setup
    other = make_pool(tmp_path / "other")
    empty = other / "dog" / "img2.png"
    empty.write_bytes(b"")
    truncated = other / "cat" / "img5.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    code, _, err = eval_cli(capsys, str(ckpt), "--data", f"imagefolder:{other}")
    assert_one_line_error(code, err, str(truncated), "2 unreadable", "data.bad_images=skip")
    with caplog.at_level("WARNING", logger="robustft.data"), pytest.raises(Reached):
        eval_cli(capsys, str(ckpt), "--data", f"imagefolder:{other}", "--bad-images", "skip")
    skipped = {str(p) for p in reached[-1].source.paths} & {str(empty), str(truncated)}
    assert not skipped and len(reached[-1].source.paths) == 22
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("skipping 2 unreadable" in w and str(truncated) in w for w in warnings), warnings


def test_autoattack_is_checked_before_the_curve(
    setup: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    reached: list,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`eval --autoattack` on a 3-class task, or without pyautoattack, measured the whole curve
    and then failed."""
    _, ckpt = setup
    code, _, err = eval_cli(capsys, str(ckpt), "--autoattack")
    assert_one_line_error(code, err, "AutoAttack needs at least 4 classes", "this task has 3")
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # not installed
    code, _, err = eval_cli(capsys, str(ckpt), "--autoattack")
    assert_one_line_error(code, err, "pip install 'robustft[autoattack]'")
    assert not reached


def test_a_note_comes_before_the_error_it_explains(
    setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The settings that differ from the run's are printed before anything is evaluated, so
    also before an error of the evaluation."""
    _, ckpt = setup
    code = cli.main(["eval", str(ckpt), "--attack", "pgf", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert out == "note: not the run's own evaluation settings: attack pgf (run: apgd-ce)\n"
    assert_one_line_error(code, err, "unknown attack 'pgf' (did you mean 'pgd'?)")
