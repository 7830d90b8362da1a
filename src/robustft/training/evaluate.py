"""TODO docstring."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from robustft import attacks, distributed
from robustft.callbacks import Callbacks
from robustft.config import MonitorConfig, RunConfig
from robustft.distributed import SINGLE, World
from robustft.errors import UserError
from robustft.monitor import DETECTED_KEY, DETECTOR, FGSM_KEY, PGD_KEY, best_pgd, measure
from robustft.robustness.curve import RobustnessCurve
from robustft.robustness.evaluate import robustness_curve
from robustft.subset import sample_size, subset
from robustft.training.build import (
    ONE_STEP_ATTACKS,
    attack_space,
    build_eval_attack,
    eval_grid,
    overfit_rule,
)
from robustft.training.state import TrainState
from robustft.utils import memory_format
from robustft.utils.memory_format import as_format, model_format
from robustft.utils.seeding import derive_seed


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
    correct, layout = 0, model_format(model)
    for x, y in loader:
        x = as_format(x.to(device).float(), layout)
        correct += int((model(x).argmax(1) == y.to(device)).sum())
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
        attack = attacks.create(
            "pgd", norm=state.config.attack.norm, steps=10, space=attack_space(state.config)
        )
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


def check_monitor_sample(config: RunConfig, val_size: int) -> None:
    """Refuse a monitor sample (``monitor.examples``) larger than the validation split it is
    drawn from, when the monitor runs: called as soon as the split is built, before training.
    The default (128) is "at most 128": a smaller split is sampled whole, as before; only a
    value the config sets is refused."""
    examples = config.monitor.examples
    if examples == MonitorConfig.examples:
        return
    if monitor_enabled(config) and examples > val_size:
        raise UserError(
            f"config monitor.examples: {examples} is larger than the validation split "
            f"({val_size} images) the overfitting monitor samples from; set "
            f"monitor.examples to at most {val_size}"
        )


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
        space=attack_space(state.config),
    )
    out["co_eps"] = eps
    best = best_pgd(state.history)
    out["co_flagged"] = overfit_rule(state.config).flags(out[PGD_KEY], out[FGSM_KEY], best)
    out[DETECTED_KEY] = DETECTOR.fires([*state.history, out])
    out["monitor_seconds"] = round(time.perf_counter() - start, 3)
    return out


def final_evaluation(state: TrainState, callbacks: Callbacks) -> RobustnessCurve:
    """Robustness curve on the test split (config ``eval`` section) and, with
    ``eval.autoattack``, AutoAttack accuracy at the curve's largest eps on the same examples
    (stored in the curve's ``autoattack``); the model in the evaluation's memory format
    (``state.eval_memory_format``: ``eval.channels_last``)."""
    ecfg = state.config.eval
    memory_format.apply(state.model, state.eval_memory_format)
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
    from robustft.robustness.autoattack import autoattack_accuracy, label

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
