"""The robust fine-tuning loop: progress -> eps -> objective -> step, with checkpoints.

Each epoch is reproducible on its own: data order, augmentation, dropout and attack random
starts are seeded from ``(train.seed, epoch)``. With the checkpoint saved at every epoch end
(model, optimizer, epoch, history, RNG states, resolved config), a run killed at any moment and
resumed with ``--resume`` continues from the last complete epoch and, on CPU, ends with the same
numbers as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from robustft import attacks
from robustft.checkpoint import (
    atomic_write_json,
    atomic_write_text,
    load_checkpoint_with_fallback,
    load_latest_checkpoint,
    save_checkpoint,
)
from robustft.config import RunConfig
from robustft.cost import PassCount, count_passes
from robustft.data import DataSpec, DataSplits, build_datasets_from_spec, check_class_set
from robustft.diagnostics import Finding, diagnose_run, task_adaptation_delay
from robustft.errors import NumericalFault, UserError
from robustft.evaluate import RobustnessCurve, robustness_curve
from robustft.models import (
    ClassifierModel,
    base_fingerprint,
    build_model,
    load_trainable_state_dict,
    mode_options_from_config,
    param_groups,
    trainable_parameter_count,
    trainable_state_dict,
)
from robustft.monitor import FGSM_KEY, PGD_KEY, OverfitRule, best_pgd, measure
from robustft.objectives import AdversarialCE
from robustft.rundir import RunDir, check_run_dir, init_run_dir, locked, write_env
from robustft.schedules import Auto, EpsSchedule, HingeAuto, parse_schedule
from robustft.subset import subset
from robustft.units import eps_grid

_logger = logging.getLogger(__name__)


class Callbacks(Protocol):
    """Progress hooks the CLI implements; every method is optional in practice."""

    def on_epoch_start(self, epoch: int, epochs: int, eps: float, batches: int) -> None: ...
    def on_batch(self, done: int, total: int) -> None: ...
    def on_epoch_end(self, row: dict[str, Any]) -> None: ...
    def on_eval_start(self, total: int) -> None: ...
    def on_eval(self, done: int, total: int) -> None: ...


class NullCallbacks:
    """Callbacks that do nothing (library use)."""

    def on_epoch_start(self, epoch: int, epochs: int, eps: float, batches: int) -> None:
        pass

    def on_batch(self, done: int, total: int) -> None:
        pass

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        pass

    def on_eval_start(self, total: int) -> None:
        pass

    def on_eval(self, done: int, total: int) -> None:
        pass


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived from the parts (stable across runs and platforms)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Multiplier of the peak lr before optimizer step ``step`` (0-based).

    Linear warm-up from ``1/warmup_steps`` to 1 over ``warmup_steps``, then cosine to 0 at
    ``total_steps`` (``kind="cosine"``) or constant 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))


def available_devices() -> list[str]:
    """The device names this machine accepts: ``cpu``, ``cuda:I`` for each GPU, ``mps``."""
    names = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    return names + (["mps"] if mps is not None and mps.is_available() else [])


def pick_device(name: str = "auto") -> torch.device:
    """The device named ``name`` (``auto``: the first GPU if there is one, else the CPU).

    Raises:
        UserError: not a device name, or a device this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    have = available_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(
            f"--device {name!r}: not a device name; this machine has: auto, {', '.join(have)}"
        ) from None
    index = 0 if device.index is None else device.index
    known = device.type == "cpu" or f"{device.type}:{index}" in have or device.type in have
    if not known:
        raise UserError(
            f"--device {name}: not available; this machine has: auto, {', '.join(have)}"
        )
    return device


