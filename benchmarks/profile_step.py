"""Where a training step's time goes around the attack: the phases of robustft's step
(``robustft.training.loop._train_step``) timed one by one on the offline default at 32 px,
built with robustft's defaults (memory format, fused optimizer) unless told otherwise.

    python benchmarks/profile_step.py [--attack fgsm-rs|pgd] [--batch 25] [--steps 12]
        [--threads 1] [--optimizer-loop] [--channels-last true|false]

Prints the median milliseconds of each phase (the first two steps left out): the learning
rate, the crafting, the update's forward, zeroing, backward, gradient norm, the one host copy,
the optimizer step, the correct count; then the step's total and what it spends beside the
attack, in attack steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attack", default="fgsm-rs", choices=("fgsm-rs", "pgd"))
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--optimizer-loop", action="store_true", help="torch's per-tensor step")
    parser.add_argument("--channels-last", choices=("true", "false"), help="default: robustft's")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from robustft.training.build import build_data
    from robustft.training.loop import _gradient_norm, _set_lr
    from robustft.training.state import build_state

    attack: dict[str, Any] = {"name": args.attack, "eps": 8 / 255, "schedule": "constant"}
    if args.attack == "pgd":
        attack["steps"] = 7
    train: dict[str, Any] = {"batch_size": args.batch}
    if args.channels_last is not None:
        train["channels_last"] = args.channels_last == "true"
    config = run_all.base_config(run_all.FULL, train=train, attack=attack)
    data = build_data(config)
    state = build_state(config, torch.device("cpu"), data=data)
    if args.optimizer_loop:
        for group in state.optimizer.param_groups:
            group["fused"] = None
    model = state.model
    xs, ys = zip(*(data.train[i] for i in range(args.batch)))
    layout = torch.channels_last if run_all.model_layout(model) else torch.contiguous_format
    x, y = torch.stack(xs).contiguous(memory_format=layout), torch.tensor(ys)
    gen = torch.Generator().manual_seed(0)
    phases: dict[str, list[float]] = {}

    def tick(name: str, since: float) -> float:
        now = time.perf_counter()
        phases.setdefault(name, []).append(now - since)
        return now

    model.train()
    for _ in range(args.steps):
        t = t0 = time.perf_counter()
        _set_lr(state)
        t = tick("learning rate", t)
        x_adv = state.objective.attack(model, x, y, 8 / 255, generator=gen)
        t = tick("crafting", t)
        logits = model(x_adv)
        loss = nn.functional.cross_entropy(logits, y)
        t = tick("update forward", t)
        state.optimizer.zero_grad(set_to_none=True)
        t = tick("zero_grad", t)
        loss.backward()
        t = tick("update backward", t)
        norm = _gradient_norm(state)
        t = tick("gradient norm", t)
        torch.stack([loss.detach(), norm]).tolist()  # type: ignore[list-item]
        t = tick("host copy", t)
        state.optimizer.step()
        t = tick("optimizer step", t)
        (logits.argmax(1) == y).sum()
        t = tick("correct count", t)
        tick("total", t0)
    median = {name: statistics.median(v[2:]) * 1000 for name, v in phases.items()}
    kernel = "per-tensor loop" if args.optimizer_loop else "fused"
    print(
        f"{args.attack}, batch {args.batch}, {args.threads} thread(s), "
        f"{'channels_last' if layout == torch.channels_last else 'NCHW'}, "
        f"{config.train.optimizer} {kernel}"
    )
    for name, ms in median.items():
        print(f"{name:>16}: {ms:8.2f} ms")
    rest = median["total"] - median["crafting"]
    step = median["crafting"] / (7 if args.attack == "pgd" else 1)
    print(f"the step beside the attack: {rest:.1f} ms = {rest / step:.2f} attack steps")


if __name__ == "__main__":
    main()
