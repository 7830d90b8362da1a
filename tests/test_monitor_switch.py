"""``monitor.action: switch``: at catastrophic overfitting, back to the last healthy epoch and on
with a multi-step attack; recorded in the metrics, result.json and its cost; resumed with the
multi-step attack; bad switch settings refused before anything runs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from robustft import cli
from robustft.config import load_config
from robustft.report.collect import load_run
from robustft.report.cost import cost_tables
from robustft.run.checkpoint import load_checkpoint
from robustft.training import loop
from robustft.training.fit import fit

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
TINY = [
    "model.name=timm:test_efficientnet",
    "model.pretrained=false",
    "data.image_size=16",
    "data.max_train_per_class=2",
    "eval.max_examples=8",
    "eval.steps=1",
    "train.threads=1",
    "train.epochs=4",
    "attack.name=fgsm",
    "attack.schedule=hinge(t1=1,t2=2)",  # epoch 1 at eps 0 (not monitored), then eps > 0
    "monitor.action=switch",
    "monitor.switch_steps=3",
]
TIMES = ("seconds", "examples_per_second", "val_seconds", "monitor_seconds")


def switch_config(*overrides: str) -> Any:
    return load_config(SMOKE, [*TINY, *overrides])


@pytest.fixture(autouse=True)
def overfit_at_epoch_3(monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitor's measurement, faked: healthy, except epoch 3 trained with the one-step
    attack, where PGD accuracy collapses (0.40 -> 0.00) while FGSM's jumps to 0.90. A function
    of the run's state, so a resumed run sees what an uninterrupted one saw."""

    def fake(state: Any, epoch: int, eps: float) -> dict[str, Any]:
        if eps <= 0:
            return {}
        flagged = epoch == 3 and state.switched is None
        pgd, fgsm = (0.0, 0.9) if flagged else (0.4, 0.45)
        out = {"co_pgd_acc": pgd, "co_fgsm_acc": fgsm, "co_eps": eps, "co_flagged": flagged}
        return {**out, "monitor_seconds": 0.0}

    monkeypatch.setattr(loop, "monitor_epoch", fake)


def read_rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def untimed(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in TIMES}


def test_switch_rolls_back_and_trains_on_with_pgd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the state each epoch starts from: the retrained epoch 3 must start from epoch 2's end
    starts: list[tuple[int, dict[str, torch.Tensor], dict[str, Any], int]] = []
    train_epoch = loop.train_epoch

    def recording(state: Any, epoch: int, callbacks: Any) -> dict[str, Any]:
        model = copy.deepcopy(state.model.state_dict())
        starts.append((epoch, model, copy.deepcopy(state.optimizer.state_dict()), state.step))
        return train_epoch(state, epoch, callbacks)

    monkeypatch.setattr("robustft.training.fit.train_epoch", recording)
    run = tmp_path / "r"
    result = fit(switch_config(), run)

    assert [s[0] for s in starts] == [1, 2, 3, 3, 4]  # epoch 3 twice: fgsm, then pgd-3
    (_, before, opt_before, step_before), (_, after, opt_after, step_after) = starts[2:4]
    assert step_before == step_after  # the lr schedule goes on from epoch 2's end
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    for a, b in zip(
        opt_before["state"].values(), opt_after["state"].values(), strict=True
    ):  # optimizer state (momentum) of epoch 2's end too
        assert all(torch.equal(a[k], b[k]) for k in a)

    rows = read_rows(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert [r["train_attack"] for r in rows] == ["fgsm", "fgsm", "pgd-3", "pgd-3"]
    # passes per optimizer step: eps 0 none, FGSM 1 + 1, PGD-3 3 + 1
    assert [r["forward_passes"] / r["steps"] for r in rows] == [1, 2, 4, 4]
    assert [r["backward_passes"] / r["steps"] for r in rows] == [1, 2, 4, 4]

    switched = result["switched"]
    assert switched is not None and result["stopped"] is None
    (dropped,) = switched.pop("discarded")
    assert switched == {
        "reason": "catastrophic_overfitting",
        "onset": 3,
        "rolled_back_to": 2,
        "from_attack": "fgsm",
        "to_attack": "pgd-3",
    }
    assert dropped["epoch"] == 3 and dropped["co_flagged"] and dropped["train_attack"] == "fgsm"
    assert json.loads((run / "result.json").read_text())["switched"]["onset"] == 3

    cost = result["cost"]
    spent = [*rows, dropped]  # the discarded epoch was spent too
    assert cost["train_forward_passes"] == sum(r["forward_passes"] for r in spent)
    assert cost["train_steps"] == sum(r["steps"] for r in spent)
    switch = cost["switch"]
    assert switch is not None
    assert (switch["discarded_epochs"], switch["retrained_epochs"]) == (1, 2)
    assert (switch["discarded_passes_per_step"], switch["retrained_passes_per_step"]) == (2, 4)
    assert switch["discarded_example_passes"] == 2 * 2 * dropped["examples"]
    assert switch["retrained_example_passes"] == 2 * 4 * sum(r["examples"] for r in rows[2:])
    assert switch["retrained_seconds"] == round(rows[2]["seconds"] + rows[3]["seconds"], 3)
    assert result["train_seconds"] >= switch["retrained_seconds"] + switch["discarded_seconds"]

    (co,) = [f for f in result["findings"] if f["code"] == "catastrophic_overfitting"]
    assert "at epoch 3" in co["message"] and "collapsed to 0.0%" in co["message"]
    assert "switch" in co["message"] and "pgd-3" in co["message"]

    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    assert checkpoint["switched"]["to_attack"] == "pgd-3" and checkpoint["epoch"] == 4

    (table,) = cost_tables([load_run(run)])  # the report's Cost table says what it includes
    assert table.switched == 1 and "1 run switched to a multi-step attack" in table.caption()


class Killed(Exception):
    pass


class KillAt:
    """Kill the run at the end of the epoch ``when`` picks (after its checkpoint)."""

    def __init__(self, when: Any) -> None:
        self.when = when

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        if self.when(row):
            raise Killed(row["epoch"])


@pytest.mark.parametrize(
    "when",
    [
        pytest.param(lambda r: r.get("co_flagged"), id="at-the-switch"),
        pytest.param(lambda r: r["epoch"] == 3 and r["train_attack"] == "pgd-3", id="after"),
    ],
)
def test_resume_after_the_switch_goes_on_with_pgd(tmp_path: Path, when: Any) -> None:
    config = switch_config()
    reference = fit(config, tmp_path / "ref")
    run = tmp_path / "r"
    with pytest.raises(Killed):
        fit(config, run, callbacks=KillAt(when))
    assert load_checkpoint(run / "checkpoints" / "last.pt")["switched"]["onset"] == 3
    resumed = fit(config, run, resume=True)

    for key in ("clean_accuracy", "robust_accuracy", "expected_robustness", "final_val_acc"):
        assert resumed[key] == reference[key], key
    rows, ref_rows = read_rows(run), read_rows(tmp_path / "ref")
    assert [untimed(r) for r in rows] == [untimed(r) for r in ref_rows]  # bitwise, no re-switch
    assert [r["train_attack"] for r in rows] == ["fgsm", "fgsm", "pgd-3", "pgd-3"]
    assert resumed["switched"] is not None and reference["switched"] is not None
    assert [untimed(r) for r in resumed["switched"]["discarded"]] == [
        untimed(r) for r in reference["switched"]["discarded"]
    ]
    final = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    for name, value in load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")[
        "model"
    ].items():
        assert torch.equal(final[name], value), name


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["monitor.switch_attack=fgsm"], ["monitor.switch_attack", "'fgsm'", "pgd, apgd-ce"]),
        (["monitor.switch_attack=n-fgsm"], ["monitor.switch_attack", "'n-fgsm'"]),
        (["monitor.switch_attack=pgdd"], ["monitor.switch_attack", "'pgdd'", "pgd"]),
        (["monitor.switch_steps=1"], ["monitor.switch_steps", ">= 2", "1"]),
        (
            ["attack.name=pgd", "attack.steps=7", "monitor.switch_steps=null"],
            ["monitor.action=switch", "already trains with pgd", "attack.steps=7"],
        ),
        (["monitor.action=swtich"], ["monitor.action", "'swtich'", "switch"]),
    ],
)
def test_bad_switch_settings_are_one_line_and_leave_no_run_dir(
    overrides: list[str],
    words: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["train", str(SMOKE), "--run-dir", str(tmp_path / "r")]
    for item in [*TINY, *overrides]:
        argv += ["--set", item]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustft: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)
    assert not (tmp_path / "r").exists()


