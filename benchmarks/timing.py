"""What every benchmark shares: side-by-side timing, the settings a row ran with, the machine's
load, peak memory and a least-squares line.

Methodology: the contenders of one comparison run in the same process, one after another, the
order rotating every repetition (so a slow spell of a shared machine hits each of them), and
each is summarised by its median; a comparison reports ratios of medians. The load average is
recorded with every section, since other processes on the machine slow every contender.
"""

from __future__ import annotations

import gc
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Settings:
    """How a row ran: device, CPU threads, compute dtype, memory format, compilation."""

    device: str = "cpu"
    threads: int = 1
    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def label(self) -> str:
        layout = "channels_last" if self.channels_last else "NCHW"
        mode = "compiled" if self.compile else "eager"
        where = f"{self.threads} threads" if self.device == "cpu" else self.device
        return f"{where}, {self.dtype}, {layout}, {mode}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "threads": self.threads,
            "dtype": self.dtype,
            "channels_last": self.channels_last,
            "compile": self.compile,
        }


def settings(**changes: Any) -> Settings:
    """The current process's settings (device cpu, torch's thread count) with ``changes``."""
    base = {"threads": torch.get_num_threads()}
    return Settings(**{**base, **changes})


def model_layout(model: torch.nn.Module) -> bool:
    """Whether ``model`` stores its convolution weights channels_last (as a training state's
    model is, once its memory format is chosen)."""
    for p in model.parameters():
        if p.ndim == 4 and not p.is_contiguous():
            return p.is_contiguous(memory_format=torch.channels_last)
    return False


def computed_layout(model: torch.nn.Module, fn: Callable[[], Any]) -> bool:
    """Whether the convolutions of ``model`` received channels_last inputs while ``fn`` ran
    (what a row's settings say: the layout the defaults chose, wherever they chose it)."""
    seen: list[bool] = []

    def hook(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        if x.ndim == 4 and not x.is_contiguous():
            seen.append(x.is_contiguous(memory_format=torch.channels_last))

    handles = [
        m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)
    ]
    try:
        fn()
    finally:
        for handle in handles:
            handle.remove()
    return any(seen)


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        text = open("/proc/cpuinfo").read()  # noqa: SIM115
        found = re.search(r"model name\s*:\s*(.+)", text)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class Timing:
    """The wall times of one contender and the value its last run returned."""

    seconds: list[float] = field(default_factory=list)
    result: Any = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def alternate(
    contenders: dict[str, Callable[[int], Any]],
    repeats: int,
    *,
    warmup: bool = False,
    clock: str = "wall",
) -> dict[str, Timing]:
    """Time each contender ``repeats`` times, rotating the order every repetition.

    Args:
        contenders: name -> function of the repetition index (e.g. to seed it) returning a
            result (kept from the last run).
        repeats: runs of each contender.
        warmup: run each once first, untimed (kernels, caches, compilation).
        clock: ``"wall"`` (the call's wall time) or ``"result"`` (the call returns its own
            seconds, e.g. a training epoch timing its loop without the validation after it).

    Returns:
        name -> :class:`Timing`.
    """
    names = list(contenders)
    timings = {name: Timing() for name in names}
    if warmup:
        for name in names:
            contenders[name](-1)
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            synchronize()
            start = time.perf_counter()
            result = contenders[name](repeat)
            synchronize()
            wall = time.perf_counter() - start
            timings[name].seconds.append(float(result) if clock == "result" else wall)
            timings[name].result = result
    return timings


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``y = intercept + slope * x``; returns ``(slope, intercept)``."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return slope, mean_y - slope * mean_x


def _status_kib(field_name: str) -> int | None:
    try:
        text = open("/proc/self/status").read()  # noqa: SIM115
    except OSError:
        return None
    found = re.search(rf"{field_name}:\s+(\d+) kB", text)
    return int(found.group(1)) if found else None


def peak_memory_mib(fn: Callable[[], Any], device: torch.device) -> float | None:
    """The memory ``fn`` needed beyond what was held before it, in MiB: on CUDA the peak of
    allocated tensor memory; on CPU the peak resident set (Linux: ``VmHWM``, reset through
    ``/proc/self/clear_refs``). None where it cannot be measured."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset the peak resident set to the current one
    except OSError:
        return None
    before = _status_kib("VmRSS")
    fn()
    peak = _status_kib("VmHWM")
    if before is None or peak is None:
        return None
    return max(0, peak - before) / 1024
