"""The ``timm:<name>`` source.

- ``timm:<name>``: any timm model (``timm:resnet50.a1_in1k``, ``timm:hf-hub:org/repo``).
  Pretrained weights come from the Hugging Face hub (needs network, or the Hugging Face cache:
  with ``HF_HUB_OFFLINE=1`` or a Hub host that DNS cannot resolve only the cache is read, so an
  uncached model fails at once instead of after about 50 s of retries), or from
  ``weights=<file>``.
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
    _head_names,
)
from robustft.models.sources.hub import hub_unreachable, offline_mode
from robustft.models.spec import DEFAULT_MODEL, ModelSpec
from robustft.models.weights import load_backbone_weights, read_state_dict


def _build_timm(arch: str, spec: ModelSpec) -> _Built:
    """Create a timm model with a ``num_classes`` head and the requested weights (``arch``
    checked by :func:`_check_timm_name` in the factory)."""
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
    offline = hub_unreachable()
    try:
        with offline_mode(offline):
            return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes)
    except Exception as exc:
        if offline:
            raise UserError(
                f"cannot get pretrained weights for {label}: offline (no network or "
                f"HF_HUB_OFFLINE=1) and not in the Hugging Face cache ({type(exc).__name__}); pass "
                "model.weights=<local .safetensors/.pth> or model.pretrained=false, run once "
                f"online to cache it, or use the offline default {DEFAULT_MODEL}"
            ) from exc
        raise _download_error(label, exc) from exc


def _check_timm_name(arch: str) -> None:
    """Raise a UserError with a suggestion when timm does not know ``arch`` (offline: timm's
    own model list; ``hf-hub:`` names are the Hub's and pass)."""
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
