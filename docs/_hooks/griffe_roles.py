"""Griffe extension for the API page: robustft's docstrings are Google style with reST inline
roles (``:func:`robustft.fit```, ``:class:`~robustft.RunConfig```), which markdown would show
as typed. Each role becomes a code span of its target (the last part with ``~``)."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":[a-z]+:`(~?)([^`]+)`")


def plain(text: str) -> str:
    """``text`` with every reST role replaced by a code span."""
    return ROLE.sub(lambda m: f"`{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}`", text)


class RestRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