@dataclass
class TrainState:
    """Everything the loop mutates; rebuilt from a checkpoint on resume."""

    config: RunConfig
    model: ClassifierModel
    optimizer: torch.optim.Optimizer
    data: DataSplits
    eps_schedule: EpsSchedule
    objective: AdversarialCE
    device: torch.device
    epoch: int = 0  # last completed epoch
    step: int = 0  # optimizer steps taken
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    probe_val_acc: list[float] | None = None  # hinge(auto): the clean probe's val accuracies
    base_fingerprint: str = ""  # hash of the frozen base weights (models.base_fingerprint)
    stopped: dict[str, Any] | None = None  # set when the overfitting monitor ended training
    threads: int = 1  # CPU threads the run trains with (recorded; kept on resume)

    def current_schedule(self) -> EpsSchedule:
        """The eps schedule in force now: the configured one, or for an adaptive schedule
        (``auto``, ``hinge(auto)``) the hinge it resolved to from validation accuracy so far
        (a pure function of the history, so a resumed run makes the same choice)."""
        base = self.eps_schedule.schedule
        if isinstance(base, Auto):
            accs = [row["val_acc"] for row in self.history]
            return replace(self.eps_schedule, schedule=base.resolve(accs, self.config.train.epochs))
        if isinstance(base, HingeAuto) and self.probe_val_acc is not None:
            resolved = base.resolve(self.probe_val_acc, self.config.train.epochs)
            return replace(self.eps_schedule, schedule=resolved)
        return self.eps_schedule

    @property
    def steps_per_epoch(self) -> int:
        n, bs = len(self.data.train), self.config.train.batch_size  # type: ignore[arg-type]
        return n // bs if n % bs == 1 else math.ceil(n / bs)

    def train_loader(self, epoch: int) -> DataLoader:
        cfg = self.config.train
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "order", epoch))
        n = len(self.data.train)  # type: ignore[arg-type]
        return DataLoader(
            self.data.train,
            batch_size=cfg.batch_size,
            shuffle=True,
            generator=gen,
            num_workers=cfg.num_workers,
            drop_last=n % cfg.batch_size == 1,  # a batch of 1 breaks BatchNorm in train mode
        )


def build_data(config: RunConfig) -> DataSplits:
    """The train/val/test splits the config describes (deterministic given train.seed)."""
    return build_datasets_from_spec(DataSpec(**asdict(config.data), seed=config.train.seed))


def eval_grid(config: RunConfig) -> list[float]:
    """The final evaluation's eps grid: 0, eps_step, ..., eps_max (default eps_g; 8/255 for l-inf
    or 0.5 for l2 when eps_g is 0, as for standard fine-tuning)."""
    ecfg = config.eval
    eps_max = ecfg.eps_max if ecfg.eps_max is not None else config.attack.eps
    if eps_max == 0:
        eps_max = 8 / 255 if config.attack.norm == "linf" else 0.5
    return eps_grid(eps_max, ecfg.eps_step)


def check_config(config: RunConfig) -> None:
    """Fail fast on names and values that only the library can check (schedule, attacks),
    before anything is written."""
    EpsSchedule(
        parse_schedule(config.attack.schedule),
        eps=config.attack.eps,
        epochs=config.train.epochs,
        granularity=config.attack.granularity,
        seed=config.train.seed,
    )
    build_train_attack(config)
    eval_grid(config)
    build_attack(config.eval.attack, norm=config.attack.norm, steps=config.eval.steps)


def build_state(config: RunConfig, device: torch.device) -> TrainState:
    """Build model, data, optimizer, schedule and objective from the config."""
    torch.manual_seed(derive_seed(config.train.seed, "init"))
    data = build_data(config)
    model = build_model(
        config.model.name,
        num_classes=data.num_classes,
        pretrained=config.model.pretrained,
        weights=config.model.weights,
        mode=config.model.mode,
        mode_options=mode_options_from_config(config.model),
    ).to(device)
    optimizer = build_optimizer(config, model)
    schedule = EpsSchedule(
        parse_schedule(config.attack.schedule),
        eps=config.attack.eps,
        epochs=config.train.epochs,
        granularity=config.attack.granularity,
        seed=config.train.seed,
    )
    objective = AdversarialCE(build_train_attack(config), autocast_bf16=config.train.bf16)
    state = TrainState(config, model, optimizer, data, schedule, objective, device)
    state.base_fingerprint = base_fingerprint(model)
    return state


ONE_STEP_ATTACKS = ("fgsm", "fgsm-rs")


