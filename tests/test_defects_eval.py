"""Issue 19's evaluation defects: eval settings checked only after training, eps_max 0 turned
into 8/255, eval/export of runs still training or failed without a word, an l2 evaluation of an
l-inf run on the 1/255 step, AutoAttack stored from another sample than the curve; each test
failed before its fix."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

import robustft
from conftest import StopAfterFirstEpoch
from robustft import cli
from robustft.config import build_config, load_config
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
    "eval.attack=fgsm",
    "eval.steps=1",
    "eval.max_examples=8",
    "eval.eps_max=32/255",
    "train.threads=1",
]
FAST = ("--attack", "fgsm", "--max-examples", "4", "--device", "cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``interrupted``: a run stopped after epoch 1 of 2 (its checkpoint is of epoch 1);
    ``finished``: the same config run to the end (curve on 8 examples, seed 0)."""
    from robustft.training.fit import cpu_threads, fit

    base = tmp_path_factory.mktemp("evalruns")
    config = load_config(SMOKE, TINY)
    with cpu_threads(1):
        with pytest.raises(KeyboardInterrupt):
            fit(config, base / "interrupted", callbacks=StopAfterFirstEpoch(), device="cpu")
        fit(config, base / "finished", device="cpu")
    return {"interrupted": base / "interrupted", "finished": base / "finished"}


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def fail_at(epoch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make training raise the numerical fault ``train_epoch`` raises on a NaN loss, at
    ``epoch``: ``fit`` then records ``failure.json`` as for a real one."""
    import robustft.training.fit as train
    from robustft.training.loop import _fault

    real = train.train_epoch

    def train_epoch(state: Any, number: int, cb: Any) -> Any:
        if number == epoch:
            raise _fault(state, "nan_loss", float("nan"), "loss is nan")
        return real(state, number, cb)

    monkeypatch.setattr(train, "train_epoch", train_epoch)


def failed_run(source: Path, target: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the interrupted run resumed and failed at epoch 2 (checkpoint: epoch 1)."""
    from robustft.errors import NumericalFault
    from robustft.training.fit import fit

    run = copy_run(source, target)
    fail_at(2, monkeypatch)
    config = load_config(SMOKE, TINY)
    with pytest.raises(NumericalFault):
        fit(config, run, resume=True, device="cpu")
    assert (run / "failure.json").is_file()
    return run


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("robustft: error: "), err
    return lines[0]


# point 4


@pytest.mark.parametrize("value", [0, "0/255", 0.0])
def test_eval_eps_max_zero_is_refused_in_a_config(value: object) -> None:
    """`eval.eps_max: 0` became 8/255 (the grid and E.rob then said 8/255) while
    `robustft eval RUN --eps-max 0` was refused."""
    with pytest.raises(UserError) as info:
        build_config({"eval": {"eps_max": value}})
    message = str(info.value)
    assert message.startswith("config eval.eps_max: expected a size > 0"), message
    assert "null for the training eps_g" in message


# point 5


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("eval.max_examples=0", "eval.max_examples"),
        ("eval.max_examples=-1", "eval.max_examples"),
        ("eval.seed=-5", "eval.seed"),
        (f"eval.seed={2**64}", "eval.seed"),
        ("eval.batch_size=0", "eval.batch_size"),
        ("eval.eps_max=0", "eval.eps_max"),
    ],
)
def test_eval_keys_are_refused_before_training(
    override: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """These trained to the end and then failed (seed, batch size: with a traceback); the
    run id holds them, so the fix needed --force and a full retrain."""
    run_dir = tmp_path / "run"
    argv = ["train", str(SMOKE), "--run-dir", str(run_dir), "--device", "cpu"]
    for item in [*TINY, override]:
        argv += ["--set", item]
    assert cli.main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"robustft: error: config {key}: expected "), line
    assert override.split("=")[1] in line
    assert not run_dir.exists()  # nothing written


