"""Text classifiers on packed token embeddings: :class:`TextClassifier` and :class:`TokenEmbedder`.

Text flows through the same tensor stack as images, as a float tensor. A :class:`TokenEmbedder`
(a frozen copy of the backbone's word-embedding table) maps token ids ``(B, L)`` to a PACKED
tensor ``x`` of shape ``(B, L, D + 1)``:

- ``x[..., :D]``: the token's word embedding divided by ``unit_scale`` (the mean l2 norm of a
  row of the table over the ordinary vocabulary, see :func:`mean_row_norm`);
- ``x[..., D]``: the token's kind: ``0.0`` padding, ``1.0`` special token (``[CLS]``,
  ``[SEP]``, ``[MASK]``...: attended, never perturbed), ``2.0`` ordinary token (perturbable;
  ``[UNK]`` counts as ordinary: it stands for a word of the text).

An attack perturbs ``x[..., :D]`` of the ordinary rows: the perturbation is added to the WORD
embeddings, before the encoder adds position and token-type embeddings and applies its
embedding LayerNorm (as FreeLB does). In packed coordinates one unit is ``unit_scale``, so an
l2 eps per token means "a fraction of the mean token-embedding norm", the same across models;
for l-inf the unit is the RMS coordinate of a token embedding, ``unit_scale / sqrt(D)``:
:meth:`TokenEmbedder.eps_scale` converts an eps in a threat model's unit to packed coordinates.

:class:`TextClassifier` maps a packed batch to logits: ``inputs_embeds = x[..., :D] *
unit_scale``, ``attention_mask = x[..., D] > 0``, the batch trimmed to its longest attended
length before the encoder (dynamic padding at compute: storage keeps the fixed
``data.max_length``), pooling, dropout and a new ``Linear(hidden, K)`` head. Pooling:

- ``mean``: the mean of the last hidden states over the attended tokens (special tokens
  included), as sentence-transformers computes its sentence embeddings; MiniLM's default (its
  ``1_Pooling/config.json`` says ``pooling_mode_mean_tokens``).
- ``pooler``: the encoder's own pooler (BERT: dense + tanh over the ``[CLS]`` state, as
  ``BertForSequenceClassification`` uses it); the default of an ``hf:`` model that has one.
- ``cls``: the last hidden state of the first token.

The word-embedding table is frozen in every fine-tuning mode (``requires_grad`` False): it
defines the threat model's coordinates (the packed inputs, their unit and the eps), so training
it would move the inputs under the attack. ``unit_scale`` is a buffer: it travels with state
dicts and checkpoints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustft.errors import UserError, first_line
from robustft.utils.packed import ORDINARY, PADDING, SPECIAL

POOLINGS = ("mean", "pooler", "cls")
"""The pooling choices of :class:`TextClassifier` (see the module docstring)."""


GEOMETRIES = ("l2-token", "linf")
"""Threat models whose eps unit :meth:`TokenEmbedder.unit_scales` gives."""


def mean_row_norm(table: Tensor, exclude: Iterable[int]) -> float:
    """Mean l2 norm of the rows of an embedding ``table`` ``(V, D)`` without the rows
    ``exclude`` (the special and padding tokens): the packed unit of :class:`TokenEmbedder`."""
    norms = table.detach().float().norm(dim=1)
    keep = torch.ones(norms.shape[0], dtype=torch.bool, device=norms.device)
    drop = [i for i in exclude if 0 <= i < norms.shape[0]]
    if drop:
        keep[torch.tensor(drop, device=norms.device)] = False
    return float(norms[keep].double().mean())


def tokenizer_ids(path: str | Path, *, pad_id: int | None = None) -> tuple[tuple[int, ...], int]:
    """The special token ids (without ``[UNK]``, which stands for a word) and the padding id of
    a fast tokenizer's ``tokenizer.json``.

    The padding id: the file's ``padding.pad_id``, else ``pad_id`` (the model config's
    ``pad_token_id``), else a special token named like ``[PAD]``/``<pad>``.

    Raises:
        UserError: an unreadable file, or no padding id found.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        added = list(data.get("added_tokens") or [])
        unk = (data.get("model") or {}).get("unk_token")
    except (OSError, ValueError, AttributeError) as err:
        raise UserError(
            f"{path}: not a readable tokenizer.json ({first_line(err)}); save the model's fast "
            "tokenizer with it (AutoTokenizer.from_pretrained(...).save_pretrained(DIR))"
        ) from None
    special = {
        int(t["id"]): str(t.get("content", ""))
        for t in added
        if isinstance(t, Mapping) and t.get("special") and t.get("content") != unk
    }
    padding = data.get("padding")
    found = padding.get("pad_id") if isinstance(padding, Mapping) else None
    if found is None:
        found = pad_id
    if found is None:
        named = [i for i, text in special.items() if text.strip("[]<>").lower() == "pad"]
        found = named[0] if named else None
    if found is None:
        raise UserError(
            f"{path}: cannot tell the padding token (no padding.pad_id, no pad_token_id in the "
            "model config, no [PAD]/<pad> special token); set pad_token_id in its config.json"
        )
    return tuple(sorted(special)), int(found)