def build_attack(name: str, *, norm: str, steps: int, **hyper: Any) -> attacks.Attack:
    """``attacks.create`` with a step count that attacks without steps ignore (FGSM, FGSM-RS
    take one step; Square counts queries)."""
    spec = attacks.ATTACKS.get(name)
    if spec is not None and spec.takes_steps:
        hyper["steps"] = steps
    return attacks.create(name, norm=norm, **hyper)


def build_train_attack(config: RunConfig) -> attacks.Attack:
    a = config.attack
    hyper: dict[str, Any] = {"eval_mode": a.eval_mode}
    if a.rel_step is not None:
        hyper["rel_step"] = a.rel_step
    return build_attack(a.name, norm=a.norm, steps=a.steps, **hyper)


def build_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    cfg = config.train
    groups = param_groups(model, lr=cfg.lr, weight_decay=cfg.weight_decay, head_lr=cfg.head_lr)
    for group in groups:
        group["initial_lr"] = group["lr"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))


def _set_lr(state: TrainState) -> float:
    cfg = state.config.train
    spe = state.steps_per_epoch
    factor = lr_factor(
        state.step, cfg.epochs * spe, round(cfg.warmup_epochs * spe), cfg.lr_schedule
    )
    for group in state.optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return float(state.optimizer.param_groups[0]["lr"])


def _fault(state: TrainState, kind: str, value: float, what: str) -> NumericalFault:
    lr_now = float(state.optimizer.param_groups[0]["lr"])
    epoch = state.epoch + 1
    return NumericalFault(
        f"numerical fault at epoch {epoch}, step {state.step}: {what} (lr {lr_now:.3g}); "
        "lower train.lr or set train.grad_clip; the last good checkpoint is kept",
        kind=kind,
        epoch=epoch,
        step=state.step,
        value=value,
    )


def _check_loss(state: TrainState, loss: torch.Tensor) -> None:
    value = float(loss.detach())
    if not math.isfinite(value):
        kind = "nan_loss" if math.isnan(value) else "inf_loss"
        raise _fault(state, kind, value, f"training loss is {value}")


def _clip_and_check_gradients(state: TrainState) -> None:
    """Gradient norm over the trainable parameters: a fault if non-finite or above
    ``train.grad_norm_limit``; clipped to ``train.grad_clip`` when set."""
    grads = [p.grad for p in state.model.parameters() if p.grad is not None]
    if not grads:
        return
    norm = nn.utils.get_total_norm(grads)
    value, cfg = float(norm), state.config.train
    if not math.isfinite(value):
        raise _fault(state, "nonfinite_grad", value, f"gradient norm is {value}")
    if cfg.grad_norm_limit is not None and value > cfg.grad_norm_limit:
        raise _fault(
            state,
            "exploding_grad",
            value,
            f"gradient norm {value:.3g} exceeds train.grad_norm_limit={cfg.grad_norm_limit:g}",
        )
    if cfg.grad_clip is not None:
        nn.utils.clip_grads_with_norm_(
            [p for p in state.model.parameters() if p.grad is not None], cfg.grad_clip, norm
        )


def _train_step(
    state: TrainState, x: torch.Tensor, y: torch.Tensor, eps: float, gen: torch.Generator
) -> tuple[float, int]:
    """One optimizer step; returns (summed loss, correct count) on the trained inputs.

    Raises:
        NumericalFault: non-finite loss or gradient norm, or one above the limit (before any
            parameter is updated).
    """
    _set_lr(state)
    out = state.objective(state.model, x, y, eps, generator=gen)
    _check_loss(state, out.loss)
    state.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    _clip_and_check_gradients(state)
    state.optimizer.step()
    state.step += 1
    correct = int((out.logits.argmax(1) == y).sum())
    return float(out.loss.detach()) * len(y), correct


