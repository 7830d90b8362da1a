"""The early catastrophic-overfitting detector's overhead per epoch (issue 22), against one
FGSM-RS training epoch of the offline default.

    python benchmarks/co_detector_overhead.py [--per-class 20 100] [--examples 128] [--repeats 3]

The offline default: EfficientNet-Lite0 (ImageNet weights from pip) on digits at 32 px, the
protocol of ``configs/reproduction/base.yaml`` (batch 32, FGSM-RS at 8/255), ``--per-class``
training images per class (20: base.yaml; 100: paper_b_data.yaml, where FGSM-RS overfits). Timed,
alternating (:func:`timing.alternate`, median of ``--repeats``, one CPU thread):

* ``epoch``: one FGSM-RS training epoch, the loop's own clock (validation excluded);
* ``detector``: what the detector adds to the monitor on its sample (``monitor.examples``):
  :func:`robustft.monitor.sample_signals`, clean accuracy and gradient alignment (one forward
  pass, then a forward and a backward pass at x and at a random point of the eps-ball);
* ``monitor``: the monitor's PGD-10 and FGSM accuracies on the same sample (early exit: their
  cost falls as the model's PGD accuracy does; measured here on the model after the timed
  epochs, so it depends on how robust those made it).

Prints one line per size with ``detector / epoch`` (the issue's target: at most 10%) and
``(monitor + detector) / epoch``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import alternate, load_average

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "reproduction" / "base.yaml"
EPS = 8 / 255


def measure(per_class: int, examples: int, repeats: int) -> dict[str, float]:
    """Median seconds of the epoch, the detector's signals and the monitor's attacks."""
    from robustft import attacks
    from robustft.callbacks import Callbacks
    from robustft.config import load_config
    from robustft.monitor import attack_accuracy, sample_signals
    from robustft.training.loop import train_epoch
    from robustft.training.state import build_state

    config = load_config(
        BASE,
        [
            f"data.max_train_per_class={per_class}",
            "attack.name=fgsm-rs",
            f"attack.eps={EPS}",
            "attack.schedule=constant",
            f"monitor.examples={examples}",
        ],
    )
    state = build_state(config, torch.device("cpu"))
    val, seed = state.data.val, 0
    pgd = attacks.create("pgd", norm="linf", steps=config.monitor.pgd_steps)
    fgsm = attacks.create("fgsm", norm="linf")

    def epoch(_r: int) -> float:
        return float(train_epoch(state, 1, Callbacks())["seconds"])

    def detector(_r: int) -> float:
        start = time.perf_counter()
        sample_signals(state.model, val, EPS, norm="linf", examples=examples, seed=seed)
        return time.perf_counter() - start

    def monitor(_r: int) -> float:
        start = time.perf_counter()
        for attack in (pgd, fgsm):
            attack_accuracy(state.model, val, attack, EPS, examples=examples, seed=seed)
        return time.perf_counter() - start

    contenders: dict[str, Callable[[int], Any]] = {
        "epoch": epoch,
        "detector": detector,
        "monitor": monitor,
    }
    timings = alternate(contenders, repeats, warmup=True, clock="result")
    return {name: t.median for name, t in timings.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--examples", type=int, default=128, help="monitor.examples")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"load average before: {load_average()}")
    for per_class in args.per_class:
        s = measure(per_class, args.examples, args.repeats)
        print(
            f"{per_class * 10} training images, sample {args.examples}: FGSM-RS epoch "
            f"{s['epoch']:.2f} s, detector {s['detector']:.2f} s "
            f"({100 * s['detector'] / s['epoch']:.1f}% of the epoch), monitor PGD-10 + FGSM "
            f"{s['monitor']:.2f} s ((monitor + detector) / epoch "
            f"{100 * (s['monitor'] + s['detector']) / s['epoch']:.1f}%)"
        )
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
