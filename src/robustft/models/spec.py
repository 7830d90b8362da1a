"""What to build and what was built: :class:`ModeOptions`, :class:`ModelSpec`, :class:`ModelInfo`.

:class:`ModelSpec` is the user's request (name, classes, weights, fine-tuning mode and its
:class:`ModeOptions`); :class:`ModelInfo` is the identity of a built model, stored with
checkpoints. ``ModelSpec.mode`` is checked where a model is built (the factory,
:func:`robustft.models.factory.build_model_from_spec`), against the registry of
:mod:`robustft.models.modes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from robustft.errors import UserError

DEFAULT_MODEL = "efficientnet_lite0"

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class ModeOptions:
    """Hyperparameters of the fine-tuning modes (each mode reads only its own), as
    :class:`robustft.config.ModelConfig` validated them (:func:`mode_options_from_config`).

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
        # values were validated with the config (robustft.config.ModelConfig); only the forms
        # are normalised here: numbers to float, a comma-separated target string to a tuple
        object.__setattr__(self, "lora_alpha", float(self.lora_alpha))
        object.__setattr__(self, "lora_dropout", float(self.lora_dropout))
        targets = self.lora_targets
        if isinstance(targets, str):
            targets = tuple(t.strip() for t in targets.split(","))
        object.__setattr__(self, "lora_targets", None if targets is None else tuple(targets))

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
        name: ``efficientnet_lite0``, ``timm:<name>``, ``torchvision:<name>``,
            ``hf:<repo id or directory>`` or ``minilm`` (text).
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
        if not isinstance(self.options, ModeOptions):
            raise TypeError(f"options must be a ModeOptions, got {type(self.options).__name__}")


@dataclass(frozen=True)
class ModelInfo:
    """The identity of a built model, stored with checkpoints (see :meth:`to_dict`).

    Attributes:
        name, num_classes, pretrained, weights: as requested (:class:`ModelSpec`).
        mode: the current fine-tuning mode.
        mean, std: per-channel input normalisation applied inside the model (pixel units);
            ``(0, 0, 0)``/``(1, 1, 1)`` for none (text models, networks given from Python).
        input_size: images: suggested square input side in pixels (the pretraining
            resolution); text: the longest input the encoder takes, in tokens.
        source: where the backbone weights came from (human-readable).
        head: qualified names of the head module(s) inside the model.
        options: the mode options the model was built with (:class:`ModeOptions`).
        modality: ``image`` or ``text`` (packed token embeddings, :mod:`robustft.models.text`).
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
    modality: str = "image"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of all fields (``options`` as a nested dict)."""
        out = asdict(self)
        out["mean"], out["std"], out["head"] = list(self.mean), list(self.std), list(self.head)
        out["options"] = self.options.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelInfo:
        """Inverse of :meth:`to_dict` (a checkpoint's ``model_info``); ``modality`` defaults to
        ``image`` for checkpoints written before text models existed."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
        values["head"] = tuple(values["head"])
        values["options"] = ModeOptions.from_dict(values.get("options") or {})
        return cls(**values)

    def to_spec(self, *, pretrained: bool = False) -> ModelSpec:
        """Return the spec that rebuilds this architecture (random init by default, for loading a
        checkpoint's state dict into it)."""
        weights = self.weights if pretrained else None
        return ModelSpec(self.name, self.num_classes, pretrained, weights, self.mode, self.options)
