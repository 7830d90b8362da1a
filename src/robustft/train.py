"""The robust fine-tuning loop: progress -> eps -> objective -> step, with checkpoints.

Each epoch is reproducible on its own: data order, augmentation, dropout and attack random
starts are seeded from ``(train.seed, epoch)``. With the checkpoint saved at every epoch end
(model, optimizer, epoch, history, RNG states, resolved config), a run killed at any moment and
resumed with ``--resume`` continues from the last complete epoch and, on CPU, ends with the same
numbers as an uninterrupted run.

Under ``torchrun`` the same loop trains data-parallel: each rank trains its shard of every
global batch through DistributedDataParallel, metrics are summed across ranks and only rank 0
writes the run directory (:mod:`robustft.distributed` says what is guaranteed and how).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from robustft import attacks, distributed
from robustft.build import (
    ONE_STEP_ATTACKS,
    build_backbone,
    build_data,
    build_eval_attack,
    build_optimizer,
    build_schedule,
    build_train_attack,
    check_base,
    check_config,
    derive_seed,
    eval_grid,
    overfit_rule,
)
from robustft.callbacks import CallbackList, Callbacks
from robustft.checkpoint import (
    atomic_write_json,
    atomic_write_text,
    load_checkpoint_with_fallback,
    load_latest_checkpoint,
    save_checkpoint,
)
from robustft.config import RunConfig
from robustft.cost import count_passes
from robustft.data import DataSplits, check_class_set
from robustft.distributed import SINGLE, ShardBatches, World
from robustft.errors import DataFault, NumericalFault, UserError, option
from robustft.loader import TrainBatches, cpu_count, default_workers
from robustft.models import (
    ClassifierModel,
    base_fingerprint,
    load_trainable_state_dict,
    trainable_state_dict,
)
from robustft.monitor import FGSM_KEY, PGD_KEY, best_pgd, measure
from robustft.objectives import AdversarialCE
from robustft.result import run_result
from robustft.robustness import RobustnessCurve, robustness_curve
from robustft.rundir import RunDir, check_run_dir, init_run_dir, locked, write_env
from robustft.schedules import Auto, EpsSchedule, HingeAuto
from robustft.subset import sample_size, subset

_logger = logging.getLogger(__name__)


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
    world: World = SINGLE  # the ranks of a data-parallel run (torchrun); one process by default
    net: nn.Module | None = None  # the DistributedDataParallel wrapper of model, when world.active
    batches: TrainBatches | None = None  # the training split's loader (made on first use)

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
        return distributed.batches_per_epoch(n, bs, self.world.size)

    @property
    def pin_memory(self) -> bool:
        """Page-locked batches and non-blocking copies (``train.pin_memory``; null: on CUDA)."""
        pin = self.config.train.pin_memory
        return self.device.type == "cuda" if pin is None else bool(pin)

    @property
    def workers(self) -> int:
        """Loader processes: ``train.num_workers``, or the device's default when null."""
        workers = self.config.train.num_workers
        return default_workers(self.device) if workers is None else workers

    def train_loader(self, epoch: int) -> Iterable[Any]:
        """The batches of epoch ``epoch``, shuffled from ``(train.seed, epoch)``: in a
        data-parallel run this rank's shards of them in the same global order
        (:class:`robustft.distributed.ShardBatches`)."""
        cfg = self.config.train
        if self.world.active:
            n = len(self.data.train)  # type: ignore[arg-type]
            shards = ShardBatches(n, cfg.batch_size, cfg.seed, epoch, self.world)
            return DataLoader(
                self.data.train,
                batch_sampler=shards,
                num_workers=self.workers,
                pin_memory=self.pin_memory,
            )
        if self.batches is None:
            self.batches = TrainBatches(
                self.data.train,
                batch_size=cfg.batch_size,
                num_workers=self.workers,
                pin_memory=self.pin_memory,
            )
        return self.batches.epoch(derive_seed(cfg.seed, "order", epoch))


