"""Load finished runs from run directories into frozen records, diagnose and aggregate them.

A run directory is any directory holding ``result.json`` (layout in :mod:`robustft.run.rundir`).
:func:`collect_runs` finds every one below a path (a single run, a folder of runs, or a sweep
with ``runs/<id>/``) without reading any sweep database. Directories that look like runs
(``config.yaml`` or ``metrics.jsonl``) but have no ``result.json`` are skipped with a warning
saying why (failed, with ``failure.json``'s reason; still training; or not finished) and how many
epochs are done, as are runs whose files cannot be read.

Grouping for the paper-style tables: rows are (backbone = ``model.name``, method = the config
``name``), columns are datasets (``data.name``), and one table is made per evaluation budget
(``eval_eps_max``, the eps at which "robust accuracy" was measured; for robust runs it is their
eps_g, and a standard fine-tuning run evaluated up to 8/255 joins the 8/255 table).

Training cost (``result.json`` ``cost``, measured passes and times; absent in runs made before
cost accounting) is kept per run (:class:`CostRecord`) and summarised per cell
(:class:`CostSummary`) against standard fine-tuning of the same backbone, dataset, fine-tuning
mode and eval budget.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from robustft.config import flatten
from robustft.diagnostics import Finding, task_adaptation_delay
from robustft.errors import UserError, is_int
from robustft.monitor import CLEAN_KEY, FGSM_KEY, PGD_KEY, SIGNALS
from robustft.run.result import RunResult, diagnose
from robustft.run.rundir import RunDir, read_metrics, run_state


@dataclass(frozen=True)
class EpochRecord:
    """One row of ``metrics.jsonl`` (accuracies as fractions, eps in pixel units)."""

    epoch: int
    eps: float
    val_acc: float | None
    lr: float | None = None
    train_loss: float | None = None
    train_acc: float | None = None
    seconds: float | None = None
    val_robust_acc: float | None = None
    co_pgd_acc: float | None = None
    co_fgsm_acc: float | None = None
    co_clean_acc: float | None = None
    co_signals: tuple[tuple[str, float | None], ...] = ()  # the detector's (monitor.SIGNALS)

    def as_row(self) -> dict[str, Any]:
        """The row as a plain dict, as :mod:`robustft.diagnostics` expects."""
        return {
            "epoch": self.epoch,
            "eps": self.eps,
            "val_acc": self.val_acc,
            "lr": self.lr,
            "train_loss": self.train_loss,
            "train_acc": self.train_acc,
            "seconds": self.seconds,
            "val_robust_acc": self.val_robust_acc,
            PGD_KEY: self.co_pgd_acc,
            FGSM_KEY: self.co_fgsm_acc,
            CLEAN_KEY: self.co_clean_acc,
            **dict(self.co_signals),
        }


@dataclass(frozen=True)
class CurveRecord:
    """A robustness curve: accuracy (fraction) at each eps (pixel units)."""

    epsilons: tuple[float, ...]
    accuracy: tuple[float, ...]
    expected_robustness: float
    attack: str
    mode: str


@dataclass(frozen=True)
class CostRecord:
    """Compute a run spent in training (``result.json`` ``cost``; see :mod:`robustft.cost`).

    Pass counts are measured by hooks on the model (attack crafting and updates; the
    overfitting monitor and evaluation are not included): ``forward_passes`` counts batched
    calls, ``example_*`` weigh them by batch size. ``passes_per_step`` is forward passes per
    optimizer step (1 for standard fine-tuning, 2 for FGSM, 8 for PGD-7). Times in seconds.
    """

    example_forward_passes: int
    example_backward_passes: int
    forward_passes: int | None = None
    backward_passes: int | None = None
    steps: int | None = None
    passes_per_step: float | None = None
    train_seconds: float | None = None
    seconds_per_epoch: float | None = None
    examples_per_second: float | None = None
    monitor_seconds: float | None = None
    trainable_parameters: int | None = None
    total_parameters: int | None = None

    @property
    def example_passes(self) -> int:
        """Training example-passes, forward plus backward."""
        return self.example_forward_passes + self.example_backward_passes

    @property
    def trainable_fraction(self) -> float | None:
        """Trainable / total parameters (None when either is unknown or the total is 0)."""
        if self.trainable_parameters is None or not self.total_parameters:
            return None
        return self.trainable_parameters / self.total_parameters


@dataclass(frozen=True)
class StopRecord:
    """Why training ended early (``result.json`` ``stopped``), e.g. the catastrophic-overfitting
    monitor at epoch ``onset`` with action ``stop`` or ``rollback`` (to ``rolled_back_to``)."""

    reason: str
    onset: int | None = None
    action: str = "stop"
    rolled_back_to: int | None = None

    def text(self) -> str:
        """``stopped at epoch 3 (catastrophic overfitting), rolled back to epoch 2``."""
        where = "" if self.onset is None else f" at epoch {self.onset}"
        text = f"stopped{where} ({self.reason.replace('_', ' ')})"
        if self.rolled_back_to is not None:
            text += f", rolled back to epoch {self.rolled_back_to}"
        elif self.action == "rollback":
            text += ", no earlier epoch to roll back to"
        return text


@dataclass(frozen=True)
class RunRecord:
    """One finished run: identity, headline numbers, history, curve and findings.

    ``name`` is the config ``name``; ``method`` is the label runs are grouped by: the name, plus
    the settings that differ between runs of that name (``fix (attack.eps=4/255)``), so runs of
    a grid are never averaged together as if they were seeds. ``settings`` holds the resolved
    config as dotted key -> text. Accuracies are fractions; eps values are pixel units; times
    are seconds.
    """

    path: Path
    run_id: str
    method: str
    backbone: str
    dataset: str
    seed: int
    eps_g: float
    eval_eps: float
    schedule: str
    epochs: int
    num_classes: int
    clean: float
    robust: float
    expected: float
    eval_attack: str
    final_val_acc: float | None
    delay: int | None
    train_seconds: float | None
    eval_seconds: float | None
    attack_name: str | None = None
    attack_steps: int | None = None
    norm: str = "linf"
    name: str = ""
    settings: tuple[tuple[str, str], ...] = ()
    history: tuple[EpochRecord, ...] = ()
    curve: CurveRecord | None = None
    warnings: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()
    cost: CostRecord | None = None
    stopped: StopRecord | None = None
    autoattack: float | None = None  # AutoAttack accuracy at eval_eps, when measured
    autoattack_version: str | None = None  # standard or plus
    autoattack_n: int | None = None  # the examples it was measured on
    result: Mapping[str, Any] = field(default_factory=dict, compare=False)  # result.json
    config: Mapping[str, Any] = field(default_factory=dict, compare=False)  # config.yaml

    @property
    def mode(self) -> str:
        """Fine-tuning mode (config ``model.mode``: ``full``, ``linear``, ``lora``, ...)."""
        return dict(self.settings).get("model.mode", "full")

    @property
    def label(self) -> str:
        """Directory name, the most recognisable handle of a run."""
        return self.path.name

    @property
    def context(self) -> str:
        """``fix, swin_b on cars, seed 0``: what the run is, for finding lines."""
        return f"{self.method}, {self.backbone} on {self.dataset}, seed {self.seed}"


@dataclass(frozen=True)
class Collection:
    """The runs found below ``roots`` (the directories given, in order) and the directories
    skipped (one message each)."""

    roots: tuple[Path, ...]
    runs: tuple[RunRecord, ...]
    skipped: tuple[str, ...] = ()

    @property
    def root(self) -> Path:
        """The first directory given (the only one, for most reports)."""
        return self.roots[0]


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof = 1; 0 when n = 1) of n values."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        """Summarise ``values`` (at least one)."""
        if not values:
            raise ValueError("Stat.of needs at least one value")
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, len(values))


@dataclass(frozen=True)
class Cell:
    """One (eval eps, backbone, method, dataset) group of runs, aggregated over seeds."""

    eval_eps: float
    backbone: str
    method: str
    dataset: str
    clean: Stat
    robust: Stat
    expected: Stat
    seeds: tuple[int, ...] = ()
    run_ids: tuple[str, ...] = ()
    cost: CostSummary | None = None


@dataclass(frozen=True)
class CostSummary:
    """Training cost of the runs of a :class:`Cell` that recorded it, over their seeds.

    ``n`` runs have cost data; ``expected`` is their expected robustness (so cost and E.rob
    describe the same runs). Optional statistics are None when no run has the value.
    ``reference`` is ``(example passes, expected robustness)``, the means over the standard
    fine-tuning runs (eps_g = 0) with the same backbone, dataset, fine-tuning mode and eval
    budget, when there are any.
    """

    n: int
    example_passes: Stat
    expected: Stat
    passes_per_step: Stat | None = None
    seconds_per_epoch: Stat | None = None
    examples_per_second: Stat | None = None
    trainable_parameters: Stat | None = None
    trainable_fraction: Stat | None = None
    reference: tuple[float, float] | None = None

    @property
    def relative_cost(self) -> float | None:
        """Example passes as a multiple of the standard fine-tuning reference."""
        if self.reference is None or self.reference[0] <= 0:
            return None
        return self.example_passes.mean / self.reference[0]

    @property
    def gain_per_million(self) -> float | None:
        """E.rob gained over the reference, in points (%), per 10^6 extra example-passes;
        None without a reference or when the runs used no more passes than it."""
        if self.reference is None:
            return None
        extra = self.example_passes.mean - self.reference[0]
        if extra <= 0:
            return None
        return 100 * (self.expected.mean - self.reference[1]) / (extra / 1e6)


def find_run_dirs(root: str | Path) -> tuple[list[Path], list[Path]]:
    """Directories below ``root`` (itself included) with and without ``result.json``.

    Returns:
        ``(finished, unfinished)``: run dirs with ``result.json``, and dirs that hold
        ``config.yaml`` or ``metrics.jsonl`` but no ``result.json``; both sorted.
    """
    finished, unfinished = [], []
    for current, dirs, files in os.walk(root):
        run = RunDir(Path(current))
        skip = {run.checkpoints.name, "__pycache__"}
        dirs[:] = sorted(d for d in dirs if d not in skip and not d.startswith("."))
        names = set(files)
        if run.result.name in names:
            finished.append(run.root)
        elif names & {run.config.name, run.metrics.name}:
            unfinished.append(run.root)
    return sorted(finished), sorted(unfinished)


def _read_history(path: Path) -> tuple[tuple[EpochRecord, ...], list[str]]:
    """The rows of ``metrics.jsonl`` (:func:`robustft.run.rundir.read_metrics`) and its problems."""
    metrics = read_metrics(path)
    rows = []
    for row in metrics.rows:
        try:
            rows.append(_epoch_record(row))
        except (KeyError, TypeError, ValueError):
            return tuple(rows), [*metrics.problems, f"{path.name}: epoch {row['epoch']} unreadable"]
    return tuple(rows), metrics.problems


def _epoch_record(row: Mapping[str, Any]) -> EpochRecord:
    return EpochRecord(
        epoch=int(row["epoch"]),
        eps=float(row.get("eps") or 0.0),
        val_acc=_opt_float(row.get("val_acc")),
        lr=_opt_float(row.get("lr")),
        train_loss=_opt_float(row.get("train_loss")),
        train_acc=_opt_float(row.get("train_acc")),
        seconds=_opt_float(row.get("seconds")),
        val_robust_acc=_opt_float(row.get("val_robust_acc")),
        co_pgd_acc=_opt_float(row.get(PGD_KEY)),
        co_fgsm_acc=_opt_float(row.get(FGSM_KEY)),
        co_clean_acc=_opt_float(row.get(CLEAN_KEY)),
        co_signals=tuple((key, _opt_float(row.get(key))) for key in SIGNALS),
    )


def _opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _opt_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def _read_cost(cost: object) -> CostRecord | None:
    """The ``cost`` dict of ``result.json``; None when absent (runs from before cost
    accounting), without the example pass counts or unreadable (the run itself still counts)."""
    if not isinstance(cost, Mapping):
        return None
    try:
        return _cost_record(cost)
    except (TypeError, ValueError, OverflowError):
        return None


def _cost_record(cost: Mapping[str, Any]) -> CostRecord | None:
    forward = cost.get("train_example_forward_passes")
    backward = cost.get("train_example_backward_passes")
    if forward is None or backward is None:
        return None
    return CostRecord(
        example_forward_passes=int(forward),
        example_backward_passes=int(backward),
        forward_passes=_opt_int(cost.get("train_forward_passes")),
        backward_passes=_opt_int(cost.get("train_backward_passes")),
        steps=_opt_int(cost.get("train_steps")),
        passes_per_step=_opt_float(cost.get("passes_per_step")),
        train_seconds=_opt_float(cost.get("train_seconds")),
        seconds_per_epoch=_opt_float(cost.get("seconds_per_epoch")),
        examples_per_second=_opt_float(cost.get("examples_per_second")),
        monitor_seconds=_opt_float(cost.get("monitor_seconds")),
        trainable_parameters=_opt_int(cost.get("trainable_parameters")),
        total_parameters=_opt_int(cost.get("total_parameters")),
    )


def _read_stopped(stopped: object) -> StopRecord | None:
    """The ``stopped`` dict of ``result.json`` (None: ran all its epochs)."""
    if not isinstance(stopped, Mapping):
        return None
    try:
        onset, back = _opt_int(stopped.get("onset")), _opt_int(stopped.get("rolled_back_to"))
    except (TypeError, ValueError, OverflowError):
        onset, back = None, None
    return StopRecord(
        reason=str(stopped.get("reason") or "unknown reason"),
        onset=onset,
        action=str(stopped.get("action") or "stop"),
        rolled_back_to=back,
    )


def _read_curve(run: RunDir) -> CurveRecord | None:
    if not run.robustness.is_file():
        return None
    data = run.read_robustness()
    if data is None:
        raise UserError(f"{run.robustness}: cannot read (not a JSON object)")
    attack = data.get("attack") or {}
    return CurveRecord(
        epsilons=tuple(float(e) for e in data["epsilons"]),
        accuracy=tuple(float(a) for a in data["accuracy"]),
        expected_robustness=float(data["expected_robustness"]),
        attack=_attack_text(attack),
        mode=str(data.get("mode", "")),
    )


def _attack_text(attack: Mapping[str, Any] | str | None) -> str:
    """``apgd-ce 10 steps`` from an attack description dict."""
    if not attack:
        return "unknown attack"
    if isinstance(attack, str):
        return attack
    name = str(attack.get("name", "attack"))
    steps = attack.get("steps")
    return f"{name} {steps} steps" if steps is not None else name


def _norm(eval_attack: object, attack: Mapping[str, Any]) -> str:
    if isinstance(eval_attack, Mapping) and eval_attack.get("norm"):
        return str(eval_attack["norm"])
    return str(attack.get("norm") or "linf")


def _section(config: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = config.get(key)
    return value if isinstance(value, Mapping) else {}


def load_run(path: str | Path) -> RunRecord:
    """Read one run directory (``result.json``, ``config.yaml``, ``metrics.jsonl``,
    ``robustness.json``) into a :class:`RunRecord` without findings.

    Raises:
        UserError: ``result.json`` is missing, unreadable or lacks the headline numbers.
    """
    run = RunDir(Path(path))
    result = run.read_result()
    if result is None:
        raise UserError(f"{run.result}: cannot read (missing, torn or not a JSON object)")
    config: Mapping[str, Any] = {}
    if run.config.is_file():
        loaded = run.read_config()
        if loaded is None:
            raise UserError(f"{run.config}: cannot read")
        config = loaded
    try:
        return _record(run, result, config)
    except (KeyError, TypeError, ValueError) as err:
        why = f"{err.__class__.__name__}: {err}"
        raise UserError(f"{run.root}: incomplete result ({why})") from None


def _record(run: RunDir, result: RunResult, config: Mapping[str, Any]) -> RunRecord:
    root = run.root
    model, data = _section(config, "model"), _section(config, "data")
    train, attack = _section(config, "train"), _section(config, "attack")
    history, history_warnings = _read_history(run.metrics)
    curve = _read_curve(run)
    num_classes = int(result.get("num_classes") or 0)
    delay = result.get("adaptation_delay")
    if history and num_classes:  # today's threshold, as the findings: also for older runs
        delay = task_adaptation_delay([r.as_row() for r in history], num_classes)
    eps_g = float(result["eps_g"])
    steps = attack.get("steps")
    name = str(result.get("name") or config.get("name") or "run")
    return RunRecord(
        path=root,
        run_id=str(result.get("run_id") or root.name),
        method=name,
        name=name,
        settings=tuple(sorted((k, _text(v)) for k, v in flatten(config).items())),
        backbone=str(model.get("name", "?")),
        dataset=str(data.get("name", "?")),
        seed=int(train.get("seed", 0)),
        eps_g=eps_g,
        eval_eps=float(result.get("eval_eps_max") or eps_g),
        schedule=str(result.get("schedule") or attack.get("schedule") or "?"),
        epochs=int(result.get("epochs") or len(history)),
        num_classes=num_classes,
        clean=float(result["clean_accuracy"]),
        robust=float(result["robust_accuracy"]),
        expected=float(result["expected_robustness"]),
        eval_attack=_attack_text(result.get("eval_attack")),
        final_val_acc=_opt_float(result.get("final_val_acc")),
        delay=None if delay is None else int(delay),
        train_seconds=_opt_float(result.get("train_seconds")),
        eval_seconds=_opt_float(result.get("eval_seconds")),
        attack_name=str(attack["name"]) if "name" in attack else None,
        attack_steps=int(steps) if isinstance(steps, int) else None,
        norm=_norm(result.get("eval_attack"), attack),
        history=history,
        curve=curve,
        warnings=tuple(str(w) for w in result.get("warnings") or ()) + tuple(history_warnings),
        cost=_read_cost(result.get("cost")),
        stopped=_read_stopped(result.get("stopped")),
        autoattack=_opt_float(result.get("autoattack_accuracy")),
        autoattack_version=_autoattack_version(result.get("autoattack")),
        autoattack_n=_autoattack_n(result.get("autoattack")),
        result=result,
        config=config,
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _autoattack_version(measured: object) -> str | None:
    if not isinstance(measured, Mapping) or measured.get("version") is None:
        return None
    return str(measured["version"])


def _autoattack_n(measured: object) -> int | None:
    n = measured.get("n") if isinstance(measured, Mapping) else None
    return n if is_int(n) else None


GROUPING_KEYS = frozenset(
    {"name", "train.seed", "eval.seed", "model.name", "data.name", "eval.eps_max"}
    | {"train.num_workers", "train.pin_memory", "eval.batch_size", "data.root", "data.download"}
)
"""Config keys that never split a method: seeds (averaged over), the row, column and table
keys, and settings that change where or how fast a run goes, not its result."""


def label_methods(runs: Sequence[RunRecord]) -> list[RunRecord]:
    """Runs with ``method`` = name plus the settings that differ among the runs of that name
    in one table (same evaluation budget). Settings in :data:`GROUPING_KEYS` are left out.
    """
    by_name: dict[tuple[str, float], list[RunRecord]] = {}
    for run in runs:
        by_name.setdefault((run.name, round(run.eval_eps, 9)), []).append(run)
    out = []
    for (name, _), members in by_name.items():
        maps = [dict(r.settings) for r in members]
        keys = sorted(
            k
            for k in set().union(*maps)
            if k not in GROUPING_KEYS and len({m.get(k) for m in maps}) > 1
        )
        for run, settings in zip(members, maps):
            extra = ", ".join(f"{k}={settings.get(k, '?')}" for k in keys)
            out.append(replace(run, method=f"{name} ({extra})" if extra else name))
    return out


def standard_references(runs: Iterable[RunRecord]) -> dict[tuple[str, str], float]:
    """Mean clean accuracy of standard fine-tuning (eps_g = 0) per (backbone, dataset)."""
    values: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        if run.eps_g == 0:
            values.setdefault((run.backbone, run.dataset), []).append(run.clean)
    return {key: statistics.fmean(v) for key, v in values.items()}


def with_findings(runs: Sequence[RunRecord]) -> tuple[RunRecord, ...]:
    """The runs with their :class:`~robustft.diagnostics.Finding` s filled in by
    :func:`robustft.run.result.diagnose`, as training diagnosed them, now with a reference: the mean
    clean accuracy of the eps_g = 0 runs with the same backbone and dataset among ``runs``.
    """
    references = standard_references(runs)
    out = []
    for run in runs:
        findings = diagnose(
            {"num_classes": run.num_classes, **run.result},
            [r.as_row() for r in run.history],
            run.config,
            reference_clean=references.get((run.backbone, run.dataset)),
        )
        out.append(replace(run, findings=tuple(findings)))
    return tuple(out)


def _not_finished(path: Path) -> str:
    """Why a run directory has no result: ``failed (numerical fault ...); 1 of 5 epochs done``,
    still training, or not finished."""
    state = run_state(path)
    of = f" of {state.epochs}" if state.epochs is not None else ""
    return f"{state.describe()}; {state.epochs_done}{of} epochs done, no result.json"


def collect_runs(root: str | Path, *more_roots: str | Path) -> Collection:
    """Load and diagnose every finished run below ``root`` (and each of ``more_roots``: one
    report over several sweeps). A run id found twice is loaded once.

    Raises:
        UserError: a directory does not exist, or none holds a finished run.
    """
    bases = [Path(r) for r in (root, *more_roots)]
    finished: list[Path] = []
    unfinished: list[Path] = []
    for base in bases:
        if not base.exists():
            raise UserError(f"{base}: no such file or directory")
        if not base.is_dir():
            raise UserError(f"{base}: not a directory; pass a run directory or a folder of runs")
        done, not_done = find_run_dirs(base)
        finished += done
        unfinished += not_done
    skipped = [f"skipped {d}: {_not_finished(d)}" for d in unfinished]
    runs: list[RunRecord] = []
    seen: dict[str, Path] = {}
    for path in finished:
        try:
            run = load_run(path)
        except UserError as err:
            skipped.append(f"skipped {path}: {err}")
            continue
        if run.run_id in seen:
            skipped.append(f"skipped {path}: same run id {run.run_id} as {seen[run.run_id]}")
            continue
        seen[run.run_id] = path
        runs.append(run)
    if not runs:
        detail = f" ({len(skipped)} skipped: {skipped[0]})" if skipped else ""
        where = ", ".join(str(b) for b in bases)
        raise UserError(f"{where}: no finished runs (no result.json below it){detail}")
    labelled = with_findings(sort_runs(label_methods(runs)))
    return Collection(tuple(bases), labelled, tuple(skipped))


def method_order(runs: Iterable[RunRecord]) -> list[str]:
    """Methods with standard fine-tuning (eps_g = 0) first, then by name."""
    standard: dict[str, bool] = {}
    for run in runs:
        standard[run.method] = standard.get(run.method, True) and run.eps_g == 0
    return sorted(standard, key=lambda m: (not standard[m], m))


def sort_runs(runs: Iterable[RunRecord]) -> list[RunRecord]:
    """Runs ordered by eval eps, backbone, dataset, method (standard first), seed, id."""
    items = list(runs)
    rank = {m: i for i, m in enumerate(method_order(items))}
    return sorted(
        items,
        key=lambda r: (r.eval_eps, r.backbone, r.dataset, rank[r.method], r.seed, r.run_id),
    )


def aggregate(runs: Iterable[RunRecord]) -> list[Cell]:
    """Group runs by (eval eps, backbone, method, dataset) and summarise each over its seeds.

    Eval eps values equal to 1e-9 are one group (they come from ``k/255`` arithmetic).
    """
    groups: dict[tuple[float, str, str, str], list[RunRecord]] = {}
    items = sort_runs(runs)
    for run in items:
        key = (round(run.eval_eps, 9), run.backbone, run.method, run.dataset)
        groups.setdefault(key, []).append(run)
    references = cost_references(items)
    cells = []
    for (eps, backbone, method, dataset), members in groups.items():
        cells.append(
            Cell(
                eval_eps=eps,
                backbone=backbone,
                method=method,
                dataset=dataset,
                clean=Stat.of([r.clean for r in members]),
                robust=Stat.of([r.robust for r in members]),
                expected=Stat.of([r.expected for r in members]),
                seeds=tuple(r.seed for r in members),
                run_ids=tuple(r.run_id for r in members),
                cost=_cost_summary(members, references),
            )
        )
    return cells


CostKey = tuple[float, str, str, str]
"""(eval eps, backbone, dataset, fine-tuning mode): the runs a standard reference is taken from."""


def _cost_key(run: RunRecord) -> CostKey:
    return (round(run.eval_eps, 9), run.backbone, run.dataset, run.mode)


def cost_references(runs: Iterable[RunRecord]) -> dict[CostKey, tuple[float, float]]:
    """Mean ``(example passes, expected robustness)`` of the standard fine-tuning runs
    (eps_g = 0) with cost data, per (eval eps, backbone, dataset, fine-tuning mode)."""
    values: dict[CostKey, list[tuple[int, float]]] = {}
    for run in runs:
        if run.eps_g == 0 and run.cost is not None:
            values.setdefault(_cost_key(run), []).append((run.cost.example_passes, run.expected))
    return {
        key: (statistics.fmean(p for p, _ in v), statistics.fmean(e for _, e in v))
        for key, v in values.items()
    }


def _optional_stat(values: Iterable[float | None]) -> Stat | None:
    known = [v for v in values if v is not None]
    return Stat.of(known) if known else None


def _cost_summary(
    members: Sequence[RunRecord], references: Mapping[CostKey, tuple[float, float]]
) -> CostSummary | None:
    costed = [(r, r.cost) for r in members if r.cost is not None]
    if not costed:
        return None
    return CostSummary(
        n=len(costed),
        example_passes=Stat.of([c.example_passes for _, c in costed]),
        expected=Stat.of([r.expected for r, _ in costed]),
        passes_per_step=_optional_stat(c.passes_per_step for _, c in costed),
        seconds_per_epoch=_optional_stat(c.seconds_per_epoch for _, c in costed),
        examples_per_second=_optional_stat(c.examples_per_second for _, c in costed),
        trainable_parameters=_optional_stat(c.trainable_parameters for _, c in costed),
        trainable_fraction=_optional_stat(c.trainable_fraction for _, c in costed),
        reference=references.get(_cost_key(costed[0][0])),
    )


def same_eps(a: float, b: float) -> bool:
    """Whether two eps values are the same budget (to 1e-9)."""
    return math.isclose(a, b, rel_tol=0, abs_tol=1e-9)