class TokenEmbedder:
    """Token ids -> packed float inputs ``(..., L, D + 1)`` (see the module docstring).

    A frozen copy of a word-embedding table; it does not follow later changes to the model's
    table (which no mode trains). Plain tensors, picklable (DataLoader workers).

    Args:
        table: the word-embedding table ``(V, D)`` (copied, detached, float32).
        unit_scale: the packed unit (:func:`mean_row_norm` of ``table``).
        special_ids: ids of the special tokens (kind 1).
        pad_id: the padding id (kind 0).
    """

    def __init__(
        self, table: Tensor, *, unit_scale: float, special_ids: Iterable[int], pad_id: int
    ) -> None:
        self.unit_scale = float(unit_scale)
        if not math.isfinite(self.unit_scale) or self.unit_scale <= 0:
            raise ValueError(f"unit_scale must be a finite number > 0, got {unit_scale}")
        self.special_ids = tuple(sorted({int(i) for i in special_ids} - {int(pad_id)}))
        self.pad_id = int(pad_id)
        self.scaled = table.detach().to(torch.float32).clone() / self.unit_scale
        kinds = torch.full((self.scaled.shape[0],), ORDINARY, dtype=torch.float32)
        kinds[list(self.special_ids)] = SPECIAL
        kinds[self.pad_id] = PADDING
        self.kinds = kinds.to(self.scaled.device)

    @property
    def vocab_size(self) -> int:
        return int(self.scaled.shape[0])

    @property
    def dim(self) -> int:
        """``D``: the width of a word embedding (a packed input has ``D + 1`` channels)."""
        return int(self.scaled.shape[1])

    def unit_scales(self) -> dict[str, float]:
        """Each threat model's eps unit in embedding coordinates: ``l2-token`` the mean token
        norm (``unit_scale``), ``linf`` the RMS coordinate of a token (``unit_scale /
        sqrt(D)``)."""
        return {"l2-token": self.unit_scale, "linf": self.unit_scale / math.sqrt(self.dim)}

    def eps_scale(self, geometry: str) -> float:
        """Packed coordinates per unit of eps for ``geometry`` (``l2-token``: 1; ``linf``:
        ``1 / sqrt(D)``): multiply a user's eps by it to get the radius in packed coordinates."""
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
        return self.unit_scales()[geometry] / self.unit_scale

    def to(self, device: torch.device | str) -> TokenEmbedder:
        """This embedder with its tensors on ``device`` (self when already there)."""
        device = torch.device(device)
        if self.scaled.device == device:
            return self
        moved = object.__new__(TokenEmbedder)
        moved.__dict__.update(self.__dict__)
        moved.scaled, moved.kinds = self.scaled.to(device), self.kinds.to(device)
        return moved

    def __call__(self, ids: Tensor) -> Tensor:
        """Pack token ids ``(L,)`` or ``(B, L)`` (integers) into ``(L, D + 1)`` or
        ``(B, L, D + 1)`` float32 on the embedder's device."""
        ids = torch.as_tensor(ids)
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"token ids must be integers, got {ids.dtype}")
        ids = ids.to(device=self.scaled.device, dtype=torch.long)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}), got "
                f"{int(ids.min())}..{int(ids.max())}: a tokenizer of another model?"
            )
        return torch.cat((self.scaled[ids], self.kinds[ids].unsqueeze(-1)), dim=-1)


def attended_length(mask: Tensor) -> int:
    """One past the last attended position of any row of ``mask`` ``(B, L)`` (at least 1)."""
    columns = torch.nonzero(mask.any(dim=0))
    return int(columns[-1, 0]) + 1 if columns.numel() else 1