def build_state(
    config: RunConfig,
    device: torch.device,
    *,
    model: ClassifierModel | None = None,
    data: DataSplits | None = None,
    world: World = SINGLE,
) -> TrainState:
    """The state of a fresh run: ``model`` and ``data`` as given, or built from the config;
    optimizer, schedule and objective from the config (:mod:`robustft.build`); wrapped for
    data-parallel training when ``world`` has several ranks (:func:`distribute`)."""
    data = build_data(config) if data is None else data
    if config.eval.autoattack is not None:  # the final evaluation's, refused before training
        from robustft.autoattack import check_classes

        check_classes(data.num_classes)
    model = build_backbone(config, data.num_classes) if model is None else model
    model = model.to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if config.train.compile:
        # compiled in place: the update and the crafting call the compiled network, while the
        # module, its state dict (checkpoints) and the pass-counting hooks stay as they are
        model.net.compile()
    optimizer = build_optimizer(config, model)
    objective = AdversarialCE(build_train_attack(config), autocast_bf16=config.train.bf16)
    schedule = build_schedule(config)
    state = TrainState(config, model, optimizer, data, schedule, objective, device)
    state.base_fingerprint = base_fingerprint(model)
    distribute(state, world)
    return state


def distribute(state: TrainState, world: World) -> None:
    """Make ``state`` one rank of a data-parallel run over ``world`` (a collective: every rank
    calls it): the model wrapped in DistributedDataParallel, rank 0's weights everywhere."""
    if world.active:
        state.world = world
        state.net = distributed.wrap(
            state.model, state.device, world, sync_bn=state.config.train.sync_bn
        )


def _set_lr(state: TrainState) -> float:
    cfg = state.config.train
    spe = state.steps_per_epoch
    factor = lr_factor(
        state.step, cfg.epochs * spe, round(cfg.warmup_epochs * spe), cfg.lr_schedule
    )
    for group in state.optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return float(state.optimizer.param_groups[0]["lr"])


def _next_step(state: TrainState) -> tuple[int, int | None]:
    """The 1-based number of the optimizer step about to be taken in the run and in its epoch
    (None outside the epoch's steps: the hinge(auto) probe, validation)."""
    step, spe = state.step + 1, state.steps_per_epoch
    counted = step - state.epoch * spe
    return step, counted if 1 <= counted <= spe else None


def _fault(state: TrainState, kind: str, value: float, what: str) -> NumericalFault:
    """The fault of the optimizer step about to be taken; epochs and steps 1-based."""
    lr_now = float(state.optimizer.param_groups[0]["lr"])
    epoch, spe = state.epoch + 1, state.steps_per_epoch
    step, epoch_step = _next_step(state)
    where = f"step {step} of the run"
    if epoch_step is not None:
        where = f"step {epoch_step} of {spe} ({where})"
    kept = (
        f"the checkpoint of epoch {state.epoch} is kept"
        if state.epoch
        else "no checkpoint was written (the first epoch had not ended)"
    )
    return NumericalFault(
        f"numerical fault at epoch {epoch}, {where}: {what} (lr {lr_now:.3g}); "
        f"lower train.lr or set train.grad_clip; {kept}",
        kind=kind,
        epoch=epoch,
        step=step,
        epoch_step=epoch_step,
        value=value,
    )


def _check_loss(state: TrainState, value: float) -> None:
    if not math.isfinite(value):
        kind = "nan_loss" if math.isnan(value) else "inf_loss"
        raise _fault(state, kind, value, f"training loss is {value}")


def _gradient_norm(state: TrainState) -> torch.Tensor | None:
    """The total gradient norm over the trainable parameters (None without gradients)."""
    grads = [p.grad for p in state.model.parameters() if p.grad is not None]
    return nn.utils.get_total_norm(grads) if grads else None


