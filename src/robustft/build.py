"""Config to objects: everything a run is made of, built from a validated :class:`RunConfig`.

The commands (``train``, ``eval``, ``export``, ``sweep``, ``demo``) and the Python API build
their data, model, optimizer, attacks, schedule and evaluation grid here; the training loop
(:mod:`robustft.train`) receives the objects and never reads a config to make one. Values were
validated once, when the config was built (:mod:`robustft.config`); what only the library can
check (schedule text, attack names for a norm, the eval grid) is checked by
:func:`check_config` before anything is written.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustft import attacks
from robustft.checkpoint import load_latest_checkpoint
from robustft.config import RunConfig
from robustft.data import DataSpec, DataSplits, build_datasets_from_spec
from robustft.errors import UserError, option
from robustft.models import (
    ClassifierModel,
    base_fingerprint,
    build_model,
    load_trainable_state_dict,
    mode_options_from_config,
    param_groups,
)
from robustft.models.custom import is_custom
from robustft.monitor import OverfitRule
from robustft.rundir import RunDir, run_state
from robustft.schedules import EpsSchedule, parse_schedule
from robustft.units import eps_grid

_logger = logging.getLogger(__name__)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived from the parts (stable across runs and platforms)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


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
            f"{option('device', name)}: not a device name; this machine has: auto, "
            f"{', '.join(have)}"
        ) from None
    index = 0 if device.index is None else device.index
    known = device.type == "cpu" or f"{device.type}:{index}" in have or device.type in have
    if not known:
        raise UserError(
            f"{option('device', name)}: not available; this machine has: auto, {', '.join(have)}"
        )
    return device


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
        from robustft.autoattack import reference

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


def check_base(payload: dict[str, Any], fingerprint: str, what: str) -> None:
    """Refuse a trainable-only checkpoint on base weights other than those it was trained on.

    The fix named depends on the model: a model given from Python needs the same starting
    weights; a built one the same ``model.weights`` file and package versions."""
    saved = payload.get("base_fingerprint")
    if saved is not None and saved != fingerprint:
        info = payload.get("model_info") or {}
        name, mode = str(info.get("name")), info.get("mode", "?")
        if is_custom(name):
            raise UserError(
                f"the checkpoint of this {name} run (mode {mode}) holds only the weights that "
                f"train, and the frozen weights of {what} differ from those it started from; "
                "pass the model with the same starting weights it was trained from (made as "
                "before, e.g. after the same torch.manual_seed, or with the same pretrained "
                "weights loaded)"
            )
        raise UserError(
            f"checkpoint was trained on different base weights than {what} has ({name}, "
            f"{info.get('source')}); load it with the same model.weights and package versions "
            "it was trained with"
        )


def load_trained_model(
    path: str | Path, device: str = "auto", *, model: nn.Module | None = None
) -> tuple[ClassifierModel, RunConfig, dict[str, Any]]:
    """Rebuild a trained model from a run directory or a checkpoint file.

    Args:
        model: for a run of a model given from Python (``model.name: custom:...``), a network
            of the same architecture (and, for trainable-only modes, base weights) to load into.

    Returns:
        (model in eval mode, its config, the checkpoint payload).
    """
    from robustft.config import build_config
    from robustft.models.custom import wrap_model

    p = Path(path)
    ckpt = RunDir(p).checkpoint if p.is_dir() else p
    if p.is_dir() and not RunDir(p).has_checkpoint():
        state = run_state(p)
        if state.status == "failed":
            raise UserError(f"{state.text()} before its first checkpoint: there is no model")
        if state.status == "training":
            raise UserError(
                f"{state.text()} and has no checkpoint yet (its first epoch has not ended); "
                "try again later"
            )
    payload = load_latest_checkpoint(ckpt)
    config = build_config(payload["config"])
    full = config.model.mode == "full"  # every weight is in the checkpoint: no base needed
    options = mode_options_from_config(config.model)
    num_classes = int(payload["num_classes"])
    if is_custom(config.model.name):
        if model is None:
            raise UserError(
                f"{path} was trained on a model given from Python ({config.model.name}); load it "
                "in Python with that architecture: robustft.load(RUN, model=MyNet())"
            )
        built = wrap_model(model, num_classes=num_classes, mode=config.model.mode, options=options)
    else:
        built = build_model(
            config.model.name,
            num_classes=num_classes,
            pretrained=config.model.pretrained and not full,
            weights=None if full else config.model.weights,
            mode=config.model.mode,
            mode_options=options,
        )
    if not full:
        what = "the model given" if is_custom(config.model.name) else "the base model built here"
        check_base(payload, base_fingerprint(built), f"{what} for {ckpt}")
    load_trainable_state_dict(built, payload["model"])
    built.to(pick_device(device)).eval()
    return built, config, payload


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
