"""Config to objects: everything a run is made of, built from a validated :class:`RunConfig`.

The commands (``train``, ``eval``, ``export``, ``sweep``, ``demo``) and the Python API build
their data, model, optimizer, attacks, schedule and evaluation grid here; the training loop
(:mod:`robustft.training`) receives the objects and never reads a config to make one. Values were
validated once, when the config was built (:mod:`robustft.config`); what only the library can
check (schedule text, attack names for a norm, the eval grid) is checked by
:func:`check_config` before anything is written.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from robustft import attacks
from robustft.config import RunConfig
from robustft.data.factory import build_datasets_from_spec
from robustft.data.spec import DataSpec, DataSplits
from robustft.errors import UserError
from robustft.models import (
    ClassifierModel,
    build_model,
    mode_options_from_config,
    param_groups,
)
from robustft.monitor import OverfitRule
from robustft.schedules import EpsSchedule, parse_schedule
from robustft.units import eps_grid
from robustft.utils.seeding import derive_seed

_logger = logging.getLogger(__name__)


def build_data(config: RunConfig) -> DataSplits:
    """The train/val/test splits the config describes (deterministic given train.seed).

    Raises:
        UserError: the run was trained on datasets given from Python (``custom:...``).
    """
    if config.data.name.startswith("custom:"):
        raise UserError(
            f"this run was trained on datasets given from Python ({config.data.name}); evaluate "
            "it in Python (robustft.evaluate) or on named data (robustft eval RUN --data NAME)"
        )
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
    before anything is written; and that the tracking backends and AutoAttack
    (``eval.autoattack``) chosen are installed."""
    from robustft.tracking import check_backends

    check_backends(config.log.backends)
    build_schedule(config)
    build_train_attack(config)
    eval_grid(config)
    build_attack(config.eval.attack, norm=config.attack.norm, steps=config.eval.steps)
    if config.eval.autoattack is not None:
        from robustft.robustness.autoattack import reference

        reference()


ONE_STEP_ATTACKS = ("fgsm", "fgsm-rs")


def build_attack(name: str, *, norm: str, steps: int, **hyper: Any) -> attacks.Attack:
    """``attacks.create`` with a step count that attacks without steps ignore (FGSM, FGSM-RS
    take one step; Square counts queries)."""
    spec = attacks.ATTACKS.get(name)
    if spec is not None and spec.takes_steps:
        hyper["steps"] = steps
    return attacks.create(name, norm=norm, **hyper)


def build_train_attack(config: RunConfig) -> attacks.Attack:
    """The attack that crafts training examples (``attack`` section)."""
    a = config.attack
    hyper: dict[str, Any] = {"eval_mode": a.eval_mode}
    if a.rel_step is not None:
        hyper["rel_step"] = a.rel_step
    return build_attack(a.name, norm=a.norm, steps=a.steps, **hyper)


def build_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over ``model``'s trainable parameter groups (head lr, no weight
    decay on biases and norms); each group remembers its peak lr as ``initial_lr``."""
    cfg = config.train
    groups = param_groups(model, lr=cfg.lr, weight_decay=cfg.weight_decay, head_lr=cfg.head_lr)
    for group in groups:
        group["initial_lr"] = group["lr"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))


def overfit_rule(config: RunConfig) -> OverfitRule:
    """The catastrophic-overfitting monitor's thresholds (``monitor.gap``, ``monitor.ratio``)."""
    return OverfitRule(gap=config.monitor.gap, ratio=config.monitor.ratio)


def build_schedule(config: RunConfig) -> EpsSchedule:
    """The training eps schedule (``attack.schedule`` scaled to ``attack.eps``)."""
    return EpsSchedule(
        parse_schedule(config.attack.schedule),
        eps=config.attack.eps,
        epochs=config.train.epochs,
        granularity=config.attack.granularity,
        seed=config.train.seed,
    )


def build_backbone(config: RunConfig, num_classes: int) -> ClassifierModel:
    """The model the config names, with a new ``num_classes`` head, in its fine-tuning mode.
    Seeded (``derive_seed(train.seed, "init")``) so the new head is the same every time."""
    torch.manual_seed(derive_seed(config.train.seed, "init"))
    return build_model(
        config.model.name,
        num_classes=num_classes,
        pretrained=config.model.pretrained,
        weights=config.model.weights,
        mode=config.model.mode,
        mode_options=mode_options_from_config(config.model),
    )


def build_eval_attack(config: RunConfig) -> attacks.Attack:
    """The final evaluation's attack (``eval.attack`` with ``eval.steps``, the run's norm)."""
    return build_attack(config.eval.attack, norm=config.attack.norm, steps=config.eval.steps)