def train_epoch(state: TrainState, epoch: int, callbacks: Callbacks) -> dict[str, Any]:
    """Run epoch ``epoch`` (1-based) and return its metrics row (validation included)."""
    cfg = state.config
    torch.manual_seed(derive_seed(cfg.train.seed, "epoch", epoch))
    attack_gen = torch.Generator().manual_seed(derive_seed(cfg.train.seed, "attack", epoch))
    loader = state.train_loader(epoch)
    spe = len(loader)
    schedule = state.current_schedule()
    callbacks.on_epoch_start(epoch, cfg.train.epochs, schedule.eps_at(epoch, spe - 1, spe), spe)
    start = time.perf_counter()
    state.model.train()
    loss_sum, correct, seen, eps_sum = 0.0, 0, 0, 0.0
    with count_passes(state.model) as passes:
        for i, (x, y) in enumerate(loader):
            x, y = x.to(state.device).float(), y.to(state.device)
            eps = schedule.eps_at(epoch, i, spe)
            batch_loss, batch_correct = _train_step(state, x, y, eps, attack_gen)
            loss_sum, correct, seen = loss_sum + batch_loss, correct + batch_correct, seen + len(y)
            eps_sum += eps * len(y)
            callbacks.on_batch(i + 1, spe)
    seconds = time.perf_counter() - start
    row: dict[str, Any] = {
        "epoch": epoch,
        "eps": eps_sum / max(seen, 1),
        "lr": float(state.optimizer.param_groups[0]["lr"]),
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "seconds": round(seconds, 3),
        "examples_per_second": round(seen / seconds, 2) if seconds > 0 else None,
        "steps": spe,
        "examples": seen,
        **passes.as_dict(),
    }
    row.update(validate(state, epoch))
    row["val_seconds"] = round(time.perf_counter() - start - seconds, 3)
    row.update(monitor_epoch(state, epoch, schedule.eps_at(epoch, spe - 1, spe)))
    return row


@torch.no_grad()
def clean_accuracy(
    model: nn.Module, data: Dataset, device: torch.device, limit: int | None, seed: int = 0
) -> float:
    """Clean accuracy (fraction) of ``model`` in eval mode on a seeded, stratified sample of
    ``limit`` examples (all when None; :mod:`robustft.subset`)."""
    was_training = model.training
    model.eval()
    sample, _ = subset(data, limit, seed)
    n = len(sample)  # type: ignore[arg-type]
    loader = DataLoader(sample, batch_size=256)
    correct = 0
    for x, y in loader:
        correct += int((model(x.to(device).float()).argmax(1) == y.to(device)).sum())
    model.train(was_training)
    return correct / max(n, 1)


def validate(state: TrainState, epoch: int) -> dict[str, Any]:
    """Clean validation accuracy, plus robust (PGD-10 at eps_g) on a subset when scheduled."""
    vcfg = state.config.val
    out: dict[str, Any] = {
        "val_acc": clean_accuracy(
            state.model,
            state.data.val,
            state.device,
            vcfg.max_examples,
            seed=derive_seed(state.config.train.seed, "val"),
        )
    }
    eps_g = state.config.attack.eps
    if vcfg.robust_every > 0 and epoch % vcfg.robust_every == 0 and eps_g > 0:
        attack = attacks.create("pgd", norm=state.config.attack.norm, steps=10)
        curve = robustness_curve(
            state.model,
            state.data.val,
            attack,
            [0.0, eps_g],
            max_examples=vcfg.robust_examples,
            seed=derive_seed(state.config.train.seed, "val"),
            masking_check_examples=0,  # sanity checks belong to the final evaluation
            gradient_free_examples=0,
        )
        out["val_robust_acc"] = curve.robust_accuracy
    return out


def monitor_enabled(config: RunConfig) -> bool:
    """Whether the catastrophic-overfitting monitor runs (``monitor.co``: ``auto`` = on for
    one-step training attacks)."""
    co = config.monitor.co
    return co == "on" or (co == "auto" and config.attack.name in ONE_STEP_ATTACKS)


def monitor_epoch(state: TrainState, epoch: int, eps: float) -> dict[str, Any]:
    """The monitor's row entries for an epoch ending at training eps ``eps`` (none when the
    monitor is off or eps is 0); see :mod:`robustft.monitor`."""
    if not monitor_enabled(state.config) or eps <= 0:
        return {}
    mcfg = state.config.monitor
    start = time.perf_counter()
    out: dict[str, Any] = measure(
        state.model,
        state.data.val,
        eps,
        norm=state.config.attack.norm,
        examples=mcfg.examples,
        pgd_steps=mcfg.pgd_steps,
        seed=derive_seed(state.config.train.seed, "monitor"),
    )
    out["co_eps"] = eps
    best = best_pgd(state.history)
    out["co_flagged"] = overfit_rule(state.config).flags(out[PGD_KEY], out[FGSM_KEY], best)
    out["monitor_seconds"] = round(time.perf_counter() - start, 3)
    return out


