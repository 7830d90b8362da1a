"""User-facing errors: one line that names the problem and the fix.

Library code raises :class:`UserError` (or a subclass) for anything a user can cause through
configuration, arguments, data or files. The CLI turns it into a single line on stderr and exit
code 2, without a traceback. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import math
from collections.abc import Iterable, Iterator, Sequence


class UserError(ValueError):
    """A problem with user input (config, CLI argument, data, checkpoint), fixable by the user.

    Raised in a DataLoader worker, torch re-raises it in the main process as
    ``UserError("Caught UserError in DataLoader worker process 0.\\nOriginal Traceback ...")``;
    the constructor recovers the original one-line message from that text.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_unwrap_worker_message(args[0]),)
        super().__init__(*args)


def _unwrap_worker_message(message: str) -> str:
    """The original message of an exception re-raised by torch from a worker, else ``message``.

    torch formats it as ``"Caught <Type> <where>.\\nOriginal Traceback (most recent call last):
    ...\\n<module>.<Type>: <original message>\\n"``.
    """
    if not message.startswith("Caught ") or "\nOriginal Traceback" not in message:
        return message
    last = message.rstrip().splitlines()[-1]
    _, sep, original = last.partition(": ")
    return original if sep and original else message


_PYTHON_API = contextvars.ContextVar("robustft_python_api", default=False)


@contextlib.contextmanager
def python_api() -> Iterator[None]:
    """Inside the block, messages name the Python API's arguments (``force=True``) instead of
    the command line's flags (``--force``): see :func:`option`."""
    token = _PYTHON_API.set(True)
    try:
        yield
    finally:
        _PYTHON_API.reset(token)


def option(name: str, value: object = True) -> str:
    """How a message tells the user to pass the option ``name`` (a parameter name such as
    ``run_dir``): ``--force``, ``--device cpu``, ``--run-dir`` on the command line;
    ``force=True``, ``device='cpu'``, ``run_dir`` from Python (inside :func:`python_api`).
    ``value`` None names the option alone."""
    if _PYTHON_API.get():
        return name if value is None else f"{name}={value!r}"
    flag = "--" + name.replace("_", "-")
    return flag if value is None or value is True else f"{flag} {value}"


def setting(key: str, value: object) -> str:
    """How a message tells the user to set the config key ``key`` to ``value``: ``--set
    data.download=true`` on the command line, ``{'data.download': True} in the config`` from
    Python (inside :func:`python_api`)."""
    if _PYTHON_API.get():
        entry = {key: value}
        return f"{entry!r} in the config"
    yaml = {"True": "true", "False": "false", "None": "null"}  # the words YAML reads
    return f"--set {key}={yaml.get(str(value), value)}"


def is_int(value: object) -> bool:
    """True for Python integers (booleans excluded)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """True for Python ints and floats (booleans excluded)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """True for finite Python ints and floats (booleans excluded)."""
    return is_number(value) and math.isfinite(value)  # type: ignore[arg-type]


def first_line(exc: BaseException, limit: int | None = 160) -> str:
    """The first line of an exception's message, shortened to ``limit`` characters (None: not
    shortened; its type name when the message is empty), for one-line errors that quote what a
    library said."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def describe(exc: BaseException, limit: int | None = None) -> str:
    """``TypeName: first line of the message`` (the type name alone when the message is empty):
    an unexpected exception in one line, for records and messages that name what failed."""
    name = type(exc).__name__
    return f"{name}: {first_line(exc, limit)}" if str(exc).strip() else name


def few(items: Sequence[str], n: int = 4) -> str:
    """The first ``n`` items joined, with an ellipsis when there are more."""
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def printable(text: str) -> str:
    """``text`` with line breaks and other unprintable characters (from user input such as a
    key or a path) escaped, so that an error stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return a ``" (did you mean 'x'?)"`` suffix for the closest valid name, or ``""``.

    Example:
        >>> did_you_mean("pgf", ["pgd", "fgsm"])
        " (did you mean 'pgd'?)"
    """
    # difflib.get_close_matches breaks ties by the larger string; here the earlier choice wins,
    # so callers can list the name to prefer first (the offline default before its siblings)
    scored = [
        (difflib.SequenceMatcher(None, name, c).ratio(), -i, c) for i, c in enumerate(choices)
    ]
    score, _, best = max(scored, default=(0.0, 0, ""))
    return f" (did you mean '{best}'?)" if score >= 0.5 else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """Build the standard error for an unknown registry name, listing the valid ones."""
    options = sorted(choices)
    return UserError(
        f"unknown {kind} '{name}'{did_you_mean(name, options)}; valid: {', '.join(options)}"
    )


class NumericalFault(UserError):
    """Training stopped on a non-finite loss or an exploding gradient (the CLI exits with 1).

    Attributes:
        kind: ``nan_loss``, ``inf_loss``, ``nonfinite_grad`` or ``exploding_grad``.
        epoch, step: where it happened, both 1-based: the epoch, and the optimizer step
            counted over the run.
        epoch_step: the step counted within its epoch (1-based; None when unknown).
        value: the offending loss or gradient norm.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        epoch: int,
        step: int,
        value: float,
        epoch_step: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind, self.epoch, self.step, self.value = kind, epoch, step, value
        self.epoch_step = epoch_step


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a batch scheduler preempting the job, ``kill``): the command stops as
    on Ctrl-C, keeping what it saved (a run its last checkpoint); the CLI exits with 143."""


class DataFault(UserError):
    """An example of a dataset given from Python (checked item by item as it is read) is not
    an ``(image in [0, 1], integer label)`` pair of the task; during an epoch the run records it
    in ``failure.json`` as it does a :class:`NumericalFault`. Built from the message alone, so
    that torch can re-raise it from a DataLoader worker."""

    kind = "bad_data"


class PeerFailed(UserError):
    """Another process of a distributed run failed (rank 0 reports the cause; the CLI prints
    nothing more for this one, so a misconfiguration is one line however many ranks see it)."""
