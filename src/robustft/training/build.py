"""Config to objects: everything a run is made of, built from a validated :class:`RunConfig`.

The commands (``train``, ``eval``, ``export``, ``sweep``, ``demo``) and the Python API build
their data, model, optimizer, attacks, schedule and evaluation grid here; the training loop
(:mod:`robustft.training`) receives the objects and never reads a config to make one. Values were
validated once, when the config was built (:mod:`robustft.config`); what only the library can
check (the names its registries resolve: model, mode, dataset, attacks; the schedule text, the
eval grid, the installed extras) is checked by :func:`check_config` before anything runs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import nn

from robustft import attacks
from robustft.config import CUSTOM_PREFIX, EvalConfig, RunConfig
from robustft.data.factory import build_datasets_from_spec, check_dataset_name
from robustft.data.spec import DataSpec, DataSplits
from robustft.data.text import TextSplit
from robustft.errors import UserError
from robustft.models import (
    MODES,
    ClassifierModel,
    build_model,
    check_model_name,
    mode_options_from_config,
    name_modality,
    param_groups,
    text_tokenizer,
)
from robustft.monitor import OverfitRule
from robustft.schedules import EpsSchedule, parse_schedule
from robustft.units import default_eps_step, eps_grid
from robustft.utils.seeding import derive_seed

_logger = logging.getLogger(__name__)


def build_data(config: RunConfig) -> DataSplits:
    """The train/val/test splits the config describes (deterministic given train.seed); text
    tokenised with the backbone's own tokenizer (:func:`robustft.models.text_tokenizer`), as
    token ids: :func:`embed_text` packs them for a built model.

    Raises:
        UserError: the run was trained on datasets given from Python (``custom:...``).
    """
    if config.data.name.startswith(CUSTOM_PREFIX):
        raise UserError(
            f"this run was trained on datasets given from Python ({config.data.name}); evaluate "
            "it in Python (robustft.evaluate) or on named data (robustft eval RUN --data NAME)"
        )
    spec = DataSpec(**asdict(config.data), seed=config.train.seed)
    if spec.modality != "text":
        return build_datasets_from_spec(spec)
    return build_datasets_from_spec(spec, tokenizer=text_tokenizer(config.model.name))


def check_modalities(config: RunConfig, model_modality: str | None = None) -> None:
    """Refuse a text dataset with an image backbone and the reverse: from the model name alone
    (before anything is built), or from a built model's ``modality`` (``hf:`` names).

    Raises:
        UserError: one line naming both keys and the fix.
    """
    data = config.data.modality
    model = model_modality or name_modality(config.model.name)
    if model is None or model == data:
        return
    fix = (
        "use model.name: minilm or hf:<text model>"
        if data == "text"
        else "use an image backbone (efficientnet_lite0, timm:..., torchvision:..., hf:<image "
        "model>) or a text dataset (drugreview, text:<path>)"
    )
    raise UserError(
        f"config model.name: {config.model.name} is a {model} backbone but data.name "
        f"{config.data.name} is {data} data; {fix}"
    )


def embed_text(data: DataSplits, model: ClassifierModel) -> DataSplits:
    """Text splits of token ids, packed for ``model`` by its
    :class:`~robustft.models.TokenEmbedder` (each example ``(L, D + 1)``, see
    :mod:`robustft.models.text`); image splits unchanged.

    Raises:
        UserError: the model does not take the data's modality.
    """
    if data.modality != "text" and model.modality != "text":
        return data
    if data.modality != model.modality:
        raise UserError(
            f"the model takes {model.modality} inputs but the data is {data.modality}; "
            "use a text backbone (minilm, hf:<text model>) for text data and an image one for "
            "images"
        )
    embedder = model.net.embedder()  # type: ignore[operator]

    def pack(split: Any) -> Any:
        return split.mapped(embedder) if isinstance(split, TextSplit) else split

    return replace(data, train=pack(data.train), val=pack(data.val), test=pack(data.test))


def attack_space(config: RunConfig) -> str:
    """The input space the run's attacks work in: ``embedding`` for text data, else
    ``pixel``."""
    return "embedding" if config.data.modality == "text" else "pixel"


def eval_grid(config: RunConfig) -> list[float]:
    """The final evaluation's eps grid: 0, eps_step, ..., eps_max (default eps_g; 8/255 for l-inf
    or 0.5 for l2 when eps_g is 0, as for standard fine-tuning). Text (l2-token) with the default
    eps_step uses eighths of eps_max (:func:`~robustft.units.default_eps_step`)."""
    ecfg = config.eval
    eps_max = ecfg.eps_max if ecfg.eps_max is not None else config.attack.eps
    if eps_max == 0:
        eps_max = 8 / 255 if config.attack.norm == "linf" else 0.5
    step = ecfg.eps_step
    if config.attack.norm == "l2-token" and step == EvalConfig.eps_step:
        # the default step is the pixel quantum, meaningless for token embeddings: eighths
        step = default_eps_step(config.attack.norm, eps_max)
    return eps_grid(eps_max, step)


def check_config(config: RunConfig) -> None:
    """Fail fast, before anything is written, planned or started, on every name the library
    resolves and every value only it can check: ``model.name`` (its source, and the
    architecture where timm's or torchvision's own lists tell it offline; an ``hf:`` name only
    by its form), ``model.mode``, ``data.name`` (its form: no data is read), the schedule text
    (``attack.schedule``, bound to ``train.epochs``), ``attack.name`` with its norm and
    hyperparameters, ``eval.attack`` for that norm, the eval grid, and that the tracking
    backends (``log.backends``) and AutoAttack (``eval.autoattack``) are installed. Nothing is
    downloaded and no weights are read. The values a config checks itself (``attack.norm``,
    ``data.augment``, ...) were checked when it was built.

    ``robustft train`` and :func:`robustft.fit` (through :func:`~robustft.training.fit.fit`),
    ``robustft sweep`` (every run, ``--dry-run`` too) and ``robustft tune`` (the base and every
    search bound, before Ray starts) call it.

    Raises:
        UserError: one line, ``config KEY: ...``, naming the value and the valid choices.
    """
    from robustft.tracking import check_backends

    with _key("model.name"):
        check_model_name(config.model.name)
    with _key("model.mode"):
        MODES.check(config.model.mode)
    with _key("data.name"):
        check_dataset_name(config.data.name)
    check_modalities(config)
    check_backends(config.log.backends)  # its message names log.backends
    with _key("attack.norm"):
        attacks.get_geometry(config.attack.norm, attack_space(config))
        if config.data.modality == "text" and config.attack.norm != "l2-token":
            raise UserError(
                f"text runs perturb token embeddings in the l2-token threat model (an l2 ball "
                f"per token); {config.attack.norm} is not available for text yet: set "
                "attack.norm: l2-token"
            )
    if config.data.modality == "text" and config.eval.autoattack is not None:
        raise UserError(
            "config eval.autoattack: AutoAttack attacks images; text runs are evaluated with "
            "the embedding-space attacks (eval.attack: apgd-ce or pgd); set eval.autoattack: null"
        )
    with _key("attack.schedule"):
        build_schedule(config)
    with _key("attack.name"):
        build_train_attack(config)
    if config.monitor.action == "switch":
        with _key("monitor.switch_attack"):
            build_switch_attack(config)
    eval_grid(config)
    with _key("eval.attack"):
        build_eval_attack(config)
    if config.eval.autoattack is not None:
        from robustft.robustness.autoattack import reference

        with _key("eval.autoattack"):
            reference()


@contextlib.contextmanager
def _key(key: str) -> Iterator[None]:
    """Name the config key a check was about in its error: ``config KEY: message``."""
    try:
        yield
    except UserError as err:
        raise UserError(f"config {key}: {err}") from None


ONE_STEP_ATTACKS = ("fgsm", "fgsm-rs", "n-fgsm", "grad-align")


def build_attack(
    name: str, *, norm: str, steps: int, space: str = "pixel", **hyper: Any
) -> attacks.Attack:
    """``attacks.create`` with a step count that attacks without steps ignore (FGSM, FGSM-RS
    take one step; Square counts queries), in the input ``space`` (``pixel`` or, for text,
    ``embedding``: :func:`attack_space`)."""
    spec = attacks.ATTACKS.get(name)
    if spec is not None and spec.takes_steps:
        hyper["steps"] = steps
    if space != "pixel":
        hyper["space"] = space
    return attacks.create(name, norm=norm, **hyper)


def build_evaluation_attack(
    name: str, *, norm: str, steps: int, space: str = "pixel"
) -> attacks.Attack:
    """:func:`build_attack` for an evaluation: a training-only attack (``n-fgsm``, whose
    examples may leave the eps-ball, and ``grad-align``) is refused.

    Raises:
        UserError: an unknown or training-only name, or a bad norm or step count.
    """
    check_evaluation_attack(name)
    return build_attack(name, norm=norm, steps=steps, space=space)


def check_evaluation_attack(name: str, label: str = "attack") -> None:
    """Refuse a training-only attack's name for an evaluation, the message naming it as
    ``label`` (``--attack`` on the command line); an unknown name as the registry refuses it."""
    if attacks.ATTACKS.lookup(name).cls.training_only:
        valid = [n for n, s in attacks.ATTACKS.items() if not s.cls.training_only]
        raise UserError(
            f"{label} '{name}' is for training only, not an evaluation attack; valid: "
            f"{', '.join(valid)}"
        )


def build_train_attack(config: RunConfig) -> attacks.Attack:
    """The attack that crafts training examples (``attack`` section)."""
    a = config.attack
    hyper: dict[str, Any] = {"eval_mode": a.eval_mode}
    for key in ("rel_step", "noise_factor", "grad_align_lambda"):
        if getattr(a, key) is not None:
            hyper[key] = getattr(a, key)
    return build_attack(a.name, norm=a.norm, steps=a.steps, space=attack_space(config), **hyper)


def build_switch_attack(config: RunConfig) -> attacks.Attack:
    """The multi-step attack ``monitor.action: switch`` trains with after catastrophic
    overfitting (``monitor.switch_attack`` with ``monitor.switch_steps``, the run's norm and
    ``attack.eval_mode``; its step size the attack's default, as a run training with it)."""
    name, steps = config.monitor.switch_to
    return build_attack(
        name,
        norm=config.attack.norm,
        steps=steps,
        space=attack_space(config),
        eval_mode=config.attack.eval_mode,
    )


def attack_label(name: str, steps: int) -> str:
    """``pgd-7``, ``apgd-ce-10``; a name alone for an attack without a step count (``fgsm-rs``)."""
    spec = attacks.ATTACKS.get(name)
    return f"{name}-{steps}" if spec is not None and spec.takes_steps else name


FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused SGD and AdamW kernels are used


def build_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over ``model``'s trainable parameter groups (head lr, no weight
    decay on biases and norms); each group remembers its peak lr as ``initial_lr``.

    The step is torch's fused kernel (one pass over each parameter) where every trainable
    parameter is a float tensor on a CPU or CUDA device: on the offline default (3.4 M
    parameters, one CPU thread) AdamW's step takes 3.8 ms instead of 13.4 ms and SGD's 2.4 ms
    instead of 6.0 ms. The kernel rounds differently from torch's per-tensor loop (AdamW's
    weights differ by about 1e-7 after 40 steps of the same gradients, SGD's by about 1e-9
    after 5), so a run repeats bit for bit only with the kernel it started with: it is recorded
    in the checkpoint (the optimizer's ``fused`` setting), and a resumed run keeps the one its
    checkpoint records (the loop, for a checkpoint written before fused was the default)."""
    cfg = config.train
    groups = param_groups(model, lr=cfg.lr, weight_decay=cfg.weight_decay, head_lr=cfg.head_lr)
    for group in groups:
        group["initial_lr"] = group["lr"]
    trainable = [p for group in groups for p in group["params"]]
    fused = bool(trainable) and all(
        p.is_floating_point() and p.device.type in FUSED_DEVICES for p in trainable
    )
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, fused=fused or None
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), fused=fused or None)


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
    return build_evaluation_attack(
        config.eval.attack,
        norm=config.attack.norm,
        steps=config.eval.steps,
        space=attack_space(config),
    )