def overfit_rule(config: RunConfig) -> OverfitRule:
    return OverfitRule(gap=config.monitor.gap, ratio=config.monitor.ratio)


def run_probe(
    config: RunConfig, epochs: int, device: torch.device, callbacks: Callbacks
) -> list[float]:
    """Clean fine-tuning for ``epochs`` epochs (same model, data and optimizer settings, eps 0);
    returns the validation accuracy after each epoch. Used by ``hinge(auto)`` to choose T1."""
    clean = replace(
        config,
        train=replace(
            config.train, epochs=epochs, warmup_epochs=min(config.train.warmup_epochs, epochs - 1)
        ),
        attack=replace(config.attack, eps=0.0, schedule="constant"),
    )
    state = build_state(clean, device)
    return [train_epoch(state, epoch, callbacks)["val_acc"] for epoch in range(1, epochs + 1)]


def _resolve_probe(state: TrainState, run: RunDir, callbacks: Callbacks) -> None:
    """For ``hinge(auto)``: load the probe's result from the run dir, or run the probe once and
    save it atomically (a resumed run never repeats it)."""
    base = state.eps_schedule.schedule
    if not isinstance(base, HingeAuto):
        return
    path = run.root / "probe.json"
    if path.is_file():
        state.probe_val_acc = [float(a) for a in json.loads(path.read_text())["val_acc"]]
        return
    epochs = base.probe_epochs(state.config.train.epochs)
    _logger.info("hinge(auto): clean probe run of %d epochs to choose T1", epochs)
    state.probe_val_acc = run_probe(state.config, epochs, state.device, callbacks)
    atomic_write_json(path, {"epochs": epochs, "val_acc": state.probe_val_acc})


def _checkpoint_payload(state: TrainState) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "config": state.config.to_dict(),
        "run_id": state.config.run_id(),
        "epoch": state.epoch,
        "step": state.step,
        "train_seconds": state.train_seconds,
        "history": state.history,
        "model": trainable_state_dict(state.model),
        "model_info": state.model.info.to_dict(),
        "base_fingerprint": state.base_fingerprint,
        "optimizer": state.optimizer.state_dict(),
        "stopped": state.stopped,
        "num_classes": state.data.num_classes,
        "class_names": list(state.data.class_names),
        "rng_cpu": torch.get_rng_state(),
        "threads": state.threads,
    }
    if torch.cuda.is_available():
        payload["rng_cuda"] = torch.cuda.get_rng_state_all()
    return payload


def restore(state: TrainState, payload: dict[str, Any]) -> None:
    """Load a checkpoint payload into ``state`` (same config required)."""
    if payload.get("run_id") != state.config.run_id():
        raise UserError("checkpoint belongs to a different config; use --force to start over")
    _check_base(payload, state.base_fingerprint, "the resumed run")
    check_class_set(
        payload.get("class_names") or [],
        state.data.class_names,
        source="the checkpoint",
        dataset=f"dataset {state.config.data.name}",
        fix="resume with the data the run was started on",
    )
    load_trainable_state_dict(state.model, payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.stopped = payload.get("stopped")
    state.epoch = int(payload["epoch"])
    state.step = int(payload["step"])
    state.train_seconds = float(payload["train_seconds"])
    state.history = list(payload["history"])
    torch.set_rng_state(payload["rng_cpu"])


def _check_base(payload: dict[str, Any], fingerprint: str, what: str) -> None:
    """Refuse a trainable-only checkpoint on base weights other than those it was trained on."""
    saved = payload.get("base_fingerprint")
    if saved is not None and saved != fingerprint:
        info = payload.get("model_info") or {}
        raise UserError(
            f"checkpoint was trained on different base weights than {what} has "
            f"({info.get('name')}, {info.get('source')}); load it with the same model.weights "
            "and package versions it was trained with"
        )


def final_evaluation(state: TrainState, callbacks: Callbacks) -> RobustnessCurve:
    """Robustness curve on the test split (config ``eval`` section)."""
    ecfg = state.config.eval
    grid = eval_grid(state.config)
    attack = build_attack(ecfg.attack, norm=state.config.attack.norm, steps=ecfg.steps)
    n = (
        len(state.data.test)
        if ecfg.max_examples is None
        else min(ecfg.max_examples, len(state.data.test))
    )  # type: ignore[arg-type]
    callbacks.on_eval_start(n)
    return robustness_curve(
        state.model,
        state.data.test,
        attack,
        grid,
        mode=ecfg.mode,
        seed=ecfg.seed,
        batch_size=ecfg.batch_size,
        max_examples=ecfg.max_examples,
        progress=callbacks.on_eval,
    )


def _result(state: TrainState, curve: RobustnessCurve) -> dict[str, Any]:
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
        "cost": _cost(state, curve),
    }
    result["findings"] = [asdict(f) for f in diagnose(result, state.history, state.config)]
    return result


