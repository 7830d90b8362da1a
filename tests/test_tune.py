"""``robustft tune`` input checks: one line and exit code 2 before Ray starts (Ray is not
needed for these; the tuning itself is tested on a local Ray instance in test_ray.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from robustft import cli
from robustft.tune.spec import Search, parse_search

SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")


def test_searches_parse_with_their_types() -> None:
    assert parse_search("train.lr=loguniform(1e-5,1e-2)") == Search(
        "train.lr", "loguniform", (1e-5, 1e-2)
    )
    assert parse_search("train.batch_size = randint(8, 32)").args == (8, 32)
    assert parse_search("train.optimizer=choice(sgd,adamw)").args == ("sgd", "adamw")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--search", "train.lr=1e-3"], "expected KEY=KIND(ARGS)"),
        (["--search", "train.lrr=loguniform(1e-5,1e-2)"], "unknown config key 'train.lrr'"),
        (["--search", "train.lr=lognormal(1e-5,1e-2)"], "unknown distribution 'lognormal'"),
        (["--search", "train.lr=loguniform(1e-2,1e-5)"], "need low < high"),
        (["--search", "train.lr=loguniform(0,1e-2)"], "low > 0 for loguniform"),
        (["--search", "train.lr=uniform(-1,1)"], "train.lr"),  # a bound that is no valid lr
        (["--search", "train.lr=uniform(1e-4,1e-3)", "--trials", "0"], "--trials must be >= 1"),
        (["--search", "train.lr=uniform(1e-4,1e-3)", "--metric", "val_ac"], "did you mean"),
        (["--search", "train.lr=uniform(1e-4,1e-3)", "--grace", "9"], "exceeds train.epochs"),
        (["--search", "train.lr=uniform(1e-4,1e-3)", "--gpus-per-trial", "2"], "one GPU"),
        ([], "needs at least one --search"),
    ],
)
def test_bad_tune_arguments_are_one_line(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = cli.main(["tune", SMOKE, "--out", str(tmp_path / "t"), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("robustft: error: ") and err.count("\n") == 1, err
    assert needle in err, err
    assert not (tmp_path / "t").exists()  # nothing started, nothing written


def test_the_trials_table_keeps_a_bar_in_one_cell(tmp_path: Path) -> None:
    """Issue 20 point 3: ``trials.md`` did not escape ``|``, so a choice of regular-expression
    LoRA targets (``qkv|proj``) split its row into one cell too many; ``trials.csv`` ended its
    lines in ``\\r\\n`` where ``report.csv`` ends them in ``\\n``; the percentages were 4
    significant digits of a rounded number (``5``, ``100``) where every other table shows 2
    decimals."""
    import csv
    import io

    from robustft.config import load_config
    from robustft.tune.spec import TuneSpec
    from robustft.tune.trials import Trial, TuneDir, write_outputs

    config = load_config(SMOKE, ["model.mode=lora"]).to_dict()
    search = parse_search("model.lora_targets=choice(qkv|proj,fc1)")
    spec = TuneSpec(config, (search,), trials=2)
    result = {"clean_accuracy": 0.05, "robust_accuracy": 0.98765, "expected_robustness": 1.0}
    trials = [
        Trial(1, "r1", {search.key: "qkv|proj"}, "done", 2, 0.91234, result),
        Trial(2, "r2", {search.key: "fc1"}, "failed", 0, None, None, "boom"),
    ]
    layout = TuneDir(tmp_path)
    write_outputs(spec, layout, trials)
    lines = layout.table_md.read_text().splitlines()
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    assert {len(row) for row in cells} == {len(cells[0])}, lines
    assert cells[2][2] == "qkv\\|proj" and cells[2][-3:] == ["5.00", "98.77", "100.00"]
    assert cells[3][-4:] == ["-", "-", "-", "-"]
    raw = layout.table_csv.read_bytes()
    assert b"\r" not in raw and raw.count(b"\n") == 3
    rows = list(csv.reader(io.StringIO(raw.decode())))
    assert rows[1][2] == "qkv|proj" and rows[1][-3:] == ["5.00", "98.77", "100.00"]


def test_tune_spec_from_a_file_takes_the_metric_s_mode(tmp_path: Path) -> None:
    """The library builds what the command gives Ray Tune (issue 20 point 4): a spec from a
    config file, overrides and search texts; its mode defaults to the metric's (train_loss is
    minimised; the dataclass said max for every metric)."""
    from robustft.errors import UserError
    from robustft.tune.spec import TuneSpec
    from robustft.tune.trials import Trial, TuneDir, TuneResult

    spec = TuneSpec.from_file(
        SMOKE,
        overrides=["train.epochs=3"],
        searches=["train.lr=loguniform(1e-5,1e-2)"],
        metric="train_loss",
    )
    assert (spec.mode, spec.base().train.epochs, spec.searches[0].key) == ("min", 3, "train.lr")
    assert TuneSpec.from_file(SMOKE, searches=["train.lr=uniform(1e-4,1e-3)"]).mode == "max"
    assert (
        TuneSpec.from_file(SMOKE, searches=["train.lr=uniform(1e-4,1e-3)"], mode="min").mode
        == "min"
    )

    layout = TuneDir(tmp_path)
    trials = [
        Trial(2, "b", {"train.lr": 1e-3}, "early-stopped", 1, 0.5),
        Trial(1, "a", {"train.lr": 1e-4}, "failed", 0, None, error="boom"),
    ]
    result = TuneResult(spec, layout, trials)
    assert result.counts() == {"done": 0, "early-stopped": 1, "failed": 1}
    headers, rows = result.table()
    assert headers[:3] == ["trial", "run id", "lr"] and [row[0] for row in rows] == ["2", "1"]
    with pytest.raises(
        UserError, match=rf"^no trial finished all its epochs.*\({layout.table_md}\)$"
    ):
        result.best()
    done = Trial(3, "c", {"train.lr": 1e-2}, "done", 3, 0.1)
    assert TuneResult(spec, layout, [done, *trials]).best() is done
