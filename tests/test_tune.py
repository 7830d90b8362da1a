"""``robustft tune`` input checks: one line and exit code 2 before Ray starts (Ray is not
needed for these; the tuning itself is tested on a local Ray instance in test_ray.py)."""

from __future__ import annotations

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
