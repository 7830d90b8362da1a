"""Backbone sources: one module per source, and the registry of ``<source>:<name>`` prefixes.

- :mod:`~robustft.models.sources.base`: the :class:`_Built` result and shared helpers.
- :mod:`~robustft.models.sources.timm`: ``timm:<name>``.
- :mod:`~robustft.models.sources.torchvision`: ``torchvision:<name>``.
- :mod:`~robustft.models.sources.hf`: ``hf:<repo id or directory>`` (transformers).
- :mod:`~robustft.models.sources.lite`: the offline default ``efficientnet_lite0`` and its
  siblings ``efficientnet_lite1``/``efficientnet_lite2``.

A new source is a module with a builder ``fn(arch, spec) -> _Built`` and one entry in
:data:`_SOURCES` below (prefix -> builder). The ``efficientnet_lite<k>`` names have no prefix: the
factory matches their full names.
"""

from __future__ import annotations

from collections.abc import Callable

from robustft.models.sources.base import _Built
from robustft.models.sources.hf import _build_hf
from robustft.models.sources.timm import _build_timm
from robustft.models.sources.torchvision import _build_torchvision
from robustft.models.spec import ModelSpec

_SOURCES: dict[str, Callable[[str, ModelSpec], _Built]] = {
    "timm": _build_timm,
    "torchvision": _build_torchvision,
    "hf": _build_hf,
}
