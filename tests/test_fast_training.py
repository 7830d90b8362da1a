"""Fast and parameter-efficient robust fine-tuning: measured pass counts, the catastrophic-
overfitting monitor, numerical faults, trainable-only checkpoints and export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from conftest import TinyCNN
from robustft import attacks, cli
from robustft.config import build_config, load_config
from robustft.cost import PassCount, count_passes
from robustft.diagnostics import diagnose_run
from robustft.errors import NumericalFault, UserError
from robustft.monitor import OverfitRule, overfit_onset
from robustft.objectives import AdversarialCE
from robustft.run.checkpoint import load_checkpoint, save_checkpoint
from robustft.run.export import load_exported, read_metadata
from robustft.run.load import load_trained_model
from robustft.sweep.driver import run_sweep
from robustft.sweep.spec import load_sweep
from robustft.sweep.store import SweepStore
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
]


def tiny_config(*overrides: str) -> Any:
    return load_config(SMOKE, [*TINY, *overrides])


# --------------------------------------------------------------------------- pass counting


def one_step_passes(name: str, steps: int, eps: float = 8 / 255) -> PassCount:
    """Passes of one adversarial training step (attack + update) of a tiny CNN, measured."""
    torch.manual_seed(0)
    model = TinyCNN()
    x, y = torch.rand(6, 3, 16, 16), torch.randint(0, 10, (6,))
    hyper = {} if name.startswith("fgsm") else {"steps": steps}
    objective = AdversarialCE(attacks.create(name, norm="linf", **hyper))
    with count_passes(model) as passes:
        objective(model, x, y, eps).loss.backward()
    return passes


@pytest.mark.parametrize(
    ("name", "steps", "expected"), [("fgsm", 1, 2), ("fgsm-rs", 1, 2), ("pgd", 7, 8)]
)
def test_training_step_pass_counts(name: str, steps: int, expected: int) -> None:
    passes = one_step_passes(name, steps)
    assert (passes.forward, passes.backward) == (expected, expected)
    assert passes.example_forward == 6 * expected


def test_standard_step_is_one_pass_and_apgd_counts_what_it_runs() -> None:
    assert one_step_passes("pgd", 7, eps=0.0).forward == 1  # eps 0: no attack at all
    apgd = one_step_passes("apgd-ce", 7)
    assert apgd.backward == apgd.forward and 8 <= apgd.forward <= 9


def test_no_grad_forwards_count_without_backward() -> None:
    model = TinyCNN()
    with count_passes(model) as passes, torch.no_grad():
        model(torch.rand(4, 3, 16, 16))
    assert (passes.forward, passes.backward, passes.example_forward) == (1, 0, 4)
    model(torch.rand(2, 3, 16, 16))  # hooks are gone after the block
    assert passes.forward == 1


# --------------------------------------------------------------------------- the monitor


def rows(*pairs: tuple[float, float] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for epoch, pair in enumerate(pairs, start=1):
        row: dict[str, Any] = {"epoch": epoch, "eps": 8 / 255, "val_acc": 0.9}
        if pair is not None:
            row["co_pgd_acc"], row["co_fgsm_acc"] = pair
        out.append(row)
    return out


@pytest.mark.parametrize(
    ("history", "onset"),
    [
        # healthy FGSM-RS training: PGD a few points below FGSM, both rising
        (rows(None, (0.30, 0.35), (0.40, 0.46), (0.45, 0.52)), None),
        # not robust yet: both low, never flagged
        (rows((0.02, 0.05), (0.01, 0.08)), None),
        # catastrophic overfitting at epoch 3: PGD collapses, FGSM jumps
        (rows((0.40, 0.46), (0.42, 0.49), (0.02, 0.81), (0.00, 0.90)), 3),
        # a big gap but PGD keeps more than half of FGSM's accuracy: not flagged
        (rows((0.50, 0.75)), None),
        # a steady gap at a large eps (FGSM merely weaker; measured on the fast sweep's
        # fgsm-rs-full run): PGD never collapses below half its best, not flagged
        (rows((0.16, 0.23), (0.09, 0.34), (0.21, 0.52), (0.20, 0.55), (0.23, 0.56)), None),
        # PGD at 0 from a best of 3%: no robustness to lose, not flagged
        (rows((0.03, 0.21), (0.0, 0.20), (0.0, 0.30)), None),
    ],
)
def test_overfit_onset_on_synthetic_histories(history: list[dict[str, Any]], onset: int) -> None:
    assert overfit_onset(history, OverfitRule()) == onset


def test_overfitting_becomes_a_finding() -> None:
    history = rows((0.40, 0.46), (0.02, 0.81))
    result = {"clean_accuracy": 0.9, "robust_accuracy": 0.0, "eps_g": 8 / 255}
    result["eval_eps_max"] = 8 / 255
    findings = diagnose_run(history, result, num_classes=10, attack_name="fgsm")
    co = [f for f in findings if f.code == "catastrophic_overfitting"]
    assert len(co) == 1 and "epoch 2" in co[0].message and "81.0%" in co[0].message
    assert "fgsm-rs" in co[0].suggestion


def test_monitor_rule_validates() -> None:
    with pytest.raises(UserError, match=r"monitor.gap"):
        build_config({"monitor": {"gap": 0}})
    with pytest.raises(UserError, match=r"monitor.action"):
        build_config({"monitor": {"action": "rollbak"}})


def test_monitor_measures_fgsm_training(tmp_path: Path) -> None:
    config = tiny_config(
        "train.epochs=2", "attack.name=fgsm-rs", "attack.schedule=hinge(t1=1,t2=2)"
    )
    config = build_config({**config.to_dict(), "monitor": {"examples": 16}})
    result = fit(config, tmp_path / "r")
    history = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert "co_pgd_acc" not in history[0]  # epoch 1 trains at eps 0: nothing to monitor
    assert 0 <= history[1]["co_pgd_acc"] <= 1 and 0 <= history[1]["co_fgsm_acc"] <= 1
    assert history[1]["co_eps"] == pytest.approx(8 / 255) and history[1]["monitor_seconds"] > 0
    assert result["stopped"] is None and result["cost"]["monitor_seconds"] > 0


@pytest.mark.parametrize("action", ["stop", "rollback"])
def test_monitor_stops_or_rolls_back_at_the_onset(
    action: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the measurement is faked (healthy at epoch 2, overfitted from epoch 3) so the actions run
    # deterministically; the real measurement is tested above
    verdicts = iter([(0.4, 0.45), (0.0, 0.9), (0.0, 0.9)])

    def fake_measure(*args: Any, **kwargs: Any) -> dict[str, float]:
        pgd, fgsm = next(verdicts)
        return {"co_pgd_acc": pgd, "co_fgsm_acc": fgsm}

    monkeypatch.setattr("robustft.training.evaluate.measure", fake_measure)
    config = tiny_config("train.epochs=4", "attack.name=fgsm", "attack.schedule=hinge(t1=1,t2=2)")
    config = build_config({**config.to_dict(), "monitor": {"action": action}})
    run = tmp_path / "r"
    result = fit(config, run)
    history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("co_flagged") for r in history] == [None, False, True]  # ended at the onset
    stopped = {"reason": "catastrophic_overfitting", "onset": 3, "action": action}
    if action == "rollback":
        stopped["rolled_back_to"] = 2
    assert result["stopped"] == stopped
    assert any(f["code"] == "catastrophic_overfitting" for f in result["findings"])
    model, _, _ = load_trained_model(run, device="cpu")
    if action == "rollback":  # the evaluated model is epoch 2's
        good = load_checkpoint(run / "checkpoints" / "good.pt")
        assert good["epoch"] == 2
        for name, value in good["model"].items():
            assert torch.equal(model.state_dict()[name], value), name
    else:
        assert not (run / "checkpoints" / "good.pt").exists()
    assert fit(config, run, resume=True) == result  # finished: returned as is, not retrained


def test_monitor_off_for_pgd_by_default(tmp_path: Path) -> None:
    result = fit(tiny_config("train.epochs=2"), tmp_path / "r")
    history = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all("co_pgd_acc" not in row for row in history)
    assert result["stopped"] is None


# --------------------------------------------------------------------------- cost in results


def test_result_reports_measured_cost(tmp_path: Path) -> None:
    result = fit(tiny_config("attack.schedule=constant", "attack.steps=3"), tmp_path / "r")
    cost = result["cost"]
    history = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    steps = sum(r["steps"] for r in history)
    # PGD-3 training: 3 attack passes + 1 update pass per step, on every step
    assert cost["train_forward_passes"] == 4 * steps == cost["train_backward_passes"]
    assert cost["passes_per_step"] == 4
    assert cost["train_example_forward_passes"] == 4 * sum(r["examples"] for r in history)
    assert cost["seconds_per_epoch"] > 0 and cost["examples_per_second"] > 0
    assert 0 < cost["trainable_parameters"] == cost["total_parameters"]


# --------------------------------------------------------------------------- numerical faults


def test_nan_loss_stops_the_run_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = AdversarialCE.__call__

    def nan_after_epoch_one(self: AdversarialCE, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        if poisoned:
            object.__setattr__(out, "loss", out.loss * float("nan"))
        return out

    class PoisonAfterEpochOne:
        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: None

        def on_epoch_end(self, row: dict[str, Any]) -> None:
            poisoned.append(row["epoch"])

    poisoned: list[int] = []
    monkeypatch.setattr(AdversarialCE, "__call__", nan_after_epoch_one)
    run = tmp_path / "r"
    with pytest.raises(NumericalFault, match=r"epoch 2.*training loss is nan") as err:
        fit(tiny_config("train.epochs=3"), run, callbacks=PoisonAfterEpochOne())
    assert err.value.kind == "nan_loss" and err.value.epoch == 2
    failure = json.loads((run / "failure.json").read_text())
    assert failure["kind"] == "nan_loss" and failure["last_good_epoch"] == 1
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert (run / "metrics.jsonl").read_text().count("\n") == 1
    assert not (run / "result.json").exists()


def test_exploding_gradient_is_a_fault_with_exit_code_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", str(SMOKE), "--run-dir", str(tmp_path / "r")]
    for item in [*TINY, "train.grad_norm_limit=1e-9"]:
        argv += ["--set", item]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robustft: run failed: numerical fault at epoch 1")
    assert "exceeds train.grad_norm_limit=1e-09" in err[0]
    assert json.loads((tmp_path / "r" / "failure.json").read_text())["kind"] == "exploding_grad"


def test_sweep_records_numerical_fault(tmp_path: Path) -> None:
    tiny = {
        "model.name": "timm:test_efficientnet",
        "model.pretrained": False,
        "data.image_size": 16,
        "data.max_train_per_class": 2,
        "eval.max_examples": 8,
        "eval.steps": 1,
        "train.epochs": 1,
        "attack.schedule": "constant",
    }
    data = {
        "name": "faulty",
        "base": str(SMOKE),
        "set": tiny,
        "methods": {"ok": {}, "exploding": {"train.grad_norm_limit": 1e-9}},
    }
    path = tmp_path / "faulty.yaml"
    path.write_text(yaml.safe_dump(data))
    summary = run_sweep(load_sweep(path), tmp_path / "sweep", device="cpu")
    assert (summary.done, summary.failed) == (1, 1)
    with SweepStore.open_existing(tmp_path / "sweep" / "sweep.db") as store:
        failed = [r for r in store.records() if r.status == "failed"]
    assert len(failed) == 1 and "numerical fault" in (failed[0].error or "")
    assert "grad_norm_limit" in (failed[0].error or "")


# ----------------------------------------------------------------- checkpoints and export


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("lora") / "run"
    config = load_config(
        SMOKE,
        [
            "model.mode=lora",
            "model.lora_rank=2",
            "train.epochs=1",
            "attack.schedule=constant",
            "train.lr=0.05",
            "data.max_train_per_class=2",
            "eval.max_examples=8",
            "eval.steps=1",
        ],
    )
    fit(config, run)
    return run


def test_lora_checkpoint_holds_only_what_trains(lora_run: Path) -> None:
    payload = load_checkpoint(lora_run / "checkpoints" / "last.pt")
    model, _, _ = load_trained_model(lora_run, device="cpu")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()}
    assert set(payload["model"]) == trainable | buffers  # no frozen base weight
    assert trainable and all("lora_" in n or n.startswith("net.classifier") for n in trainable)
    assert payload["model_info"]["name"] == "efficientnet_lite0"
    assert len(payload["base_fingerprint"]) == 64
    assert any("lora_B" in n and v.abs().sum() > 0 for n, v in model.state_dict().items())


def test_checkpoint_on_other_base_weights_is_refused(lora_run: Path, tmp_path: Path) -> None:
    payload = load_checkpoint(lora_run / "checkpoints" / "last.pt")
    payload["base_fingerprint"] = "0" * 64
    save_checkpoint(tmp_path / "other.pt", payload)
    with pytest.raises(UserError, match=r"different base weights"):
        load_trained_model(tmp_path / "other.pt", device="cpu")


def test_export_round_trip(
    lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.safetensors"
    assert cli.main(["export", str(lora_run), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    meta = read_metadata(out)
    assert meta["trained_mode"] == "lora" and meta["num_classes"] == "10"
    exported = load_exported(out)
    assert not any("lora" in n for n in exported.state_dict())
    trained, _, _ = load_trained_model(lora_run, device="cpu")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(exported(x), trained(x), atol=1e-5)
    # an existing file is kept unless --force; a wrong suffix is refused
    assert cli.main(["export", str(lora_run), "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert cli.main(["export", str(lora_run), "--out", str(tmp_path / "m.pt")]) == 2
    assert cli.main(["export", str(lora_run), "--out", str(out), "--force"]) == 0
