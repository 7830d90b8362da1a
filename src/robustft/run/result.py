"""What a finished run reports: ``result.json`` (headline numbers, provenance, cost), typed
once here (:class:`RunResult`), and the one entry point of the failure diagnostics,
:func:`diagnose`, used by training, the demo and reports alike (:mod:`robustft.diagnostics`
holds the signatures themselves).

:func:`run_result` builds the record from a :class:`TrainingRecord` (what the training layer
reports of a run once its epochs are done: :meth:`robustft.training.state.TrainState.record`)
and the final :class:`~robustft.robustness.curve.RobustnessCurve`. Every reader of
``result.json`` (:meth:`robustft.run.rundir.RunDir.read_result`, reports, sweeps, tuning,
model cards, the commands) reads it as a :class:`RunResult`, so mypy checks the key names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast

from robustft.diagnostics import Finding, diagnose_run, task_adaptation_delay
from robustft.monitor import OverfitRule

if TYPE_CHECKING:
    from robustft.config import RunConfig
    from robustft.cost import PassCount
    from robustft.robustness.curve import RobustnessCurve


class _StoppedRequired(TypedDict):
    reason: str  # why training ended early: "catastrophic_overfitting"
    onset: int  # the epoch the overfitting monitor flagged
    action: str  # monitor.action: "stop" or "rollback"


class Stopped(_StoppedRequired, total=False):
    """``result.json``'s ``stopped`` (and the checkpoint's): why training ended before its last
    epoch."""

    rolled_back_to: int | None  # rollback only: the epoch whose weights were restored


class Switched(TypedDict):
    """``result.json``'s ``switched`` (and the checkpoint's): ``monitor.action: switch`` caught
    catastrophic overfitting and trained the rest of the run with a multi-step attack."""

    reason: str  # "catastrophic_overfitting"
    onset: int  # the epoch the overfitting monitor flagged
    rolled_back_to: int  # the epoch whose weights and optimizer state training went on from
    from_attack: str  # the attack that trained the epochs up to the onset: "fgsm-rs"
    to_attack: str  # the attack that trained the epochs after rolled_back_to: "pgd-7"
    discarded: list[dict[str, Any]]  # the metrics rows of the epochs rolled back


class AutoAttackSummary(TypedDict):
    """``result.json``'s ``autoattack``: AutoAttack's number and how it was measured (the
    per-example results stay in ``robustness.json``)."""

    version: str  # "standard" or "plus"
    norm: str  # "linf" or "l2"
    eps: float  # the threat model's eps, pixel units
    accuracy: float  # fraction still correct after every attack
    clean_accuracy: float  # fraction correct before any attack, same examples
    n: int  # examples evaluated
    seed: int  # the attacks' seed
    seconds: float  # wall time
    implementation: str  # the package and version that ran the attacks
    warnings: list[str]  # the reference's checks that fired


class SwitchCost(TypedDict):
    """``result.json``'s ``cost.switch``: what ``monitor.action: switch`` cost, measured."""

    discarded_epochs: int  # epochs trained with the fast attack, then rolled back
    discarded_seconds: float  # their training time
    discarded_example_passes: int  # their forward plus backward passes, weighted by batch size
    discarded_passes_per_step: float | None
    retrained_epochs: int  # epochs trained with the multi-step attack after the switch
    retrained_seconds: float
    retrained_example_passes: int
    retrained_passes_per_step: float | None


class Cost(TypedDict):
    """``result.json``'s ``cost``: the compute a run spent, measured (the epochs a switch
    discarded included)."""

    train_forward_passes: int  # passes through the model during training (attack and update)
    train_backward_passes: int
    train_example_forward_passes: int  # the same, weighted by batch size
    train_example_backward_passes: int
    train_steps: int  # optimizer steps
    passes_per_step: float | None  # forward passes per optimizer step (2 FGSM, 8 PGD-7)
    train_seconds: float  # training time
    seconds_per_epoch: float | None
    examples_per_second: float | None  # training throughput
    monitor_seconds: float  # the catastrophic-overfitting monitor's time
    eval_seconds: float  # the final evaluation's time
    trainable_parameters: int
    total_parameters: int
    switch: SwitchCost | None  # monitor.action=switch's share; None when the run did not switch


class FindingDict(TypedDict):
    """One entry of ``result.json``'s ``findings`` (:class:`robustft.diagnostics.Finding`)."""

    code: str  # never_adapts, catastrophic_overfitting, collapse_on_ramp, ...
    message: str  # what was seen, with the numbers
    suggestion: str  # what to try


