"""What a finished run reports: ``result.json`` (headline numbers, provenance, cost) and the
one entry point of the failure diagnostics, :func:`diagnose`, used by training, the demo and
reports alike (:mod:`robustft.diagnostics` holds the signatures themselves)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from robustft.diagnostics import Finding, diagnose_run, task_adaptation_delay
from robustft.monitor import OverfitRule

if TYPE_CHECKING:
    from robustft.robustness.curve import RobustnessCurve
    from robustft.training.state import TrainState


def run_result(state: TrainState, curve: RobustnessCurve) -> dict[str, Any]:
    """``result.json`` of a finished run: headline numbers, provenance, cost and findings."""
    delay = task_adaptation_delay(state.history, state.data.num_classes)
    result: dict[str, Any] = {
        "name": state.config.name,
        "run_id": state.config.run_id(),
        "clean_accuracy": curve.clean_accuracy,
        "robust_accuracy": curve.robust_accuracy,
        "expected_robustness": curve.expected_robustness,
        "eps_g": state.config.attack.eps,
        "norm": state.config.attack.norm,
        "eval_eps_max": curve.eps_max,
        "eval_attack": curve.attack,
        "eval_examples": curve.n_examples,
        **autoattack_fields(curve.autoattack),
        "final_val_acc": state.history[-1]["val_acc"] if state.history else None,
        "adaptation_delay": delay,
        "train_seconds": round(state.train_seconds, 3),
        "eval_seconds": curve.seconds,
        "epochs": state.config.train.epochs,
        "num_classes": state.data.num_classes,
        "schedule": str(state.eps_schedule.schedule),
        "schedule_resolved": str(state.current_schedule().schedule),
        "warnings": list(curve.warnings),
        "stopped": state.stopped,
        "skipped_images": len(state.data.skipped),
        "threads": state.threads,
        "device": str(state.device),
        "world_size": state.world.size,
        "cost": run_cost(state, curve),
    }
    findings = diagnose(result, state.history, state.config.to_dict())
    result["findings"] = [asdict(f) for f in findings]
    return result


def autoattack_fields(measured: Mapping[str, Any] | None) -> dict[str, Any]:
    """``result.json``'s AutoAttack entries: ``autoattack_accuracy`` and ``autoattack`` (version,
    norm, eps, n, seed, seconds, implementation; the per-example bits stay in
    ``robustness.json``); both None when AutoAttack was not run."""
    if measured is None:
        return {"autoattack_accuracy": None, "autoattack": None}
    keep = ("version", "norm", "eps", "accuracy", "clean_accuracy", "n", "seed", "seconds")
    details = {k: measured.get(k) for k in (*keep, "implementation", "warnings")}
    return {"autoattack_accuracy": measured.get("accuracy"), "autoattack": details}


def run_cost(state: TrainState, curve: RobustnessCurve) -> dict[str, Any]:
    """Compute spent: measured training passes, time per epoch, throughput, trainable size.

    ``train_example_*_passes`` weigh passes by batch size; ``passes_per_step`` is the forward
    passes of one optimizer step (attack + update: 2 for FGSM, 8 for PGD-7)."""
    from robustft.cost import PassCount
    from robustft.models import trainable_parameter_count

    rows = state.history
    seconds = sum(float(r["seconds"]) for r in rows)
    steps = sum(int(r.get("steps", 0)) for r in rows)
    examples = sum(int(r.get("examples", 0)) for r in rows)
    totals = PassCount(  # the epochs' measured counts (metrics rows), summed
        *(sum(int(r.get(key, 0)) for r in rows) for key in PassCount().as_dict())
    )
    return {
        **totals.as_dict("train_"),
        "train_steps": steps,
        "passes_per_step": round(totals.forward / steps, 3) if steps else None,
        "train_seconds": round(state.train_seconds, 3),
        "seconds_per_epoch": round(seconds / len(rows), 3) if rows else None,
        "examples_per_second": round(examples / seconds, 2) if seconds > 0 else None,
        "monitor_seconds": round(sum(float(r.get("monitor_seconds", 0)) for r in rows), 3),
        "eval_seconds": curve.seconds,
        "trainable_parameters": trainable_parameter_count(state.model),
        "total_parameters": sum(p.numel() for p in state.model.parameters()),
    }


def diagnose(
    result: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any],
    *,
    reference_clean: float | None = None,
) -> list[Finding]:
    """Failure signatures of a finished run, from what its run directory holds: ``result``
    (``result.json``), ``history`` (``metrics.jsonl`` rows) and ``config`` (the resolved config
    as in ``config.yaml``: sections of keys). Training, the demo and reports all call this.

    Args:
        reference_clean: standard fine-tuning's clean accuracy on the same backbone and data,
            for the suboptimal-transfer flag (None: not checked).
    """
    attack, monitor = config.get("attack") or {}, config.get("monitor") or {}
    default = OverfitRule()
    steps = attack.get("steps")
    return diagnose_run(
        history,
        result,
        num_classes=max(int(result.get("num_classes") or 1), 1),
        schedule_text=str(
            result.get("schedule_resolved") or attack.get("schedule") or result.get("schedule")
        ),
        reference_clean=reference_clean,
        attack_name=attack.get("name"),
        attack_steps=None if steps is None else int(steps),
        overfit_rule=OverfitRule(
            gap=float(monitor.get("gap", default.gap)),
            ratio=float(monitor.get("ratio", default.ratio)),
        ),
    )
