"""End to end through the CLI: train, resume, eval, and bad input (one line, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import StopAfterFirstEpoch
from robustft import cli
from robustft.config import load_config
from robustft.training.fit import fit

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    assert cli.main(["train", SMOKE, "--run-dir", str(run_dir)]) == 0
    return run_dir


def test_train_writes_the_run_directory(smoke_run: Path) -> None:
    for name in ("config.yaml", "metrics.jsonl", "robustness.json", "result.json", "env.json"):
        assert (smoke_run / name).is_file(), name
    assert (smoke_run / "checkpoints" / "last.pt").is_file()
    rows = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["eps"] == 0 and rows[1]["eps"] == pytest.approx(8 / 255)  # hinge(t1=1,t2=2)
    for key in ("lr", "train_loss", "train_acc", "val_acc", "seconds", "examples_per_second"):
        assert key in rows[0]
    result = json.loads((smoke_run / "result.json").read_text())
    assert result["robust_accuracy"] <= result["expected_robustness"] <= result["clean_accuracy"]
    curve = json.loads((smoke_run / "robustness.json").read_text())
    assert len(curve["epsilons"]) == 3 and curve["attack"]["name"] == "apgd-ce"


def test_eval_command(smoke_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "curve.json"
    code, out, err = run_cli(
        capsys,
        "eval",
        str(smoke_run),
        "--eps-max",
        "2/255",
        "--attack",
        "pgd",
        "--steps",
        "3",
        "--mode",
        "independent",
        "--max-examples",
        "16",
        "--json",
        str(out_json),
    )
    assert code == 0, err
    assert "expected robustness on [0, 2/255]" in out
    curve = json.loads(out_json.read_text())
    assert curve["mode"] == "independent" and curve["n_examples"] == 16


def test_rerun_rules(smoke_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "train", SMOKE, "--run-dir", str(smoke_run))
    assert code == 2 and "--resume" in err and err.count("\n") == 1
    code, _, err = run_cli(
        capsys, "train", SMOKE, "--run-dir", str(smoke_run), "--set", "train.epochs=3"
    )
    assert code == 2 and "different config" in err
    before = (smoke_run / "result.json").read_text()
    code, out, _ = run_cli(capsys, "train", SMOKE, "--run-dir", str(smoke_run), "--resume")
    assert code == 0 and "clean accuracy" in out
    assert (smoke_run / "result.json").read_text() == before  # finished run: nothing redone


def test_resume_matches_uninterrupted_run(smoke_run: Path, tmp_path: Path) -> None:
    config = load_config(SMOKE)
    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "r", callbacks=StopAfterFirstEpoch())
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    resumed = fit(config, tmp_path / "r", resume=True)
    reference = json.loads((smoke_run / "result.json").read_text())
    for key in ("clean_accuracy", "robust_accuracy", "expected_robustness", "final_val_acc"):
        assert resumed[key] == reference[key], key
    ref_rows = [json.loads(x) for x in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    new_rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(ref_rows, new_rows, strict=True):
        assert (a["train_loss"], a["val_acc"]) == (b["train_loss"], b["val_acc"])


def _assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert err.startswith("robustft: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["model.name=timm:resnet5O"], ["resnet50"]),
        (["data.name=digitz"], ["digits"]),
        (["attack.name=pgf"], ["pgd"]),
        (["eval.attack=apgd-cee"], ["apgd-ce"]),
        (["attack.schedule=hinje(t1=1,t2=2)"], ["hinge"]),
        (["attack.schedule=hinge(t1=2,t2=1)"], ["t1", "t2"]),
        (["attack.eps=8"], ["8/255"]),
        (["attack.eps=x/255"], ["cannot parse"]),
        (["model.weights=/nonexistent/w.safetensors"], ["/nonexistent/w.safetensors"]),
    ],
)
def test_bad_input_is_one_line(
    overrides: list[str], words: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", SMOKE, "--run-dir", str(tmp_path / "r")]
    for o in overrides:
        argv += ["--set", o]
    _assert_one_line_error(*run_cli(capsys, *argv)[::2], *words)


def test_corrupt_weights_and_empty_imagefolder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    code, _, err = run_cli(
        capsys, "train", SMOKE, "--run-dir", str(tmp_path / "a"), "--set", f"model.weights={bad}"
    )
    _assert_one_line_error(code, err, str(bad))
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(
        capsys,
        "train",
        SMOKE,
        "--run-dir",
        str(tmp_path / "b"),
        "--set",
        f"data.name=imagefolder:{empty}",
    )
    _assert_one_line_error(code, err, str(empty))
    (empty / "cat").mkdir()
    (empty / "cat" / "notes.txt").write_text("not an image")
    code, _, err = run_cli(
        capsys,
        "train",
        SMOKE,
        "--run-dir",
        str(tmp_path / "c"),
        "--set",
        f"data.name=imagefolder:{empty}",
    )
    _assert_one_line_error(code, err)


def test_bad_cli_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _assert_one_line_error(*run_cli(capsys, "trian")[::2], "train")
    _assert_one_line_error(
        *run_cli(capsys, "train", str(tmp_path / "missing.yaml"))[::2], "not found"
    )
    _assert_one_line_error(*run_cli(capsys, "eval", str(tmp_path / "nothing"))[::2], "not found")
    _assert_one_line_error(*run_cli(capsys, "demo", "--eps", "8")[::2], "8/255")
    _assert_one_line_error(
        *run_cli(capsys, "train", SMOKE, "--set", "train.epochs")[::2], "key=value"
    )
    # the program's name once: "robustft: error: robustft: ..." read it twice
    code, _, err = run_cli(capsys, "train", SMOKE, "--bogus")
    assert code == 2 and err == "robustft: error: unrecognized arguments: --bogus (see --help)\n"
    code, _, err = run_cli(capsys, "train")
    assert code == 2 and err.startswith("robustft: error: robustft train: the following arguments")


def test_one_step_attacks_ignore_steps(smoke_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys,
        "eval",
        str(smoke_run),
        "--attack",
        "fgsm-rs",
        "--eps-max",
        "1/255",
        "--max-examples",
        "8",
    )
    assert code == 0, err
    assert "fgsm-rs" in out