class _RunResultRequired(TypedDict):
    """The keys every ``result.json`` holds, from the first version on."""

    name: str  # the config's name
    run_id: str  # the hash of the resolved config
    clean_accuracy: float  # test accuracy at eps 0
    robust_accuracy: float  # test accuracy at the largest eps of the curve
    expected_robustness: float  # the curve's mean accuracy over [0, eval_eps_max]
    eps_g: float  # the training target eps, pixel units
    eval_eps_max: float  # the largest eps of the evaluation grid
    eval_attack: dict[str, Any]  # the evaluation attack's description (name, norm, steps...)
    eval_examples: int  # test examples evaluated
    final_val_acc: float | None  # validation accuracy after the last epoch
    adaptation_delay: int | None  # first epoch above the adaptation threshold; None: never
    train_seconds: float  # training time
    eval_seconds: float  # evaluation time
    epochs: int  # train.epochs
    num_classes: int
    warnings: list[str]  # the curve's sanity warnings


class RunResult(_RunResultRequired, total=False):
    """``result.json``: the headline numbers of a finished run, the dict :func:`robustft.fit`
    returns. The keys below were added after the first version, so older runs may lack them
    (read them with ``.get``); the reference with units is ``docs/reference/files.md``."""

    norm: str  # the training norm: "linf" or "l2"
    autoattack_accuracy: float | None  # AutoAttack accuracy; None when not measured
    autoattack: AutoAttackSummary | None  # how it was measured; None when not measured
    schedule: str  # the eps schedule as configured
    schedule_resolved: str  # as run (auto, hinge(auto) record their choice here)
    stopped: Stopped | None  # None, or why training ended early
    switched: Switched | None  # None, or when and to what monitor.action=switch switched
    skipped_images: int  # unreadable images left out (data.bad_images: skip)
    threads: int  # CPU threads it trained with
    device: str  # the device it trained on
    world_size: int  # the number of processes it trained with
    memory_format: dict[str, Any]  # {"train": {requested, chosen, reason}, "eval": {...}}
    cost: Cost  # the measured cost
    findings: list[FindingDict]  # the diagnostics


HeadlineKey = Literal["clean_accuracy", "robust_accuracy", "expected_robustness"]
NumberKey = Literal[
    HeadlineKey,
    "autoattack_accuracy",
    "adaptation_delay",
    "final_val_acc",
    "train_seconds",
    "eval_seconds",
]
HEADLINE_KEYS: tuple[HeadlineKey, ...] = (
    "clean_accuracy",
    "robust_accuracy",
    "expected_robustness",
)
SUMMARY_KEYS: tuple[NumberKey, ...] = (  # the end-of-run numbers every tracker logs
    *HEADLINE_KEYS,
    "autoattack_accuracy",
    "adaptation_delay",
    "final_val_acc",
    "train_seconds",
    "eval_seconds",
)


@dataclass(frozen=True)
class TrainingRecord:
    """What ``result.json`` records of a run's training, once its epochs are done (built by the
    training layer: :meth:`robustft.training.state.TrainState.record`).

    Attributes:
        config: the run's resolved config.
        history: the ``metrics.jsonl`` rows of every epoch trained.
        num_classes: classes of the data.
        train_seconds: training time over every attempt (resumes included).
        schedule: the eps schedule as configured; ``schedule_resolved`` as run.
        stopped: why training ended early (the overfitting monitor), None when it did not.
        switched: the overfitting monitor's switch to a multi-step attack, None when none.
        skipped_images: unreadable images left out (``data.bad_images: skip``).
        threads, device, world_size: what it trained with.
        memory_format: the memory formats of training and of the final evaluation, each
            ``{requested, chosen, reason}`` (:mod:`robustft.utils.memory_format`).
        trainable_parameters, total_parameters: the model's parameter counts.
    """

    config: RunConfig
    history: tuple[Mapping[str, Any], ...]
    num_classes: int
    train_seconds: float
    schedule: str
    schedule_resolved: str
    stopped: Stopped | None
    skipped_images: int
    threads: int
    device: str
    world_size: int
    trainable_parameters: int
    total_parameters: int
    switched: Switched | None = None
    memory_format: Mapping[str, Any] | None = None


def run_result(record: TrainingRecord, curve: RobustnessCurve) -> RunResult:
    """``result.json`` of a finished run: headline numbers, provenance, cost and findings."""
    history = record.history
    result: RunResult = {
        "name": record.config.name,
        "run_id": record.config.run_id(),
        "clean_accuracy": curve.clean_accuracy,
        "robust_accuracy": curve.robust_accuracy,
        "expected_robustness": curve.expected_robustness,
        "eps_g": record.config.attack.eps,
        "norm": record.config.attack.norm,
        "eval_eps_max": curve.eps_max,
        "eval_attack": curve.attack,
        "eval_examples": curve.n_examples,
        "autoattack_accuracy": autoattack_accuracy(curve.autoattack),
        "autoattack": autoattack_summary(curve.autoattack),
        "final_val_acc": history[-1]["val_acc"] if history else None,
        "adaptation_delay": task_adaptation_delay(history, record.num_classes),
        "train_seconds": round(record.train_seconds, 3),
        "eval_seconds": curve.seconds,
        "epochs": record.config.train.epochs,
        "num_classes": record.num_classes,
        "schedule": record.schedule,
        "schedule_resolved": record.schedule_resolved,
        "warnings": list(curve.warnings),
        "stopped": record.stopped,
        "switched": record.switched,
        "skipped_images": record.skipped_images,
        "threads": record.threads,
        "device": record.device,
        "world_size": record.world_size,
        "cost": run_cost(record, curve),
    }
    if record.memory_format is not None:
        result["memory_format"] = dict(record.memory_format)
    findings = diagnose(result, history, record.config.to_dict())
    result["findings"] = [
        {"code": f.code, "message": f.message, "suggestion": f.suggestion} for f in findings
    ]
    return result


