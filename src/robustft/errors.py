"""User-facing errors: one line that names the problem and the fix.

Library code raises :class:`UserError` (or a subclass) for anything a user can cause through
configuration, arguments, data or files. The CLI turns it into a single line on stderr and exit
code 2, without a traceback. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """A problem with user input (config, CLI argument, data, checkpoint), fixable by the user."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return a ``" (did you mean 'x'?)"`` suffix for the closest valid name, or ``""``.

    Example:
        >>> did_you_mean("pgf", ["pgd", "fgsm"])
        " (did you mean 'pgd'?)"
    """
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """Build the standard error for an unknown registry name, listing the valid ones."""
    options = sorted(choices)
    return UserError(
        f"unknown {kind} '{name}'{did_you_mean(name, options)}; valid: {', '.join(options)}"
    )