def test_switch_to_a_stronger_pgd_is_allowed_and_new_keys_keep_old_run_ids() -> None:
    config = switch_config("attack.name=pgd", "attack.steps=2", "monitor.switch_steps=7")
    assert config.monitor.switch_to == ("pgd", 7)
    plain = load_config(SMOKE)
    data = plain.to_dict()
    data["monitor"].pop("switch_attack")
    data["monitor"].pop("switch_steps")
    from robustft.config import build_config

    assert build_config(data).run_id() == plain.run_id()  # null new keys: same id as before
    assert load_config(SMOKE, ["monitor.switch_steps=7"]).run_id() != plain.run_id()


def test_epoch_line_names_the_training_attack_of_a_switch_run() -> None:
    import io

    from robustft.commands._render import Progress

    stream = io.StringIO()
    row = {"epoch": 3, "eps": 8 / 255, "train_loss": 2.0, "train_acc": 0.2, "val_acc": 0.1}
    Progress(stream).on_epoch_end({**row, "seconds": 1.0, "train_attack": "pgd-7"})
    Progress(stream).on_epoch_end({**row, "seconds": 1.0})  # other runs: as before
    assert stream.getvalue().splitlines() == [
        "epoch 3 eps 8/255 pgd-7 loss 2.000 train 20.00% val 10.00% (1.0s)",
        "epoch 3 eps 8/255 loss 2.000 train 20.00% val 10.00% (1.0s)",
    ]


def test_a_run_switches_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flagged again after the switch (the multi-step epochs overfit too): recorded, no second
    switch, training goes on to the last epoch."""

    def always_overfit_from_3(state: Any, epoch: int, eps: float) -> dict[str, Any]:
        flagged = epoch >= 3
        pgd, fgsm = (0.0, 0.9) if flagged else (0.4, 0.45)
        out = {"co_pgd_acc": pgd, "co_fgsm_acc": fgsm, "co_eps": eps, "co_flagged": flagged}
        return {**out, "monitor_seconds": 0.0} if eps > 0 else {}

    monkeypatch.setattr(loop, "monitor_epoch", always_overfit_from_3)
    result = fit(switch_config(), tmp_path / "r")
    rows = read_rows(tmp_path / "r")
    assert [(r["epoch"], r["train_attack"], r.get("co_flagged")) for r in rows] == [
        (1, "fgsm", None),
        (2, "fgsm", False),
        (3, "pgd-3", True),
        (4, "pgd-3", True),
    ]
    assert result["switched"] is not None and result["switched"]["onset"] == 3
    assert result["stopped"] is None
