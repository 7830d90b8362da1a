"""The Hugging Face Hub as the ``hf:`` and ``timm:`` sources use it: whether it can be reached,
and its offline mode (the cache only) while loading."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")


def hub_unreachable() -> bool:
    """Whether downloads must come from the cache only: Hugging Face's offline mode
    (``HF_HUB_OFFLINE=1``), or no proxy and a Hub host (``HF_ENDPOINT``) that DNS cannot resolve,
    i.e. no network. Without this check huggingface_hub retries each file five times with
    backoff (about 50 s for a repo id on a machine without network) before the same error."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return True
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return False  # the proxy resolves the host, not us
    host = urlparse(constants.ENDPOINT).hostname
    if not host:
        return False
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return True
    return False


@contextlib.contextmanager
def offline_mode(enabled: bool) -> Iterator[None]:
    """Hugging Face's offline mode while loading, when ``enabled``. ``local_files_only`` is not
    enough: huggingface_hub 2.x still fetches its agent registry over HTTP to build request
    headers (``utils/_detect_agent.py``) unless offline mode is on, and it reads
    ``HF_HUB_OFFLINE`` once at import, so its constant is set here and restored after."""
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
