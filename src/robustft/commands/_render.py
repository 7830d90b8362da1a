"""Terminal rendering for the CLI: progress bars on stderr (on a TTY a bar is redrawn in place;
otherwise one line is printed per finished epoch or evaluation, so logs of batch jobs stay
readable) and attack labels. The tables and percentages the commands print on stdout come from
:mod:`robustft.utils.text`."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from robustft.callbacks import Callbacks
from robustft.units import format_eps
from robustft.utils.text import percent


def attack_label(described: dict[str, Any]) -> str:
    """``apgd-ce, 10 steps`` from an attack's ``describe()`` (no step count for one-step attacks;
    queries for Square)."""
    name = str(described.get("name"))
    if "queries" in described:
        return f"{name}, {described['queries']} queries"
    steps = described.get("steps")
    return name if steps in (None, 1) else f"{name}, {steps} steps"


EVAL_LINES = 10  # without a terminal, an evaluation prints about this many progress lines


class Progress(Callbacks):
    """Progress callbacks for :func:`robustft.training.fit.fit` rendered on ``stream``; eps in the
    unit of ``norm`` (k/255 for l-inf)."""

    def __init__(self, stream: TextIO | None = None, label: str = "", norm: str = "linf") -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.label = f"[{label}] " if label else ""
        self.norm = norm
        self._prefix = ""
        self._start = time.perf_counter()
        self._next_line = 0
        self._stage = "robustness curve"

    def _bar(self, done: int, total: int, width: int = 24) -> str:
        filled = int(width * done / max(total, 1))
        elapsed = time.perf_counter() - self._start
        eta = elapsed / done * (total - done) if done else 0.0
        bar = "#" * filled + "." * (width - filled)
        return f"|{bar}| {done}/{total} {elapsed:5.1f}s eta {eta:4.0f}s"

    def _draw(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()

    def on_epoch_start(self, epoch: int, epochs: int, eps: float, batches: int) -> None:
        self._prefix = f"{self.label}epoch {epoch}/{epochs} eps {format_eps(eps, self.norm)}"
        self._start = time.perf_counter()
        self._draw(f"{self._prefix} {self._bar(0, batches)}")

    def on_batch(self, done: int, total: int) -> None:
        self._draw(f"{self._prefix} {self._bar(done, total)}")

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        robust = row.get("val_robust_acc")
        extra = f" val robust {percent(robust)}%" if robust is not None else ""
        attack = row.get("train_attack")  # monitor.action=switch: before or after the switch
        named = f"{attack} " if attack else ""
        text = (
            f"{self.label}epoch {row['epoch']} eps {format_eps(row['eps'], self.norm)} {named}"
            f"loss {row['train_loss']:.3f} train {percent(row['train_acc'])}% "
            f"val {percent(row['val_acc'])}%{extra} ({row['seconds']:.1f}s)"
        )
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def on_stage(self, name: str) -> None:
        self._stage = name

    def on_eval_start(self, total: int) -> None:
        self._prefix = f"{self.label}{self._stage}"
        self._start = time.perf_counter()
        self._next_line = max(1, total // EVAL_LINES)
        self._draw(f"{self._prefix} {self._bar(0, total)}")

    def on_eval(self, done: int, total: int) -> None:
        self._draw(f"{self._prefix} {self._bar(done, total)}")
        if not self.tty and self._next_line <= done < total:  # a log file: a line now and then
            self.stream.write(f"{self._prefix} {self._bar(done, total)}\n")
            self.stream.flush()
            self._next_line = done + max(1, total // EVAL_LINES)
        if done >= total:
            if self.tty:
                self.stream.write("\r\033[K")
            elapsed = time.perf_counter() - self._start
            self.stream.write(f"{self._prefix}: {total} examples in {elapsed:.1f}s\n")
            self.stream.flush()