class TextClassifier(nn.Module):
    """A transformers text encoder with a new head on its pooled output, on packed inputs.

    ``forward(x (B, L, D + 1)) -> logits (B, K)`` (see the module docstring). Parameter names:
    the encoder's own under ``encoder.``, the head ``head``. Build it with
    :func:`robustft.models.build_model` (``minilm``, ``hf:<text model>``); it is the ``net`` of
    the :class:`~robustft.models.wrapper.ClassifierModel` returned, which applies no
    normalisation to it.

    Args:
        encoder: a transformers base model (``AutoModel``: ``BertModel``...) taking
            ``inputs_embeds`` and ``attention_mask``.
        num_classes: classes of the task (the head's outputs).
        pooling: ``mean``, ``pooler`` or ``cls`` (:data:`POOLINGS`); ``mean`` and ``cls``
            drop the encoder's pooler (unused weights would train for nothing).
        tokenizer_path: the ``tokenizer.json`` whose ids the model takes.
        special_ids, pad_id: the tokenizer's special and padding ids (:func:`tokenizer_ids`).
        dropout: dropout probability before the head (the config's ``classifier_dropout`` or
            ``hidden_dropout_prob``, as transformers' sequence classifiers do).
        hub_id: the Hub repo the encoder came from (None for a local folder or package).
    """

    unit_scale: Tensor

    def __init__(
        self,
        encoder: nn.Module,
        *,
        num_classes: int,
        pooling: str,
        tokenizer_path: str | Path,
        special_ids: Iterable[int],
        pad_id: int,
        dropout: float = 0.0,
        hub_id: str | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if pooling == "pooler" and getattr(encoder, "pooler", None) is None:
            raise ValueError(f"{type(encoder).__name__} has no pooler; use mean or cls pooling")
        if pooling != "pooler" and getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # type: ignore[assignment]  # BERT-style: None skips it
        self.encoder = encoder
        self.pooling = pooling
        self.tokenizer_path = str(tokenizer_path)
        self.pad_id = int(pad_id)
        self.special_ids = tuple(sorted({int(i) for i in special_ids} - {self.pad_id}))
        self.hub_id = hub_id
        config: Any = encoder.config
        hidden = int(config.hidden_size)
        self.dropout = nn.Dropout(float(dropout))
        self.head = nn.Linear(hidden, num_classes)
        table = self.word_embeddings.weight
        scale = mean_row_norm(table, (*self.special_ids, self.pad_id))
        self.register_buffer("unit_scale", torch.tensor(scale, dtype=torch.float32))

    @property
    def word_embeddings(self) -> nn.Embedding:
        """The encoder's word-embedding table (frozen in every mode)."""
        table = self.encoder.get_input_embeddings()  # type: ignore[operator]
        if not isinstance(table, nn.Embedding):
            raise TypeError(f"{type(self.encoder).__name__} has no nn.Embedding input table")
        return table

    @property
    def dim(self) -> int:
        """``D``: the width of a word embedding."""
        return int(self.word_embeddings.embedding_dim)

    @property
    def max_length(self) -> int:
        """The longest input the encoder takes, in tokens (``max_position_embeddings``)."""
        config: Any = self.encoder.config
        return int(getattr(config, "max_position_embeddings", 512))

    def unit_scales(self) -> dict[str, float]:
        """Each threat model's eps unit (:meth:`TokenEmbedder.unit_scales`), without copying the
        table."""
        scale = float(self.unit_scale)
        return {"l2-token": scale, "linf": scale / math.sqrt(self.dim)}

    def embedder(self) -> TokenEmbedder:
        """A :class:`TokenEmbedder` for this model's inputs: a frozen copy of the table and the
        current ``unit_scale`` (call it after loading weights)."""
        return TokenEmbedder(
            self.word_embeddings.weight.detach().cpu(),
            unit_scale=float(self.unit_scale),
            special_ids=self.special_ids,
            pad_id=self.pad_id,
        )

    def features(self, x: Tensor) -> Tensor:
        """The pooled representation ``(B, hidden)`` of a packed batch (before dropout and
        head): with ``mean`` pooling, the sentence-transformers sentence embedding."""
        d = self.dim
        if x.dim() != 3 or x.shape[-1] != d + 1:
            raise ValueError(
                f"expected packed text inputs (B, L, {d + 1}) (TextClassifier.embedder()), got "
                f"{tuple(x.shape)}"
            )
        mask = x[..., d] > 0
        n = attended_length(mask)
        mask = mask[:, :n]
        embeds = x[:, :n, :d] * self.unit_scale
        out: Any = self.encoder(inputs_embeds=embeds, attention_mask=mask.long())
        if self.pooling == "pooler":
            return out.pooler_output  # type: ignore[no-any-return]
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]  # type: ignore[no-any-return]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, K)`` of a packed batch ``(B, L, D + 1)``."""
        return self.head(self.dropout(self.features(x)))  # type: ignore[no-any-return]
