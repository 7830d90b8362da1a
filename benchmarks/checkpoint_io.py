"""Checkpoint size and memory: the v1 format (robustft 0.1's writer) against the v2 writer.

The payload is that of a real run: the default model (``efficientnet_lite0``, full fine-tuning,
3.38M parameters) after one AdamW step, so the optimizer holds its two moments, built by
:func:`robustft.training.state.build_state` and :func:`robustft.training.state.checkpoint_payload`
as training builds it. For each format the script reports the file size, the tensors' bytes, the
peak extra resident memory while saving and while loading (RSS sampled every millisecond by a
thread, minus the RSS before the call; it includes what torch allocates in C++) and the peak of
Python allocations (``tracemalloc``), per parameter as well.

The v1 writer is reproduced here as it was (``torch.save`` of the payload into bytes, then a
second ``torch.save`` of ``{"format", "sha256", "payload": bytes}``); robustft still reads such
files but no longer writes them.

Usage:
    python benchmarks/checkpoint_io.py          # about 20 seconds
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from robustft.config import build_config
from robustft.run.checkpoint import FORMAT_V1, load_checkpoint, save_checkpoint
from robustft.training.state import _checkpoint_payload, build_state
from robustft.utils.fsio import atomic_write_bytes

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every millisecond."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def extra(self) -> int:
        return self.peak - self.base


def save_v1(path: Path, payload: dict[str, Any]) -> None:
    """robustft 0.1's ``save_checkpoint`` (payload serialised, then wrapped and serialised)."""

    def serialize(obj: Any) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return buffer.getvalue()

    blob = serialize(payload)
    wrapper = {"format": FORMAT_V1, "sha256": hashlib.sha256(blob).hexdigest(), "payload": blob}
    atomic_write_bytes(path, serialize(wrapper))


def measure(call: Callable[[], object]) -> tuple[int, int, float]:
    """(peak extra RSS, peak traced Python bytes, seconds) of ``call()``."""
    tracemalloc.start()
    start = time.perf_counter()
    with PeakRSS() as peak:
        call()
    seconds = time.perf_counter() - start
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak.extra, traced, seconds


def payload_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(payload_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(payload_bytes(v) for v in obj)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = build_config({"model": {"name": args.model}, "data": {"max_train_per_class": 4}})
    state = build_state(config, torch.device("cpu"))
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    torch.nn.functional.cross_entropy(state.model(x), y).backward()
    state.optimizer.step()
    payload = _checkpoint_payload(state)
    params = sum(p.numel() for p in state.model.parameters())
    weights = sum(p.numel() * p.element_size() for p in state.model.parameters())
    print(
        f"{args.model}: {params:,} parameters; weights {weights / 1e6:.1f} MB; payload tensors "
        f"{payload_bytes(payload) / 1e6:.1f} MB (weights, buffers, AdamW moments)"
    )
    header = "format | file MB | B/param | save: extra RSS MB (B/param) | traced MB | s"
    print(header + " | load: extra RSS MB | traced MB | s")
    with tempfile.TemporaryDirectory() as tmp:
        for name, save in (("v1", save_v1), ("v2", save_checkpoint)):
            path = Path(tmp) / name / "last.pt"
            path.parent.mkdir()
            save(path, payload)  # warm-up: first-call allocations are not the format's cost
            s_rss, s_traced, s_sec = measure(lambda save=save, path=path: save(path, payload))
            size = path.stat().st_size
            l_rss, l_traced, l_sec = measure(lambda path=path: load_checkpoint(path))
            print(
                f"{name} | {size / 1e6:.1f} | {size / params:.1f} | {s_rss / 1e6:.1f} "
                f"({s_rss / params:.1f}) | {s_traced / 1e6:.1f} | {s_sec:.2f} | "
                f"{l_rss / 1e6:.1f} | {l_traced / 1e6:.1f} | {l_sec:.2f}"
            )


if __name__ == "__main__":
    main()