def autoattack_accuracy(measured: Mapping[str, Any] | None) -> float | None:
    """``result.json``'s ``autoattack_accuracy`` of an AutoAttack result (None when AutoAttack
    was not run)."""
    return None if measured is None else measured.get("accuracy")


def autoattack_summary(measured: Mapping[str, Any] | None) -> AutoAttackSummary | None:
    """``result.json``'s ``autoattack`` of an AutoAttack result
    (:meth:`robustft.robustness.autoattack.AutoAttackResult.to_dict`): its version, norm, eps,
    accuracy, clean accuracy, n, seed, seconds, implementation and warnings (the per-example
    bits stay in ``robustness.json``); None when AutoAttack was not run."""
    if measured is None:
        return None
    summary = {key: measured.get(key) for key in AutoAttackSummary.__annotations__}
    return cast(AutoAttackSummary, summary)


def add_autoattack(result: RunResult, measured: Mapping[str, Any]) -> None:
    """Record an AutoAttack result measured after the run (``robustft eval --autoattack``) in
    its ``result``: ``autoattack_accuracy`` and ``autoattack``, in place."""
    result["autoattack_accuracy"] = autoattack_accuracy(measured)
    result["autoattack"] = autoattack_summary(measured)


def run_cost(record: TrainingRecord, curve: RobustnessCurve) -> Cost:
    """Compute spent: measured training passes, time per epoch, throughput, trainable size.

    ``train_example_*_passes`` weigh passes by batch size; ``passes_per_step`` is the forward
    passes of one optimizer step (attack + update: 2 for FGSM, 8 for PGD-7). The epochs a
    ``monitor.action: switch`` rolled back count too (the run spent them); ``switch`` says
    what they and the epochs trained after the switch cost."""
    switched = record.switched
    discarded = tuple(switched["discarded"]) if switched else ()
    rows = (*record.history, *discarded)
    totals = _pass_totals(rows)
    seconds = sum(float(r["seconds"]) for r in rows)
    steps = sum(int(r.get("steps", 0)) for r in rows)
    examples = sum(int(r.get("examples", 0)) for r in rows)
    return {
        "train_forward_passes": totals.forward,
        "train_backward_passes": totals.backward,
        "train_example_forward_passes": totals.example_forward,
        "train_example_backward_passes": totals.example_backward,
        "train_steps": steps,
        "passes_per_step": _passes_per_step(rows),
        "train_seconds": round(record.train_seconds, 3),
        "seconds_per_epoch": round(seconds / len(rows), 3) if rows else None,
        "examples_per_second": round(examples / seconds, 2) if seconds > 0 else None,
        "monitor_seconds": round(sum(float(r.get("monitor_seconds", 0)) for r in rows), 3),
        "eval_seconds": curve.seconds,
        "trainable_parameters": record.trainable_parameters,
        "total_parameters": record.total_parameters,
        "switch": None if switched is None else _switch_cost(record.history, switched),
    }


def _pass_totals(rows: Sequence[Mapping[str, Any]]) -> PassCount:
    """The epochs' measured pass counts (metrics rows), summed."""
    from robustft.cost import PassCount

    return PassCount(*(sum(int(r.get(key, 0)) for r in rows) for key in PassCount().as_dict()))


def _passes_per_step(rows: Sequence[Mapping[str, Any]]) -> float | None:
    steps = sum(int(r.get("steps", 0)) for r in rows)
    return round(_pass_totals(rows).forward / steps, 3) if steps else None


def _switch_cost(history: Sequence[Mapping[str, Any]], switched: Switched) -> SwitchCost:
    """The epochs a switch rolled back and those trained after it: epochs, seconds, example
    passes (forward plus backward) and passes per step."""
    retrained = [r for r in history if int(r["epoch"]) > switched["rolled_back_to"]]
    discarded = switched["discarded"]

    def example_passes(rows: Sequence[Mapping[str, Any]]) -> int:
        totals = _pass_totals(rows)
        return totals.example_forward + totals.example_backward

    def seconds(rows: Sequence[Mapping[str, Any]]) -> float:
        return round(sum(float(r["seconds"]) for r in rows), 3)

    return {
        "discarded_epochs": len(discarded),
        "discarded_seconds": seconds(discarded),
        "discarded_example_passes": example_passes(discarded),
        "discarded_passes_per_step": _passes_per_step(discarded),
        "retrained_epochs": len(retrained),
        "retrained_seconds": seconds(retrained),
        "retrained_example_passes": example_passes(retrained),
        "retrained_passes_per_step": _passes_per_step(retrained),
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