def _clip_and_check_gradients(state: TrainState, norm: torch.Tensor, value: float) -> None:
    """Given the gradient norm (``value`` = its host copy): a fault if non-finite or above
    ``train.grad_norm_limit``; clipped to ``train.grad_clip`` when set."""
    cfg = state.config.train
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
    state: TrainState,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    gen: torch.Generator,
    bounds: tuple[int, int] | None = None,
) -> tuple[float, torch.Tensor | int, int]:
    """One optimizer step; returns (summed loss, correct count, examples) on the trained
    inputs: of the global batch in a data-parallel run, whose rank holds rows ``bounds`` =
    (first, global batch size) of it. In one process the correct count stays a device tensor
    and the loss and the gradient norm reach the host in one copy, the only wait for the
    device in a step (the attack's loop has none).

    Raises:
        NumericalFault: non-finite loss or gradient norm, or one above the limit (before any
            parameter is updated).
    """
    _set_lr(state)
    if bounds is not None:
        return _data_parallel_step(state, x, y, eps, gen, bounds)
    out = state.objective(state.model, x, y, eps, generator=gen)
    state.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    norm = _gradient_norm(state)
    loss = out.loss.detach()
    values = (loss if norm is None else torch.stack([loss, norm.to(loss)])).tolist()
    loss_value = values if isinstance(values, float) else values[0]
    _check_loss(state, loss_value)
    if norm is not None:
        _clip_and_check_gradients(state, norm, values[1])
    state.optimizer.step()
    state.step += 1
    correct = (out.logits.argmax(1) == y).sum()
    return loss_value * len(y), correct, len(y)


def _data_parallel_step(
    state: TrainState,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    gen: torch.Generator,
    bounds: tuple[int, int],
) -> tuple[float, int, int]:
    """:func:`_train_step` of one rank: crafted through the unwrapped model from this shard's
    rows of the global batch's random start; the loss weighted by the shard's share so that
    DDP's gradient average is the global batch's; loss and accuracy summed across ranks before
    the fault check (every rank stops together); BatchNorm statistics averaged after."""
    world = state.world
    start = distributed.shard_start(state.objective.attack, x, eps, gen, bounds)
    net = state.net if state.net is not None else state.model
    out = state.objective(net, x, y, eps, generator=gen, x_init=start, crafting_model=state.model)
    correct = int((out.logits.argmax(1) == y).sum())
    loss_sum, correct_sum, seen = distributed.all_sum(
        [float(out.loss.detach()) * len(y), correct, len(y)], world
    )
    _check_loss(state, loss_sum / seen)
    share = len(y) * world.size / bounds[1]  # 1 for equal shards
    state.optimizer.zero_grad(set_to_none=True)
    (out.loss if share == 1 else out.loss * share).backward()
    norm = _gradient_norm(state)
    if norm is not None:
        _clip_and_check_gradients(state, norm, float(norm))
    state.optimizer.step()
    if not state.config.train.sync_bn:
        distributed.average_buffers(state.model, world)
    state.step += 1
    return loss_sum, int(correct_sum), int(seen)


def train_epoch(state: TrainState, epoch: int, callbacks: Callbacks) -> dict[str, Any]:
    """Run epoch ``epoch`` (1-based) and return its metrics row (validation included)."""
    cfg, world = state.config, state.world
    # rank 0 draws augmentation and dropout as a one-process run; the other ranks their own
    rank = () if world.rank == 0 else ("rank", world.rank)
    torch.manual_seed(derive_seed(cfg.train.seed, "epoch", epoch, *rank))
    attack_gen = torch.Generator().manual_seed(derive_seed(cfg.train.seed, "attack", epoch))
    loader = state.train_loader(epoch)
    sampler = getattr(loader, "batch_sampler", None)
    shards = sampler if isinstance(sampler, ShardBatches) else None
    spe = state.steps_per_epoch if shards is None else len(shards)
    schedule = state.current_schedule()
    callbacks.on_epoch_start(epoch, cfg.train.epochs, schedule.eps_at(epoch, spe - 1, spe), spe)
    start = time.perf_counter()
    state.model.train()
    loss_sum, seen, eps_sum = 0.0, 0, 0.0
    correct = torch.zeros((), dtype=torch.int64, device=state.device)
    copy = {"non_blocking": state.pin_memory}  # pinned batches: the copy overlaps compute
    with count_passes(state.model) as passes:
        for i, (x, y) in enumerate(loader):
            x, y = x.to(state.device, **copy).float(), y.to(state.device, **copy)
            eps = schedule.eps_at(epoch, i, spe)
            bounds = None if shards is None else shards.bounds[i]
            batch_loss, batch_correct, n = _train_step(state, x, y, eps, attack_gen, bounds)
            loss_sum, correct, seen = loss_sum + batch_loss, correct + batch_correct, seen + n
            eps_sum += eps * n
            callbacks.on_batch(i + 1, spe)
    seconds = time.perf_counter() - start
    row: dict[str, Any] = {
        "epoch": epoch,
        "eps": eps_sum / max(seen, 1),
        "lr": float(state.optimizer.param_groups[0]["lr"]),
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": int(correct) / max(seen, 1),
        "seconds": round(seconds, 3),
        "examples_per_second": round(seen / seconds, 2) if seconds > 0 else None,
        "steps": spe,
        "examples": seen,
        "world_size": world.size,  # processes and threads per process that trained the epoch
        "threads": torch.get_num_threads(),
        **_global_passes(passes.as_dict(), world),
    }
    row.update(validate(state, epoch))
    row["val_seconds"] = round(time.perf_counter() - start - seconds, 3)
    row.update(monitor_epoch(state, epoch, schedule.eps_at(epoch, spe - 1, spe)))
    return row