def _cost(state: TrainState, curve: RobustnessCurve) -> dict[str, Any]:
    """Compute spent: measured training passes, time per epoch, throughput, trainable size.

    ``train_example_*_passes`` weigh passes by batch size; ``passes_per_step`` is the forward
    passes of one optimizer step (attack + update: 2 for FGSM, 8 for PGD-7)."""
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
    result: dict[str, Any],
    history: list[dict[str, Any]],
    config: RunConfig,
    reference_clean: float | None = None,
) -> list[Finding]:
    """Failure signatures of a finished run (``reference_clean``: standard FT's clean accuracy
    on the same backbone and data, for the suboptimal-transfer flag)."""
    return diagnose_run(
        history,
        result,
        num_classes=int(result["num_classes"]),
        schedule_text=str(result.get("schedule_resolved") or config.attack.schedule),
        reference_clean=reference_clean,
        attack_name=config.attack.name,
        attack_steps=config.attack.steps,
        overfit_rule=overfit_rule(config),
    )


def fit(
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    callbacks: Callbacks | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Train per ``config`` in ``run_dir``, evaluate on the test split, write ``result.json``.

    Returns:
        The result dict (also written to ``result.json``).
    """
    cb: Callbacks = callbacks or NullCallbacks()
    check_config(config)
    with locked(RunDir(Path(run_dir))) as run:
        check_run_dir(run, config, resume=resume, force=force)
        existing = run.read_result() if resume and not force else None
        if existing is not None:
            return existing
        state = build_state(config, pick_device(device))
        init_run_dir(run, config, force=force)  # only now: a failed setup leaves nothing
        return _train_and_evaluate(state, run, resume=resume, callbacks=cb)


def _train_and_evaluate(
    state: TrainState, run: RunDir, *, resume: bool, callbacks: Callbacks
) -> dict[str, Any]:
    """The body of :func:`fit` once the run directory is locked and initialised."""
    cb, config = callbacks, state.config
    payload = None
    if resume and run.has_checkpoint():
        payload = load_checkpoint_with_fallback(run.checkpoint, _logger.warning)
    elif resume:
        _logger.info("no checkpoint in %s yet: starting from the first epoch", run.root)
    state.threads = thread_count(config, payload)
    with cpu_threads(state.threads):
        return _run_epochs(state, run, payload, cb)


def thread_count(config: RunConfig, payload: dict[str, Any] | None) -> int:
    """CPU threads for a run: ``train.threads``, else those the checkpoint being resumed was
    trained with (so the resumed run sums floats as it did), else the process default."""
    if config.train.threads is not None:
        return config.train.threads
    saved = None if payload is None else payload.get("threads")
    if saved is not None and int(saved) != torch.get_num_threads():
        _logger.info(
            "resuming with the run's %d CPU threads, not %d", saved, torch.get_num_threads()
        )
        return int(saved)
    return torch.get_num_threads()


@contextlib.contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """``torch.set_num_threads(count)`` inside the block; the previous count restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_epochs(
    state: TrainState, run: RunDir, payload: dict[str, Any] | None, cb: Callbacks
) -> dict[str, Any]:
    config = state.config
    write_env(run, state.device)
    if state.data.skipped:  # data.bad_images=skip left these out
        atomic_write_text(run.root / "skipped_images.txt", "\n".join(state.data.skipped) + "\n")
    if payload is not None:
        restore(state, payload)
        _logger.info("resumed %s at epoch %d", run.root, state.epoch)
    _resolve_probe(state, run, cb)
    run.write_metrics(state.history)
    run.failure.unlink(missing_ok=True)
    while state.epoch < config.train.epochs and state.stopped is None:
        try:
            row = train_epoch(state, state.epoch + 1, cb)
        except NumericalFault as fault:
            _record_failure(run, state, fault)
            raise
        state.epoch += 1
        state.train_seconds += row["seconds"]
        state.history.append(row)
        _apply_monitor(state, run)
        save_checkpoint(run.checkpoint, _checkpoint_payload(state))
        run.write_metrics(state.history)
        cb.on_epoch_end(row)
    curve = final_evaluation(state, cb)
    atomic_write_json(run.robustness, curve.to_dict())
    result = _result(state, curve)
    atomic_write_json(run.result, result)
    return result


def _record_failure(run: RunDir, state: TrainState, fault: NumericalFault) -> None:
    """Write ``failure.json`` (what, where, the last good epoch kept in the checkpoint)."""
    atomic_write_json(
        run.failure,
        {
            "run_id": state.config.run_id(),
            "kind": fault.kind,
            "epoch": fault.epoch,
            "step": fault.step,
            "value": fault.value if math.isfinite(fault.value) else str(fault.value),
            "message": str(fault),
            "last_good_epoch": state.epoch,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )


def _apply_monitor(state: TrainState, run: RunDir) -> None:
    """Act on the overfitting monitor's verdict for the epoch just finished.

    ``rollback`` keeps the trainable weights of every unflagged epoch in ``good.pt``; at the
    onset it restores them. ``stop`` and ``rollback`` end training (``state.stopped``)."""
    row, action = state.history[-1], state.config.monitor.action
    if not row.get("co_flagged"):
        if action == "rollback" and monitor_enabled(state.config):
            snapshot = {"epoch": state.epoch, "model": trainable_state_dict(state.model)}
            save_checkpoint(run.good, snapshot)
        return
    if action == "flag":
        return
    stopped: dict[str, Any] = {"reason": "catastrophic_overfitting", "onset": state.epoch}
    stopped["action"] = action
    if action == "rollback":
        stopped["rolled_back_to"] = None
        if run.good.is_file():
            good = load_checkpoint_with_fallback(run.good, _logger.warning)
            load_trainable_state_dict(state.model, good["model"])
            stopped["rolled_back_to"] = int(good["epoch"])
    _logger.warning("catastrophic overfitting at epoch %d: %s", state.epoch, stopped)
    state.stopped = stopped


def load_trained_model(
    path: str | Path, device: str = "auto"
) -> tuple[ClassifierModel, RunConfig, dict[str, Any]]:
    """Rebuild a trained model from a run directory or a checkpoint file.

    Returns:
        (model in eval mode, its config, the checkpoint payload).
    """
    from robustft.config import build_config

    p = Path(path)
    ckpt = RunDir(p).checkpoint if p.is_dir() else p
    payload = load_latest_checkpoint(ckpt)
    config = build_config(payload["config"])
    full = config.model.mode == "full"  # every weight is in the checkpoint: no base needed
    model = build_model(
        config.model.name,
        num_classes=int(payload["num_classes"]),
        pretrained=config.model.pretrained and not full,
        weights=None if full else config.model.weights,
        mode=config.model.mode,
        mode_options=mode_options_from_config(config.model),
    )
    if not full:
        _check_base(payload, base_fingerprint(model), f"the base model built here for {ckpt}")
    load_trainable_state_dict(model, payload["model"])
    model.to(pick_device(device)).eval()
    return model, config, payload
