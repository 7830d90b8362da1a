"""Backbone sources: one module per source, and the registry :data:`SOURCES` of model names.

- :mod:`~robustft.models.sources.base`: the :class:`_Built` result and shared helpers.
- :mod:`~robustft.models.sources.timm`: ``timm:<name>``.
- :mod:`~robustft.models.sources.torchvision`: ``torchvision:<name>``.
- :mod:`~robustft.models.sources.hf`: ``hf:<repo id or directory>`` (transformers).
- :mod:`~robustft.models.sources.hf_text`: the text encoders of ``hf:`` (and ``minilm``).
- :mod:`~robustft.models.sources.lite`: the offline default ``efficientnet_lite0`` and its
  siblings ``efficientnet_lite1``/``efficientnet_lite2``.
- :mod:`~robustft.models.sources.minilm`: ``minilm``, the offline default text backbone.

A new source is a module with a builder ``fn(arch, spec) -> _Built`` (and, when it can tell
offline which architectures exist, a check ``fn(arch)``), registered below as a prefix
(``SOURCES.register(name, Source(...), argument=...)``). The ``efficientnet_lite<k>`` and
``minilm`` names are registered whole, without a prefix. :func:`model_source` validates a name:
the factory (:func:`robustft.models.factory.build_model_from_spec`) calls it before building, and
:func:`robustft.training.build.check_config` before a run starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from robustft.errors import UserError, did_you_mean
from robustft.models.sources.base import _Built
from robustft.models.sources.hf import _build_hf, hf_tokenizer
from robustft.models.sources.lite import LITE_MODELS, _build_lite
from robustft.models.sources.minilm import MINILM, _build_minilm, minilm_dir
from robustft.models.sources.timm import _build_timm, _check_timm_name
from robustft.models.sources.torchvision import _build_torchvision, _check_torchvision_name
from robustft.models.spec import DEFAULT_MODEL, ModelSpec
from robustft.utils.registry import Registry


def _any_architecture(arch: str) -> None:
    """For sources whose names cannot be checked offline (``hf:``: the Hub's)."""


@dataclass(frozen=True)
class Source:
    """A registry entry: ``build(arch, spec)`` makes the network (``arch`` is the text after
    the prefix; the whole name for a name registered whole) and ``check(arch)`` refuses, offline
    and cheaply (no download, no weights), an architecture the source does not have."""

    build: Callable[[str, ModelSpec], _Built]
    check: Callable[[str], None] = _any_architecture


def _unknown_model(name: str) -> UserError:
    _, colon, rest = name.partition(":")
    base = rest if colon else name  # timn:resnet18 -> timm:resnet18
    prefixed = [f"{source}:{base}" for source in ("timm", "torchvision")] if base else []
    hint = did_you_mean(name, [*LITE_MODELS, MINILM, *prefixed])
    return UserError(
        f"unknown model '{name}'{hint}; use {DEFAULT_MODEL} (or efficientnet_lite1/2), "
        f"timm:<name>, torchvision:<name>, hf:<repo id or directory> (e.g. timm:resnet50) or, "
        f"for text, {MINILM}"
    )


def _lite(name: str, spec: ModelSpec) -> _Built:
    return _build_lite(spec)


SOURCES: Registry[Source] = Registry("model", unknown=_unknown_model)
"""Model names: ``efficientnet_lite<k>`` and ``minilm`` whole, and the prefixes ``timm:``,
``torchvision:``, ``hf:``."""
for _name in LITE_MODELS:
    SOURCES.register(_name, Source(_lite))
SOURCES.register("timm", Source(_build_timm, _check_timm_name), argument="name")
SOURCES.register(
    "torchvision", Source(_build_torchvision, _check_torchvision_name), argument="name"
)
SOURCES.register("hf", Source(_build_hf), argument="repo id or directory")
SOURCES.register(MINILM, Source(_build_minilm))


def model_source(name: str) -> tuple[Source, str]:
    """The source of the model ``name`` and the architecture after its prefix (the whole name
    for a name registered whole), validated offline: the name's form, and the architecture where the
    source can check it (timm's and torchvision's model lists; not the Hugging Face Hub).

    Raises:
        UserError: an unknown model name or architecture, with the closest known one.
    """
    source, arch = SOURCES.resolve(name)
    if arch is None:
        arch = name
    elif not arch.strip():
        raise _unknown_model(name)
    source.check(arch)
    return source, arch


def name_modality(name: str) -> str | None:
    """What a model name takes, known from the name alone: ``text`` (``minilm``), ``image``
    (EfficientNet-Lite, ``timm:``, ``torchvision:``), or None where only the model's own config
    tells (``hf:``, ``custom:``)."""
    name = name.strip()
    if name == MINILM:
        return "text"
    if name.startswith(("hf:", "custom:")):
        return None
    return "image"


def text_tokenizer(name: str) -> Path | None:
    """The ``tokenizer.json`` of the text backbone ``name``: all-MiniLM-L6-v2's (extracted once,
    :func:`~robustft.models.sources.minilm.minilm_dir`) or the one beside an ``hf:`` model (its
    folder, or the Hugging Face cache; None when it has none, an image model). Reads no weights.

    Raises:
        UserError: the MiniLM package is missing, or the Hub cannot be reached for a model that
            is not cached.
    """
    name = name.strip()
    if name == MINILM:
        return minilm_dir() / "tokenizer.json"
    if name.startswith("hf:"):
        return hf_tokenizer(name[len("hf:") :].strip())
    return None
