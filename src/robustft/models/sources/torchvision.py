"""The ``torchvision:<name>`` source.

- ``torchvision:<name>``: any torchvision classification model (``torchvision:resnet18``);
  pretrained weights are torchvision's ``DEFAULT`` (needs network), or ``weights=<file>``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from robustft.errors import UserError, did_you_mean
from robustft.models.sources.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    _Built,
    _cfg_size,
    _download_error,
)
from robustft.models.spec import ModelSpec
from robustft.models.weights import load_backbone_weights, read_state_dict


def _build_torchvision(arch: str, spec: ModelSpec) -> _Built:
    """Create a torchvision classifier with a new last ``nn.Linear`` and requested weights
    (``arch`` checked by :func:`_check_torchvision_name` in the factory)."""
    from torchvision.models import get_model

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


def _check_torchvision_name(arch: str) -> None:
    """Raise a UserError with a suggestion when torchvision has no classifier ``arch``
    (offline: torchvision's own model list)."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        raise UserError(
            f"unknown torchvision model '{arch}'{did_you_mean(arch, names)}; "
            "see torchvision.models.list_models(module=torchvision.models)"
        )


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