def _global_passes(counts: dict[str, int], world: World) -> dict[str, int]:
    """An epoch's pass counts across ranks: batched passes as on each rank (they run side by
    side, as many on every rank), example-weighted ones summed."""
    keys = [k for k in counts if k.startswith("example_")]
    sums = distributed.all_sum([counts[k] for k in keys], world)
    return {**counts, **{k: int(v) for k, v in zip(keys, sums)}}


@torch.no_grad()
def clean_accuracy(
    model: nn.Module,
    data: Dataset,
    device: torch.device,
    limit: int | None,
    seed: int = 0,
    world: World = SINGLE,
) -> float:
    """Clean accuracy (fraction) of ``model`` in eval mode on a seeded, stratified sample of
    ``limit`` examples (all when None; :mod:`robustft.subset`); across ``world``'s ranks,
    each counts whole batches r, r + N, ... and the counts are summed."""
    was_training = model.training
    model.eval()
    sample, _ = subset(data, limit, seed)
    n = len(sample)  # type: ignore[arg-type]
    if world.active:
        batches = [list(range(i, min(n, i + 256))) for i in range(0, n, 256)]
        loader = DataLoader(sample, batch_sampler=batches[world.rank :: world.size])
    else:
        loader = DataLoader(sample, batch_size=256)
    correct = 0
    for x, y in loader:
        correct += int((model(x.to(device).float()).argmax(1) == y.to(device)).sum())
    model.train(was_training)
    if world.active:
        correct = int(distributed.all_sum([correct], world)[0])
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
            world=state.world,
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
            world=state.world,
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


def run_probe(state: TrainState, epochs: int, callbacks: Callbacks) -> list[float]:
    """Clean fine-tuning for ``epochs`` epochs of a copy of the run's untrained model (same data
    and optimizer settings, eps 0); returns the validation accuracy after each epoch. Used by
    ``hinge(auto)`` to choose T1."""
    config = state.config
    clean = replace(
        config,
        train=replace(
            config.train, epochs=epochs, warmup_epochs=min(config.train.warmup_epochs, epochs - 1)
        ),
        attack=replace(config.attack, eps=0.0, schedule="constant"),
    )
    probe = build_state(
        clean, state.device, model=copy.deepcopy(state.model), data=state.data, world=state.world
    )
    return [train_epoch(probe, epoch, callbacks)["val_acc"] for epoch in range(1, epochs + 1)]


def _resolve_probe(state: TrainState, run: RunDir, callbacks: Callbacks) -> None:
    """For ``hinge(auto)``: load the probe's result from the run dir, or run the probe once and
    save it atomically (a resumed run never repeats it)."""
    base = state.eps_schedule.schedule
    if not isinstance(base, HingeAuto):
        return
    path = run.root / "probe.json"
    saved = path.is_file() and json.loads(path.read_text())["val_acc"]
    saved = distributed.broadcast(saved if state.world.is_main else None, state.world)
    if saved:
        state.probe_val_acc = [float(a) for a in saved]
        return
    epochs = base.probe_epochs(state.config.train.epochs)
    _logger.info("hinge(auto): clean probe run of %d epochs to choose T1", epochs)
    state.probe_val_acc = run_probe(state, epochs, callbacks)
    probe = {"epochs": epochs, "val_acc": state.probe_val_acc}
    distributed.on_main(state.world, lambda: atomic_write_json(path, probe))


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
        "world_size": state.world.size,
    }
    if torch.cuda.is_available():
        payload["rng_cuda"] = torch.cuda.get_rng_state_all()
    return payload