def test_autoattack_on_too_few_classes_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`eval.autoattack` on a 3-class task trained to the end, then failed."""
    rng = np.random.default_rng(0)
    for cls in ("a", "b", "c"):
        (tmp_path / "pool" / cls).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "pool" / cls / f"{i}.png")
    run_dir = tmp_path / "run"
    argv = ["train", str(SMOKE), "--run-dir", str(run_dir), "--device", "cpu"]
    overrides = [f"data.name=imagefolder:{tmp_path / 'pool'}", "eval.autoattack=standard"]
    for item in [*TINY, *overrides]:
        argv += ["--set", item]
    assert cli.main(argv) == 2
    assert "AutoAttack needs at least 4 classes" in one_error_line(capsys.readouterr().err)
    assert not run_dir.exists()


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_eval_command_refuses_a_bad_seed_in_one_line(
    seed: str, runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`robustft eval RUN --seed -1` was a numpy traceback."""
    assert cli.main(["eval", str(runs["interrupted"]), "--seed", seed, *FAST]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == f"robustft: error: --seed must be an integer in [0, 2**64), got {seed}"


def test_evaluate_refuses_a_bad_seed_and_sample_size_in_one_line(
    tiny_model: torch.nn.Module,
) -> None:
    """robustft.evaluate(seed=-1) was a numpy traceback; max_examples=0 said the data was
    empty, -1 too."""
    data = TensorDataset(torch.rand(12, 3, 16, 16), torch.arange(12) % 4)
    with pytest.raises(UserError, match=r"^seed: expected an integer in \[0, 2\*\*64\), got -1$"):
        robustft.evaluate(tiny_model, data, eps_max="1/255", seed=-1, max_examples=6)
    for bad in (0, -1):
        with pytest.raises(UserError, match=rf"^max_examples: expected an integer >= 1, got {bad}"):
            robustft.evaluate(tiny_model, data, eps_max="1/255", max_examples=bad)


# point 9


def test_eval_in_l2_of_an_linf_run_uses_a_step_in_l2_units(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    """`--norm l2 --eps-max 0.5` kept the run's 1/255 step: "eps max 127.5/255 is not a
    multiple of step 1/255"."""
    argv = ["eval", str(runs["finished"]), "--norm", "l2", "--eps-max", "0.5", *FAST]
    assert cli.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "eps_step 0.0625 (run: 1/255)" in out
    rows = out.split("--------", 1)[1].splitlines()[1:10]
    assert [row.split()[0] for row in rows] == [f"{0.0625 * i:.4g}" for i in range(9)]


def test_evaluate_in_l2_defaults_to_a_step_in_l2_units(tiny_model: torch.nn.Module) -> None:
    """robustft.evaluate(norm="l2", eps_max=0.5) had the 1/255 default step: refused."""
    data = TensorDataset(torch.rand(6, 3, 16, 16), torch.arange(6) % 3)
    curve = robustft.evaluate(tiny_model, data, eps_max=0.5, norm="l2", attack="fgsm")
    assert list(curve.epsilons) == [0.0625 * i for i in range(9)]
    curve = robustft.evaluate(tiny_model, data, eps_max="2/255", attack="fgsm")
    assert list(curve.epsilons) == [0, 1 / 255, 2 / 255]  # l-inf keeps 1/255


# point 7


def test_eval_and_export_of_a_run_still_training_say_so_and_which_epoch(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    """Evaluating a run in progress silently used whatever checkpoint existed (two evals a
    minute apart gave 5.62% and 4.37%)."""
    from robustft.run.rundir import RunDir, locked

    run = copy_run(runs["interrupted"], tmp_path / "run")
    with locked(RunDir(run)):  # as the process training it holds it
        assert cli.main(["eval", str(run), *FAST]) == 0
        out = capsys.readouterr().out
        note = next(line for line in out.splitlines() if line.startswith("note: "))
        assert f"{run} is still training (in use by pid" in note, note
        assert "its checkpoint is of epoch 1 of 2, not the final model" in note
        out_file = tmp_path / "export" / "model.safetensors"
        assert cli.main(["export", str(run), "--out", str(out_file)]) == 0
        assert "is still training" in capsys.readouterr().out
        card = (out_file.parent / "README.md").read_text()
        assert "was still training when it was exported" in card
        assert "checkpoint of epoch 1 of 2" in card
    assert cli.main(["eval", str(run), *FAST]) == 0  # interrupted: no process holds it
    out = capsys.readouterr().out
    assert f"note: {run} has not finished (interrupted, or not started); its checkpoint" in out


def test_eval_export_and_report_of_a_failed_run_say_it_failed_and_why(
    runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    one_thread: None,
) -> None:
    """A failed run was evaluated without a word, its model card said "had not finished" and
    the report listed it as "unfinished run?"."""
    from robustft.report.collect import collect_runs

    folder = tmp_path / "sweep"
    run = failed_run(runs["interrupted"], folder / "failed", monkeypatch)
    assert cli.main(["eval", str(run), *FAST]) == 0
    out = capsys.readouterr().out
    fault = "numerical fault at epoch 2, step 1 of 15 (step 16 of the run): "
    assert f"note: {run} failed ({fault}" in out
    assert "its checkpoint is of epoch 1 of 2, not the final model" in out
    out_file = tmp_path / "export" / "model.safetensors"
    assert cli.main(["export", str(run), "--out", str(out_file)]) == 0
    assert f"note: {run} failed (numerical fault at epoch 2" in capsys.readouterr().out
    card = (out_file.parent / "README.md").read_text()
    assert "The run failed: numerical fault at epoch 2" in card
    assert "last checkpoint, epoch 1 of 2: no test results" in card
    assert "had not finished" not in card

    copy_run(runs["finished"], folder / "finished")
    skipped = collect_runs(folder).skipped
    assert len(skipped) == 1, skipped
    assert skipped[0].startswith(f"skipped {run}: failed (numerical fault at epoch 2, step 1 of 15")
    assert skipped[0].endswith("; 1 of 2 epochs done, no result.json")


def test_a_run_that_failed_before_its_first_checkpoint_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """eval/export said "checkpoint not found" although failure.json said why."""
    from robustft.errors import NumericalFault
    from robustft.run.rundir import RunDir, locked
    from robustft.training.fit import fit

    run = tmp_path / "run"
    fail_at(1, monkeypatch)
    with pytest.raises(NumericalFault):
        fit(load_config(SMOKE, TINY), run, device="cpu")
    for argv in (
        ["eval", str(run), *FAST],
        ["export", str(run), "--out", str(tmp_path / "m.safetensors")],
    ):
        assert cli.main(argv) == 2
        line = one_error_line(capsys.readouterr().err)
        fault = "numerical fault at epoch 1, step 1 of "
        assert line.startswith(f"robustft: error: {run} failed ({fault}")
        assert line.endswith("before its first checkpoint: there is no model")
    (run / "failure.json").unlink()
    with locked(RunDir(run)):  # a run still in its first epoch
        assert cli.main(["eval", str(run), *FAST]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"{run} is still training (in use by pid" in line
        assert line.endswith(
            "has no checkpoint yet (its first epoch has not ended); try again later"
        )


# point 14


def test_autoattack_is_stored_only_beside_a_curve_of_the_same_sample(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    """`eval --autoattack --max-examples 20` on a run whose curve used 40 stored it next to
    the curve, and the report showed it without n."""
    from robustft.report.collect import load_run
    from robustft.report.tables import RUN_HEADERS, run_rows

    run = copy_run(runs["finished"], tmp_path / "run")
    result = json.loads((run / "result.json").read_text())
    assert result["autoattack"] is None and result["eval_examples"] == 8
    argv = ["eval", str(run), "--autoattack", "--device", "cpu"]
    assert cli.main([*argv, "--max-examples", "4"]) == 0
    out = capsys.readouterr().out
    assert (
        f"note: AutoAttack not stored in {run}: measured on 4 examples (seed 0), the run's "
        "curve on 8 examples (seed 0); measure it without --max-examples and --seed to store it"
    ) in out, out
    assert json.loads((run / "result.json").read_text())["autoattack"] is None
    assert json.loads((run / "robustness.json").read_text())["autoattack"] is None

    assert cli.main(argv) == 0  # the run's own sample: stored
    assert f"AutoAttack stored in {run / 'result.json'}" in capsys.readouterr().out
    assert json.loads((run / "result.json").read_text())["autoattack"]["n"] == 8
    row = dict(zip(RUN_HEADERS, run_rows([load_run(run)])[0]))
    assert row["AutoAttack %"].endswith("(standard, n=8)"), row

    out_file = tmp_path / "export" / "model.safetensors"
    assert cli.main(["export", str(run), "--out", str(out_file)]) == 0
    card = (out_file.parent / "README.md").read_text()
    assert "name: AutoAttack (standard) at linf 32/255, 8 examples" in card
