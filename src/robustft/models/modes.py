"""Fine-tuning modes: the registry :data:`MODES` (:func:`register_mode`, :func:`available_modes`,
:func:`is_mode`) and :func:`apply_mode`, which validates the name.

Fine-tuning modes (:func:`apply_mode`, options in :class:`ModeOptions`). The new head always
trains; no mode cuts gradients with respect to the input, so attacks differentiate through the
whole model in every mode.

- ``full``: every parameter trains; BatchNorm and dropout follow ``train()``/``eval()``.
- ``linear`` (linear probe): only the head trains; the backbone stays in eval mode even inside
  ``model.train()``, so BatchNorm statistics and dropout stay fixed.
- ``lora``: low-rank adapters (``peft.LoraConfig`` + ``peft.inject_adapter_in_model``) on
  ``nn.Linear`` and non-depthwise ``nn.Conv2d`` layers; every base weight and bias is frozen, the
  adapters' A/B matrices and the head train. Frozen BatchNorm layers keep their pretrained
  statistics (they stay in eval mode inside ``model.train()``, as the linear probe's backbone
  does): measured on the offline default (few-shot digits, 15 clean epochs, rank 8, SGD 0.01),
  letting few-shot batches overwrite them left LoRA at 38.1% clean accuracy; keeping them
  gave 88.9%, against 92.5% for full fine-tuning. Targets: :mod:`robustft.models.lora`.
- ``bitfit``: only biases and normalisation weights/biases train, plus the head
  (:mod:`robustft.models.blocks`); BatchNorm layers keep their pretrained running statistics
  (eval mode inside ``model.train()``) while their affine parameters train: measured on the
  same setting, BitFit reached 46.4% clean with statistics updating and 83.6% with them kept.
- ``partial``: the last ``blocks`` blocks train, plus everything after them and the head; the
  frozen earlier part is kept in eval mode (:mod:`robustft.models.blocks`).

Every mode leaves the parameters a model declares frozen (``ClassifierModel.frozen_prefixes``:
a text model's word-embedding table, which defines the embedding threat model's coordinates,
:mod:`robustft.models.text`) frozen.

New modes plug in with :func:`register_mode`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable

from torch import nn

from robustft.errors import UserError, few
from robustft.models.blocks import (
    _bias_and_norm_names,
    _frozen_modules,
    batchnorms,
    frozen_batchnorms,
    partial_parameter_names,
)
from robustft.models.lora import lora_target_modules
from robustft.models.spec import ModeOptions
from robustft.models.wrapper import ClassifierModel
from robustft.utils.registry import Registry

# the package's logger, as before the split into modules (records keep the name robustft.models)
logger = logging.getLogger("robustft.models")


ModeFn = Callable[[ClassifierModel, ModeOptions], None]
MODES: Registry[ModeFn] = Registry("fine-tuning mode")
"""The fine-tuning modes by name (:func:`register_mode` adds one)."""


def register_mode(name: str) -> Callable[[ModeFn], ModeFn]:
    """Register a fine-tuning mode: a function ``fn(model, options)`` that sets
    ``requires_grad`` (and may add modules, set ``model.backbone_eval`` or
    ``model.eval_modules``) on a freshly built, fully trainable model. It must raise before
    changing anything when ``options`` do not fit the model, and never cut input gradients."""
    return MODES.register(name)


def available_modes() -> tuple[str, ...]:
    """Names of the registered fine-tuning modes."""
    return tuple(sorted(MODES))


def is_mode(name: object) -> bool:
    """Whether ``name`` is a registered fine-tuning mode."""
    return MODES.is_known(name)


@register_mode("full")
def _mode_full(model: ClassifierModel, options: ModeOptions) -> None:
    """Train every parameter; BatchNorm and dropout follow ``train()``/``eval()``."""
    for p in model.parameters():
        p.requires_grad_(True)


@register_mode("linear")
def _mode_linear(model: ClassifierModel, options: ModeOptions) -> None:
    """Linear probe: only the head trains; the backbone is frozen and always in eval mode."""
    for name, p in model.named_parameters():
        p.requires_grad_(model.is_head(name))
    model.backbone_eval = True


@register_mode("bitfit")
def _mode_bitfit(model: ClassifierModel, options: ModeOptions) -> None:
    """BitFit: biases and normalisation weights/biases train, plus the head; BatchNorm running
    statistics stay the pretrained ones (:func:`batchnorms`)."""
    chosen = set(_bias_and_norm_names(model))
    for name, p in model.named_parameters():
        p.requires_grad_(model.is_head(name) or name in chosen)
    model.eval_modules = batchnorms(model)


@register_mode("partial")
def _mode_partial(model: ClassifierModel, options: ModeOptions) -> None:
    """The last ``options.blocks`` blocks, everything after them and the head train; the frozen
    part stays in eval mode."""
    chosen = {"net." + n for n in partial_parameter_names(model, blocks=options.blocks)}
    for name, p in model.named_parameters():
        p.requires_grad_(model.is_head(name) or name in chosen)
    model.eval_modules = _frozen_modules(model)


@register_mode("lora")
def _mode_lora(model: ClassifierModel, options: ModeOptions) -> None:
    """LoRA through peft on :func:`lora_target_modules`; adapters and head train; frozen
    BatchNorm layers stay in eval mode (:func:`frozen_batchnorms`)."""
    targets = lora_target_modules(model, options)
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=options.lora_rank,
        lora_alpha=options.lora_alpha,  # type: ignore[arg-type]  # peft annotates int; float works
        lora_dropout=options.lora_dropout,
        target_modules="(?:" + "|".join(re.escape(t) for t in targets) + ")",
        bias="none",
    )
    inject_adapter_in_model(config, model.net)
    injected = tuple(n.removeprefix("net.") for n in _lora_layer_names(model))
    if injected != targets:  # peft matched other modules than the ones resolved here
        raise RuntimeError(f"peft adapted {few(list(injected))}, expected {few(list(targets))}")
    for name, p in model.named_parameters():
        p.requires_grad_(model.is_head(name) or ".lora_A." in name or ".lora_B." in name)
    model.eval_modules = frozen_batchnorms(model)  # keep the pretrained statistics
    logger.info(
        "lora: rank %d, alpha %g on %d layers (%s)",
        options.lora_rank,
        options.lora_alpha,
        len(targets),
        few(list(targets), 3),
    )


def apply_mode(
    model: ClassifierModel, mode: str, *, options: ModeOptions | None = None
) -> ClassifierModel:
    """Put ``model`` into fine-tuning ``mode`` (in place) and return it.

    Args:
        model: a model built by :func:`build_model` (any mode but ``lora``).
        mode: see :func:`available_modes`.
        options: the modes' hyperparameters; ``None`` keeps ``model.options``.

    Raises:
        UserError: unknown mode, options that do not fit the model (no LoRA target, too many
            blocks), or a model that already has LoRA adapters (build a fresh one instead).
    """
    set_mode = MODES.lookup(mode)
    if has_lora(model):
        raise UserError(
            f"this model already has LoRA adapters (mode '{model.mode}'); build a fresh model "
            f"for mode '{mode}' instead of applying a mode twice"
        )
    options = model.options if options is None else options
    if not isinstance(options, ModeOptions):
        raise TypeError(f"options must be a ModeOptions, got {type(options).__name__}")
    saved = model.backbone_eval, model.eval_modules
    model.backbone_eval, model.eval_modules = False, ()
    try:
        set_mode(model, options)
    except Exception:
        model.backbone_eval, model.eval_modules = saved
        raise
    for name, p in model.named_parameters():
        if model.is_frozen(name):  # a text model's word embeddings: the threat model's axes
            p.requires_grad_(False)
    model.mode, model.options = mode, options
    model.train(model.training)
    return model


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` contains peft adapter layers."""
    return bool(_lora_layer_names(model))


def _lora_layer_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the peft adapter layers in ``model`` (none when peft was never imported)."""
    tuners = sys.modules.get("peft.tuners.tuners_utils")
    if tuners is None:
        return ()
    return tuple(n for n, m in model.named_modules() if isinstance(m, tuners.BaseTunerLayer))