def restore(state: TrainState, payload: dict[str, Any]) -> None:
    """Load a checkpoint payload into ``state`` (same config required)."""
    if payload.get("run_id") != state.config.run_id():
        raise UserError(
            f"checkpoint belongs to a different config; pass {option('force')} to start over"
        )
    check_base(payload, state.base_fingerprint, "the resumed run")
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


def final_evaluation(state: TrainState, callbacks: Callbacks) -> RobustnessCurve:
    """Robustness curve on the test split (config ``eval`` section) and, with
    ``eval.autoattack``, AutoAttack accuracy at the curve's largest eps on the same examples
    (stored in the curve's ``autoattack``)."""
    ecfg = state.config.eval
    grid = eval_grid(state.config)
    attack = build_eval_attack(state.config)
    n = sample_size(state.data.test, ecfg.max_examples)
    callbacks.on_stage("robustness curve")
    callbacks.on_eval_start(n)
    curve = robustness_curve(
        state.model,
        state.data.test,
        attack,
        grid,
        mode=ecfg.mode,
        seed=ecfg.seed,
        batch_size=ecfg.batch_size,
        max_examples=ecfg.max_examples,
        progress=callbacks.on_eval,
        world=state.world,
        early_stop=ecfg.early_stop,
    )
    version = ecfg.autoattack
    if version is None:
        return curve
    from robustft.autoattack import autoattack_accuracy, label

    callbacks.on_stage(label(version, grid[-1], state.config.attack.norm))
    callbacks.on_eval_start(n)

    def measure() -> dict[str, Any]:
        return autoattack_accuracy(
            state.model,  # not its DistributedDataParallel wrapper: no collectives inside
            state.data.test,
            eps=grid[-1],
            norm=state.config.attack.norm,
            version=version,
            num_classes=state.data.num_classes,
            max_examples=ecfg.max_examples,
            seed=ecfg.seed,
            batch_size=ecfg.batch_size,
            progress=callbacks.on_eval,
        ).to_dict()

    # under torchrun rank 0 alone runs the reference's (unsharded) evaluation, the others wait
    # (distributed.TIMEOUT) and receive its result
    measured = distributed.broadcast(distributed.on_main(state.world, measure), state.world)
    return replace(curve, autoattack=measured)


def fit(
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    callbacks: Callbacks | None = None,
    device: str = "auto",
    model: ClassifierModel | None = None,
    data: DataSplits | None = None,
) -> dict[str, Any]:
    """Train per ``config`` in ``run_dir``, evaluate on the test split, write ``result.json``.

    Args:
        config: the run (validated); its hash names the run and guards ``resume``.
        run_dir: the run directory (:mod:`robustft.rundir`), locked while training.
        resume: continue from the last checkpoint (a finished run returns its result).
        force: clear a run directory holding another run.
        model, data: objects to train and evaluate instead of building them from the config
            (the Python API's user models and datasets, :func:`robustft.fit`).

    Under ``torchrun`` every rank calls this; rank 0 alone locks and writes ``run_dir`` and
    reports to ``callbacks``. After an elastic restart (``torchrun --max-restarts``) the run
    resumes from its last checkpoint by itself (and ``force`` no longer applies).

    Returns:
        The result dict (also written to ``result.json``).
    """
    check_config(config)
    if distributed.restart_count() > 0:
        _logger.warning("torchrun restarted the workers: resuming %s", run_dir)
        resume, force = True, False
    world, rank_device, created = distributed.join(device)
    try:
        batch_size = config.train.batch_size
        distributed.on_main(world, lambda: distributed.check_batch_size(batch_size, world))
        with _locked_on_main(RunDir(Path(run_dir)), world) as run:
            distributed.on_main(
                world, lambda: check_run_dir(run, config, resume=resume, force=force)
            )
            existing = distributed.broadcast(
                run.read_result() if resume and not force and world.is_main else None, world
            )
            if existing is not None:
                if model is not None:  # trained in place: it gets the run's final weights
                    load_final_weights(model, run)
                return existing
            state = distributed.agree(
                world, lambda: build_state(config, rank_device, model=model, data=data)
            )
            distribute(state, world)
            # only now: a failed setup leaves nothing
            distributed.on_main(world, lambda: init_run_dir(run, config, force=force))
            cb: Callbacks = Callbacks()  # ranks other than 0 report nothing
            if world.is_main:
                from robustft.tracking import build_trackers  # config.log.backends

                cb = CallbackList([callbacks, *build_trackers(config.log)])
            return _train_and_evaluate(state, run, resume=resume, callbacks=cb)
    finally:
        distributed.leave(created)


