"""The model wrappers: :class:`Normalized` and :class:`ClassifierModel`.

Every model built here takes images in ``[0, 1]`` of shape ``(B, 3, H, W)`` and returns logits
``(B, num_classes)``; the mean/std normalisation of the pretrained weights lives *inside* the
model (:class:`Normalized`), so attacks work in pixel space.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from robustft.models.spec import ModelInfo, ModelSpec, Triple


class Normalized(nn.Module):
    """Normalise ``[0, 1]`` images with a per-channel mean/std, then run the wrapped network.

    Args:
        backbone: network taking normalised ``(B, 3, H, W)`` input; stored as ``self.net``.
        mean: per-channel mean in pixel units (3 floats); None with ``std`` None: the network
            takes the ``[0, 1]`` images as they are (models given from Python, any channels).
        std: per-channel standard deviation in pixel units (3 positive floats).
    """

    mean: Tensor | None
    std: Tensor | None

    def __init__(
        self, backbone: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None
    ) -> None:
        super().__init__()
        self.net = backbone
        if mean is None or std is None:
            self.register_buffer("mean", None)
            self.register_buffer("std", None)
            return
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean/std must be 3 values with std > 0, got {mean}, {std}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(B, 3, H, W)`` in ``[0, 1]`` to the network's output (logits)."""
        if self.mean is None or self.std is None:
            return self.net(x)
        return self.net((x - self.mean) / self.std)


class ClassifierModel(Normalized):
    """A :class:`Normalized` classifier with a known head, a fine-tuning mode and an identity.

    Build it with :func:`build_model`. Parameters whose names start with one of ``head_prefixes``
    (e.g. ``net.classifier``) form the head; all others are the backbone. When the mode freezes
    the backbone (``linear``), :meth:`train` keeps every non-head submodule in eval mode; the
    submodules named in ``eval_modules`` (``partial``: the frozen blocks) also stay in eval mode.
    Parameters under ``frozen_prefixes`` (a text model's word-embedding table) never train, in
    any mode (:func:`~robustft.models.modes.apply_mode`). ``modality``: ``image`` (inputs
    ``(B, C, H, W)`` in ``[0, 1]``) or ``text`` (packed token embeddings ``(B, L, D + 1)``, see
    :mod:`robustft.models.text`; no normalisation: ``mean``/``std`` None).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        spec: ModelSpec,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        input_size: int,
        head: Sequence[str],
        source: str,
        modality: str = "image",
        frozen: Sequence[str] = (),
    ) -> None:
        super().__init__(net, mean, std)
        self.spec = spec
        self.head_prefixes = tuple(f"net.{h}" for h in head)
        self.frozen_prefixes = tuple(f"net.{f}" for f in frozen)
        self.modality = modality
        self.input_size = int(input_size)
        self.source = source
        self.mode = "full"
        self.options = spec.options
        self.backbone_eval = False
        self.eval_modules: tuple[str, ...] = ()
        mean, std = mean or (0.0, 0.0, 0.0), std or (1.0, 1.0, 1.0)  # None: no normalisation
        self._mean_t: Triple = (float(mean[0]), float(mean[1]), float(mean[2]))
        self._std_t: Triple = (float(std[0]), float(std[1]), float(std[2]))

    def is_head(self, name: str) -> bool:
        """Whether a parameter/module name (relative to this model) belongs to the head."""
        return any(name == p or name.startswith(p + ".") for p in self.head_prefixes)

    def is_frozen(self, name: str) -> bool:
        """Whether a parameter name (relative to this model) is frozen in every mode."""
        return any(name == p or name.startswith(p + ".") for p in self.frozen_prefixes)

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
            self.modality,
        )
