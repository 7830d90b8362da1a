"""Text encoders for the ``hf:`` source (and ``minilm``): a transformers base model (``AutoModel``,
BERT-style) with a new head on its pooled output, as a :class:`~robustft.models.text.
TextClassifier` on packed token embeddings.

- Text or image: :func:`is_text_config` reads the model's config (a ``vocab_size`` and no
  ``num_channels``/``image_size``): the ``hf:`` source builds a text classifier for a text
  config, an image classifier otherwise; the model's info records ``modality``.
- The tokenizer: the fast tokenizer's ``tokenizer.json`` beside the model (a folder) or in its
  Hub repo is required; the data layer tokenises with it.
- Pooling: a sentence-transformers model (``modules.json`` / ``1_Pooling/config.json``) pools
  as it was trained (mean or CLS token); otherwise the encoder's own pooler when it has one
  (BERT's dense + tanh over ``[CLS]``, as ``BertForSequenceClassification``), else the mean over
  attended tokens.
- Frozen in every mode: the word-embedding table (:mod:`robustft.models.text`).

LoRA targets for BERT-style encoders (BERT, RoBERTa, XLM-R, ELECTRA): the attention's query and
value projections and the MLP's ``intermediate.dense`` and ``output.dense``; DistilBERT: ``q_lin``,
``v_lin``, ``ffn.lin1``, ``ffn.lin2`` (:mod:`robustft.models.lora`). ``partial`` trains the last
encoder layers (``encoder.layer.N``), the pooler and the head (:mod:`robustft.models.blocks`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from robustft.errors import UserError, first_line
from robustft.models.sources.base import _Built
from robustft.models.spec import ModelSpec
from robustft.models.text import TextClassifier, tokenizer_ids

_logger = logging.getLogger("robustft.models")

TOKENIZER_FILE = "tokenizer.json"


def is_text_config(config: Any) -> bool:
    """Whether a transformers config describes a text model (a vocabulary, no image input)."""
    vocab = getattr(config, "vocab_size", None)
    image = hasattr(config, "num_channels") or hasattr(config, "image_size")
    return isinstance(vocab, int) and not isinstance(vocab, bool) and not image


def model_file(source: str, name: str, *, local: bool, cache_only: bool) -> Path | None:
    """A file of the model: beside it in a folder, or from its Hub repo (the cache when
    ``cache_only``); None when the model has no such file.

    Raises:
        OSError: the Hub cannot be reached (the caller turns it into one line).
    """
    if local:
        path = Path(source) / name
        return path if path.is_file() else None
    from transformers.utils import cached_file

    found = cached_file(
        source,
        name,
        local_files_only=cache_only,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_gated_repo=False,
    )
    return Path(found) if found else None


def sentence_transformers_pooling(source: str, *, local: bool, cache_only: bool) -> str | None:
    """The pooling of a sentence-transformers model (``mean`` or ``cls``, from its Pooling
    module's config), None for other models. Other pooling modes (max, mean-sqrt-len) are not
    supported: mean, with a warning."""
    path: str | None = "1_Pooling"
    modules = model_file(source, "modules.json", local=local, cache_only=cache_only)
    if modules is not None:
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
            path = next(
                (str(e.get("path")) for e in entries if str(e.get("type", "")).endswith("Pooling")),
                None,
            )
        except (OSError, ValueError, AttributeError, TypeError):
            path = None
    if path is None:
        return None
    config = model_file(source, f"{path}/config.json", local=local, cache_only=cache_only)
    if config is None:
        return None
    try:
        modes = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(modes, dict):
        return None
    if modes.get("pooling_mode_cls_token"):
        return "cls"
    if not modes.get("pooling_mode_mean_tokens"):
        _logger.warning(
            "%s: sentence-transformers pooling %s is not supported; using mean pooling",
            source,
            [k for k, v in modes.items() if k.startswith("pooling_mode") and v] or "none",
        )
    return "mean"


def _dropout(config: Any) -> float:
    """The classifier dropout transformers' sequence classifiers use for this config."""
    for key in ("classifier_dropout", "seq_classif_dropout", "hidden_dropout_prob"):
        value = getattr(config, key, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return 0.0


def build_hf_text(
    label: str,
    source: str,
    *,
    config: Any,
    spec: ModelSpec,
    local: bool,
    cache_only: bool,
    pooling: str | None = None,
    origin: str | None = None,
) -> _Built:
    """A :class:`TextClassifier` of the transformers text model ``source`` (folder or Hub id)
    with a new ``spec.num_classes`` head (random init with ``spec.pretrained`` False).

    Args:
        label: how messages name the model (``hf:<arch>``, ``minilm``).
        config: the model's transformers config (already loaded).
        pooling: ``mean``/``pooler``/``cls``; None: the model's own (module docstring).
        origin: the ``source`` recorded in the model's info; None: ``hf pretrained (...)``.

    Raises:
        UserError: no ``tokenizer.json``, or a model transformers cannot load as a text encoder.
    """
    from robustft.models.sources.hf import _load_error, _quiet, _transformers
    from robustft.models.sources.hub import offline_mode

    transformers = _transformers()
    try:
        with _quiet(), offline_mode(cache_only):
            tokenizer = model_file(source, TOKENIZER_FILE, local=local, cache_only=cache_only)
            if pooling is None:
                pooling = sentence_transformers_pooling(source, local=local, cache_only=cache_only)
            if spec.pretrained:
                encoder = transformers.AutoModel.from_pretrained(
                    source, local_files_only=cache_only
                )
            else:
                encoder = transformers.AutoModel.from_config(config)
    except OSError as err:
        raise _load_error(label.removeprefix("hf:"), local, cache_only, err) from None
    except ValueError as err:  # a config type transformers has no base model for
        raise UserError(
            f"{label}: not a text encoder transformers can load ({first_line(err)})"
        ) from None
    if tokenizer is None:
        where = " in the Hugging Face cache (offline)" if cache_only and not local else ""
        raise UserError(
            f"{label}: no {TOKENIZER_FILE} (fast tokenizer) with the model{where}; save it beside "
            "the weights: AutoTokenizer.from_pretrained(...).save_pretrained(DIR)"
        )
    if pooling is None:
        pooling = "pooler" if getattr(encoder, "pooler", None) is not None else "mean"
    special, pad = tokenizer_ids(tokenizer, pad_id=getattr(config, "pad_token_id", None))
    net = TextClassifier(
        encoder,
        num_classes=spec.num_classes,
        pooling=pooling,
        tokenizer_path=tokenizer,
        special_ids=special,
        pad_id=pad,
        dropout=_dropout(config),
        hub_id=None if local else source,
    )
    table = net.word_embeddings
    frozen = tuple(n for n, m in net.named_modules() if m is table)
    if origin is None:
        name = label.removeprefix("hf:")
        origin = f"hf pretrained ({name})" if spec.pretrained else "random init"
    _logger.debug("%s: text encoder %s, %s pooling", label, type(encoder).__name__, pooling)
    return _Built(net, ("head",), None, None, net.max_length, origin, "text", frozen)