def load_final_weights(model: ClassifierModel, run: RunDir) -> None:
    """Load the trainable weights of ``run``'s last checkpoint (its final ones, once it has a
    result) into ``model``, built as the run's was."""
    payload = load_latest_checkpoint(run.checkpoint)
    check_base(payload, base_fingerprint(model), "the model given")
    load_trainable_state_dict(model, payload["model"])


@contextlib.contextmanager
def _locked_on_main(run: RunDir, world: World) -> Iterator[RunDir]:
    """:func:`robustft.rundir.locked` held by rank 0 (the one writer) for the whole block; the
    other ranks wait for it and fail with it."""
    with contextlib.ExitStack() as stack:
        distributed.on_main(world, lambda: stack.enter_context(locked(run)))
        yield run


def _train_and_evaluate(
    state: TrainState, run: RunDir, *, resume: bool, callbacks: Callbacks
) -> dict[str, Any]:
    """The body of :func:`fit` once the run directory is locked and initialised."""
    cb, config, world = callbacks, state.config, state.world
    payload = None
    # rank 0 decides whether to resume; every rank then reads the checkpoint itself (a rank on
    # a node that cannot see it stops them all with the reason)
    has_checkpoint = distributed.broadcast(resume and run.has_checkpoint(), world)
    if has_checkpoint:
        payload = distributed.agree(
            world, lambda: load_checkpoint_with_fallback(run.checkpoint, _logger.warning)
        )
    elif resume:
        _logger.info("no checkpoint in %s yet: starting from the first epoch", run.root)
    if payload is not None and world.is_main:
        _warn_world_change(state, int(payload.get("world_size") or 1))
    state.threads, threads = thread_count(config, payload, world)
    with cpu_threads(threads):
        return _run_epochs(state, run, payload, cb)


def _warn_world_change(state: TrainState, saved: int) -> None:
    """Say it when a run is resumed with another number of processes than it last ran with."""
    now = state.world.size
    if saved == now:
        return
    cfg = state.config.train

    def processes(n: int) -> str:
        return f"{n} process" + ("es" if n > 1 else "")

    changes = "the gradients, losses and accuracies are summed in another order"
    if distributed.has_batchnorm(state.model) and not cfg.sync_bn:
        changes += (
            f", and BatchNorm normalises each process's {cfg.batch_size // now} examples of a "
            f"batch with their own statistics (before: {cfg.batch_size // saved})"
        )
    _logger.warning(
        "resuming a run trained so far with %s with %s: %s, so it follows neither run exactly "
        "(each metrics row records its world_size)",
        processes(saved),
        processes(now),
        changes,
    )


