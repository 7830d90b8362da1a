"""BitFit and partial: which parameters the ``bitfit`` and ``partial`` modes train.

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
"""

from __future__ import annotations

import re

from torch import nn

from robustft.errors import UserError
from robustft.models.wrapper import ClassifierModel

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


def frozen_batchnorms(model: nn.Module) -> tuple[str, ...]:
    """Names of the BatchNorm layers whose affine parameters are all frozen (or absent): in train
    mode they would still replace their running statistics with those of the training batches,
    silently changing a part of the network the mode means to keep."""
    return tuple(
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        and not any(p.requires_grad for p in module.parameters(recurse=False))
    )


def batchnorms(model: nn.Module) -> tuple[str, ...]:
    """Names of every BatchNorm layer: BitFit trains their affine parameters but keeps their
    running statistics (eval mode inside ``train()``), see :mod:`robustft.models.modes`."""
    return tuple(
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    )


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
