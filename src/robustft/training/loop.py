"""TODO docstring."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from robustft import distributed
from robustft.callbacks import Callbacks
from robustft.cost import count_passes
from robustft.distributed import ShardBatches, World
from robustft.errors import NumericalFault
from robustft.training.build import attack_label
from robustft.training.evaluate import monitor_epoch, validate
from robustft.training.state import TrainState
from robustft.utils.memory_format import as_format
from robustft.utils.seeding import derive_seed


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
    """The fault of the optimizer step about to be taken; epochs and steps 1-based."""
    lr_now = float(state.optimizer.param_groups[0]["lr"])
    epoch, spe = state.epoch + 1, state.steps_per_epoch
    step, epoch_step = state.next_step()
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
    """The total gradient norm over the trainable parameters (None without gradients). On a
    CPU in one foreach call, where torch's default makes one call per tensor: the same number,
    1.1 ms instead of 2.4 ms a step on the offline default (elsewhere torch's default)."""
    grads = [p.grad for p in state.model.parameters() if p.grad is not None]
    if not grads:
        return None
    return nn.utils.get_total_norm(grads, foreach=grads[0].device.type == "cpu" or None)


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
            x = as_format(x, state.memory_format.format)  # the layout the model computes in
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
    if cfg.monitor.action == "switch":  # which attack trained it: before or after a switch
        row["train_attack"] = train_attack_label(state)
    row.update(validate(state, epoch))
    row["val_seconds"] = round(time.perf_counter() - start - seconds, 3)
    row.update(monitor_epoch(state, epoch, schedule.eps_at(epoch, spe - 1, spe)))
    return row


def train_attack_label(state: TrainState) -> str:
    """The attack training the run now: ``fgsm-rs``, or after a switch ``pgd-7``."""
    if state.switched is not None:
        return state.switched["to_attack"]
    return attack_label(state.config.attack.name, state.config.attack.steps)


def _global_passes(counts: dict[str, int], world: World) -> dict[str, int]:
    """An epoch's pass counts across ranks: batched passes as on each rank (they run side by
    side, as many on every rank), example-weighted ones summed."""
    keys = [k for k in counts if k.startswith("example_")]
    sums = distributed.all_sum([counts[k] for k in keys], world)
    return {**counts, **{k: int(v) for k, v in zip(keys, sums)}}
