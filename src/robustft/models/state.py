"""Trainable-only state, fingerprints, export and parameter groups.

For checkpoints, :func:`trainable_state_dict`, :func:`load_trainable_state_dict` and
:func:`base_fingerprint` save and restore only what trains; :func:`export_state_dict` gives a
plain state dict of the network with LoRA merged in. :func:`param_groups` builds the optimiser's
parameter groups.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from robustft.errors import UserError, few
from robustft.models.modes import _lora_layer_names, has_lora
from robustft.models.wrapper import ClassifierModel


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
            f"{len(missing)} missing ({few(missing, 2)})" if missing else "",
            f"{len(unexpected)} unexpected ({few(unexpected, 2)})" if unexpected else "",
            f"{len(shapes)} of other shape ({few(shapes, 2)})" if shapes else "",
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
    frozen = [
        (n, p) for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad
    ]
    return tensors_fingerprint(frozen)


def tensors_fingerprint(named: Iterable[tuple[str, Tensor]], *, values: bool = True) -> str:
    """SHA-256 (hex) over the names, dtypes and shapes of the tensors in name order and, with
    ``values``, their bytes (:func:`update_digest`)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        update_digest(digest, name, tensor, values=values)
    return digest.hexdigest()


def update_digest(digest: Any, name: str, tensor: Tensor, *, values: bool = True) -> None:
    """Feed ``name|dtype|shape`` and, with ``values``, the tensor's bytes (a CPU copy) to a
    ``hashlib`` digest."""
    t = tensor.detach()
    digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
    if values:
        digest.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)


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