def thread_count(
    config: RunConfig, payload: dict[str, Any] | None, world: World = SINGLE
) -> tuple[int, int]:
    """CPU threads: (the run's count, this process's).

    The run's count is ``train.threads``, else the count the checkpoint being resumed records
    (so that the resumed run sums floats as it did), else the process default (under torchrun
    1, unless ``OMP_NUM_THREADS`` says otherwise). A process trains with the run's count, except
    where the processes of a torchrun run on one machine (``world.local_size``) would together
    ask for more threads than the machine's cores: there each takes the count divided by their
    number (at least 1), so that they share the cores the count stands for instead of
    oversubscribing them (2 processes x 2 threads on 2 cores made epochs 5 to 10 times slower).

    The run's count is what the checkpoint and ``result.json`` record as ``threads``, and what a
    resumed run starts from, whatever its number of processes; every metrics row records the
    threads each process trained that epoch with and the number of processes (``threads``,
    ``world_size``). A run repeats bit for bit with the same config, number of processes and
    cores per machine.
    """
    count = config.train.threads
    saved = None if payload is None else payload.get("threads")
    if count is None and saved is not None:
        count = int(saved)
        if count != torch.get_num_threads():
            _logger.info(
                "resuming with the run's %d CPU threads, not %d", count, torch.get_num_threads()
            )
    if count is None:
        count = torch.get_num_threads()
    local, cores = world.local_size, cpu_count()
    if not world.active or local * count <= cores:
        return count, count
    share = max(1, count // local)
    if world.is_main:
        _logger.warning(
            "%d processes on this machine's %d CPU cores: each trains with %d thread%s (the "
            "run's %d divided by %d)",
            local,
            cores,
            share,
            "s" if share > 1 else "",
            count,
            local,
        )
    return count, share


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
    main = functools.partial(distributed.on_main, state.world)  # rank 0 writes, the rest wait
    main(lambda: _write_start(state, run))
    if payload is not None:
        restore(state, payload)
        _logger.info("resumed %s at epoch %d", run.root, state.epoch)
    cb.on_start(run.root, config.to_dict(), list(state.history))
    try:
        result, curve = _epochs_and_evaluation(state, run, cb)
        cb.on_result(result, curve)
    except BaseException as err:
        cb.on_close(err)
        raise
    cb.on_close(None)
    return result


def _epochs_and_evaluation(
    state: TrainState, run: RunDir, cb: Callbacks
) -> tuple[dict[str, Any], RobustnessCurve]:
    """The epochs left, then the final evaluation; writes robustness.json and result.json."""
    config = state.config
    main = functools.partial(distributed.on_main, state.world)  # rank 0 writes, the rest wait
    _resolve_probe(state, run, cb)
    main(lambda: _write_metrics(state, run, clear_failure=True))
    while state.epoch < config.train.epochs and state.stopped is None:
        try:
            row = train_epoch(state, state.epoch + 1, cb)
        except (NumericalFault, DataFault) as fault:
            main(functools.partial(_record_failure, run, state, fault))
            raise
        state.epoch += 1
        state.train_seconds += row["seconds"]
        state.history.append(row)
        _apply_monitor(state, run)
        main(lambda: save_checkpoint(run.checkpoint, _checkpoint_payload(state)))
        main(lambda: _write_metrics(state, run))
        cb.on_epoch_end(row)
    curve = final_evaluation(state, cb)
    result = run_result(state, curve)
    main(lambda: atomic_write_json(run.robustness, curve.to_dict()))
    main(lambda: atomic_write_json(run.result, result))
    return result, curve


def _write_start(state: TrainState, run: RunDir) -> None:
    """The files a (re)started run writes first: ``env.json``, the skipped images."""
    write_env(run, state.device)
    if state.data.skipped:  # data.bad_images=skip left these out
        atomic_write_text(run.root / "skipped_images.txt", "\n".join(state.data.skipped) + "\n")


def _write_metrics(state: TrainState, run: RunDir, *, clear_failure: bool = False) -> None:
    run.write_metrics(state.history)
    if clear_failure:
        run.failure.unlink(missing_ok=True)


def _record_failure(run: RunDir, state: TrainState, fault: NumericalFault | DataFault) -> None:
    """Write ``failure.json`` (what, where, the last good epoch kept in the checkpoint: null
    when the first epoch had not ended). Epochs and steps are 1-based: ``step`` counts the
    run's optimizer steps, ``epoch_step`` those of its epoch. A :class:`DataFault` has no
    value; its steps are those of the batch being read (null when validation read it)."""
    step: int | None
    value: float | None
    if isinstance(fault, NumericalFault):
        epoch, step, epoch_step, value = fault.epoch, fault.step, fault.epoch_step, fault.value
    else:  # read for the next step, or (epoch_step None) for validation
        epoch, value = state.epoch + 1, None
        next_step, epoch_step = _next_step(state)
        step = next_step if epoch_step is not None else None
    atomic_write_json(
        run.failure,
        {
            "run_id": state.config.run_id(),
            "kind": fault.kind,
            "epoch": epoch,
            "step": step,
            "epoch_step": epoch_step,
            "value": value if value is None or math.isfinite(value) else str(value),
            "message": str(fault),
            "last_good_epoch": state.epoch or None,
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
            distributed.on_main(state.world, lambda: save_checkpoint(run.good, snapshot))
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
