"""Command-line entry point: parse arguments, call the library, render results.

Each subcommand lives in ``robustft.commands.<name>`` and exposes ``add_parser(subparsers)``
and ``run(args) -> int``. Any :class:`~robustft.errors.UserError` becomes one line on stderr and
exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

from robustft._version import __version__
from robustft.errors import NumericalFault, PeerFailed, Terminated, UserError, printable

FIRST_COMMANDS = ("schedule", "train", "eval", "demo")


def command_names() -> list[str]:
    """Subcommand modules in ``robustft.commands`` (``_private`` ones skipped), core ones first."""
    import robustft.commands

    found = {m.name for m in pkgutil.iter_modules(robustft.commands.__path__)}
    found = {name for name in found if not name.startswith("_")}
    return [n for n in FIRST_COMMANDS if n in found] + sorted(found - set(FIRST_COMMANDS))


class _Parser(argparse.ArgumentParser):
    """argparse reporting errors as one line with exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # the CLI prefixes "robustft: error: ": a subcommand's name is worth repeating, the
        # top level's is not ("robustft: error: robustft: unrecognized arguments" read twice)
        where = "" if self.prog == "robustft" else f"{self.prog}: "
        raise UserError(f"{where}{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="robustft",
        description="Robust fine-tuning of pretrained image classifiers "
        "(Epsilon-Scheduling, fast adversarial fine-tuning, expected robustness).",
    )
    parser.add_argument("--version", action="version", version=f"robustft {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in command_names():
        module = importlib.import_module(f"robustft.commands.{name}")
        module.add_parser(sub)
    return parser


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the block, so a command
    stops as on Ctrl-C, its files intact. Not under a torchrun agent (it ends its workers with
    SIGTERM, maybe inside a collective call, where only the default action ends them at once)
    nor outside the main thread; commands may install their own handler inside (sweep, tune)."""
    agent = "TORCHELASTIC_RESTART_COUNT" in os.environ
    if agent or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code.

    0 ok, 1 the run failed (a numerical fault), 2 bad input, 130 interrupted (Ctrl-C),
    143 terminated (SIGTERM, e.g. a Slurm preemption; a run resumes with ``--resume``).
    """
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.WARNING,
            format="%(levelname)s %(name)s: %(message)s",
        )
        if not args.verbose:  # the commands print each curve's warnings themselves, once
            logging.getLogger("robustft.robustness").setLevel(logging.ERROR)
        with _sigterm_stops():
            return int(args.handler(args))
    except PeerFailed:  # another rank of a torchrun run failed; rank 0 prints the reason
        return 2
    except NumericalFault as err:
        print(f"robustft: run failed: {err}", file=sys.stderr)
        return 1
    except UserError as err:
        print(f"robustft: error: {printable(str(err))}", file=sys.stderr)
        return 2
    except Terminated:
        print(
            "robustft: terminated (SIGTERM); a run keeps its last checkpoint: the same "
            "command with --resume continues it",
            file=sys.stderr,
        )
        return 143
    except KeyboardInterrupt:
        print("robustft: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as err:
        if err.filename is None:
            raise
        # a path the user gave cannot be used: name too long, permission denied, disk full...
        print(f"robustft: error: {printable(f'{err.filename}: {err.strerror}')}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
