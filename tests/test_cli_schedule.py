"""``robustft schedule``: table, JSON and one-line errors through ``robustft.cli.main``."""

from __future__ import annotations

import json

import pytest

from robustft import cli


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["schedule", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_for_the_paper_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "hinge(t1=12,t2=37)", "--epochs", "50", "--eps", "8/255")
    assert code == 0
    assert err == ""
    lines = out.splitlines()
    assert "hinge(t1=12,t2=37)" in lines[0]
    assert "8/255" in lines[0]
    assert lines[1].split()[:4] == ["epoch", "eps/255", "eps", "alpha"]
    rows = {int(line.split()[0]): line for line in lines[2:52]}
    assert sorted(rows) == list(range(1, 51))
    assert rows[12].split()[1:4] == ["0.00", "0.000000", "0.0000"]
    assert rows[13].split()[1:4] == ["0.32", "0.001255", "0.0400"]
    assert rows[37].split()[1:4] == ["8.00", "0.031373", "1.0000"]
    assert rows[37].endswith("|" + "#" * 40)
    assert rows[12].endswith("|")
    assert lines[52] == "12 epochs at eps = 0, 24 in between, 14 at eps_g (alpha = 1)"
    assert len(lines) == 53
    widths = {len(line.split("|")[0]) for line in lines[1:52]}
    assert len(widths) == 1  # aligned columns


def test_defaults_are_50_epochs_at_8_255(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "hinge", "--json")
    assert code == 0
    data = json.loads(out)
    assert len(data) == 50
    assert data[-1]["eps"] == pytest.approx(8 / 255)


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "hinge(t1=12,t2=37)", "--epochs", "50", "--json")
    assert code == 0
    assert err == ""
    data = json.loads(out)
    assert [row["epoch"] for row in data] == list(range(1, 51))
    assert all(isinstance(row["epoch"], int) for row in data)
    assert {"epoch", "eps", "alpha"} == set(data[0])
    assert data[11]["eps"] == 0.0
    assert data[12]["eps"] == pytest.approx(8 / 255 / 25)
    assert data[12]["alpha"] == pytest.approx(0.04)
    assert data[36]["eps"] == pytest.approx(8 / 255)


def test_json_piecewise_and_eps_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "piecewise(0:0,10:0.5,30:1)", "--eps", "4/255", "--json")
    assert code == 0
    data = json.loads(out)
    assert data[9]["eps"] == pytest.approx(2 / 255)
    assert data[19]["eps"] == pytest.approx(3 / 255)


def test_step_granularity_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["linear(t2=4)", "--epochs", "6", "--granularity", "step", "--steps-per-epoch", "4"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    lines = out.splitlines()
    assert "per step" in lines[0]
    assert "first/255" in lines[1]
    assert lines[2].split()[:3] == ["1", "0.50", "2.00"]  # 8/255 * 1/16 and * 1/4


def test_uniform_uses_seed(capsys: pytest.CaptureFixture[str]) -> None:
    outs = [run(capsys, "uniform", "--json", "--seed", seed)[1] for seed in ("1", "1", "2")]
    assert outs[0] == outs[1] != outs[2]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["hinje"], ["did you mean 'hinge'?"]),
        (["hinge(t1=37,t2=12)"], ["t1=37", "t2=12"]),
        (["hinge(t1=12,t2=60)", "--epochs", "50"], ["beyond", "50 epochs"]),
        (["hinge(t1=12"], ["unbalanced parentheses"]),
        (["hinge(t3=1)"], ["unknown parameter 't3'"]),
        (["hinge(t1=)"], ["missing"]),
        (["hinge(t1=-1)"], [">= 0"]),
        (["hinge", "--eps", "8"], ["8/255"]),
        (["hinge", "--epochs", "0"], ["epochs"]),
        (["hinge", "--epochs", "x"], ["--epochs"]),
        (["hinge", "--granularity", "batch"], ["granularity"]),
        (["hinge", "--granularity", "step", "--steps-per-epoch", "0"], ["steps-per-epoch"]),
        ([""], ["empty schedule"]),
    ],
)
def test_bad_input_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], words: list[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("robustft: error: ")
    assert "Traceback" not in err
    for word in words:
        assert word in err


def test_help_explains_the_grammar(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["schedule", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for text in ("hinge(t1=12,t2=37)", "piecewise(0:0,10:0.5,30:1)", "uniform(seed=3)", "0.24"):
        assert text in out
    assert "examples:" in out
