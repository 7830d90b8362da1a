"""Models given from Python: any ``nn.Module`` mapping ``[0, 1]`` images to logits.

:func:`wrap_model` puts a user's network inside a :class:`ClassifierModel` (no normalisation:
the network sees the ``[0, 1]`` images as they are; put :class:`Normalize` in front of it if it
expects normalised input) so that the fine-tuning modes, trainable-only checkpoints and export
apply to it as to the built-in backbones. The network itself is never changed silently: no head
is replaced (its number of outputs must match the task), and a mode that cannot apply to it
fails with one line saying why.

The head (for ``linear`` mode, ``train.head_lr`` and LoRA/BitFit, which always train it) is,
in this order: ``net.get_classifier()`` (timm's convention), else the last ``nn.Linear`` with
``num_classes`` outputs. LoRA targets are ``model.lora_targets`` when the network defines it
(module names or patterns), else the config's ``model.lora_targets``, else every ``nn.Linear``
and non-depthwise ``nn.Conv2d`` outside the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from itertools import chain

import torch
from torch import Tensor, nn

from robustft.config import CUSTOM_PREFIX, check_lora_targets
from robustft.errors import UserError
from robustft.models.modes import MODES, apply_mode
from robustft.models.spec import ModelSpec, ModeOptions
from robustft.models.state import tensors_fingerprint
from robustft.models.wrapper import ClassifierModel

SOURCE = "given from Python"


class Normalize(nn.Module):
    """A layer normalising ``[0, 1]`` images per channel, for networks trained on normalised
    input: ``nn.Sequential(robustft.Normalize(mean, std), net)`` keeps attacks and eps in pixel
    units.

    Args:
        mean, std: per-channel values in pixel units, e.g. ImageNet's (0.485, 0.456, 0.406) and
            (0.229, 0.224, 0.225).
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not len(mean) or min(std) <= 0:
            raise UserError(
                f"Normalize: mean and std need one value per channel, std > 0; "
                f"got {list(mean)}, {list(std)}"
            )
        shape = (1, len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(shape))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def check_network(net: object) -> nn.Module:
    """``net`` if it is an ``nn.Module`` whose parameters and buffers hold values.

    Raises:
        UserError: not a module, or a tensor of it on the meta device (one line, the fix).
    """
    if not isinstance(net, nn.Module):
        raise UserError(f"model: expected a torch nn.Module, got {type(net).__name__}")
    for name, tensor in chain(net.named_parameters(), net.named_buffers()):
        if tensor.is_meta:
            raise UserError(
                f"model: {name} is on the meta device (the model was built without its "
                "weights, e.g. under torch.device('meta') or init_empty_weights); materialise "
                "it first, e.g. model.to_empty(device='cpu') and then load its weights"
            )
    return net


def model_fingerprints(net: nn.Module) -> tuple[str, str]:
    """(architecture, starting weights) of ``net``: the first 16 hex digits of
    :func:`~robustft.models.state.tensors_fingerprint` over its state dict (parameters and
    persistent buffers) without and with the values. Hashing reads every weight once."""
    state = list(net.state_dict().items())
    return tensors_fingerprint(state, values=False)[:16], tensors_fingerprint(state)[:16]


def custom_name(net: nn.Module) -> str:
    """The ``model.name`` a run of a given network records: ``custom:<class name>``."""
    return CUSTOM_PREFIX + type(net).__name__


def is_custom(name: str) -> bool:
    return name.startswith(CUSTOM_PREFIX)


def find_head(net: nn.Module, num_classes: int) -> tuple[str, ...]:
    """Qualified names (inside ``net``) of its classification head, or () when none is found."""
    get = getattr(net, "get_classifier", None)
    if callable(get):
        head = get()
        names = tuple(n for n, m in net.named_modules() if m is head and n)
        if names:
            return names[:1]
    linears = [
        n
        for n, m in net.named_modules()
        if isinstance(m, nn.Linear) and m.out_features == num_classes and n
    ]
    return (linears[-1],) if linears else ()


def wrap_model(
    net: nn.Module,
    *,
    num_classes: int,
    mode: str = "full",
    options: ModeOptions | None = None,
    input_size: int = 224,
) -> ClassifierModel:
    """``net`` inside a :class:`ClassifierModel` in fine-tuning ``mode`` (in place: LoRA adds
    its adapters to ``net``, the other modes only set ``requires_grad``).

    Raises:
        UserError: an unknown ``mode``, a mode that needs a head the network does not have, or
            options that do not fit the network (no LoRA-capable layer, too many blocks).
    """
    check_network(net)
    MODES.check(mode)
    options = options or ModeOptions()
    own_targets = getattr(net, "lora_targets", None)
    if own_targets is not None and options.lora_targets is None:
        text = own_targets if isinstance(own_targets, str) else ",".join(map(str, own_targets))
        key = f"{type(net).__name__}.lora_targets"
        options = replace(options, lora_targets=check_lora_targets(text, key))
    head = find_head(net, num_classes)
    if not head and mode == "linear":
        raise UserError(
            f"model.mode=linear needs the classification head of {type(net).__name__}: none "
            f"found (no get_classifier(), no nn.Linear with {num_classes} outputs); use "
            "mode full, bitfit or lora, or give the network a get_classifier() method"
        )
    spec = ModelSpec(custom_name(net), num_classes, False, None, mode, options)
    model = ClassifierModel(
        net, spec=spec, mean=None, std=None, input_size=input_size, head=head, source=SOURCE
    )
    apply_mode(model, mode, options=options)
    return model
