"""Where the time of accuracy-under-attack goes: example passes and torch.profiler operator
totals for ours (early exit), ours (attack + forward) and torchattacks (attack + forward).

    python benchmarks/profile_eval.py [--threads 1] [--examples 64] [--kind robust|standard]

Uses the models cached by ``run_all.py`` (run it first). Prints, per contender, the wall time,
the example forward/backward passes through the model and the profiler's top operators.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--kind", default="robust", choices=("robust", "standard"))
    parser.add_argument("--attack", default="apgd-ce", choices=("apgd-ce", "pgd"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from robustft.attacks import create
    from robustft.cost import count_passes
    from robustft.training.build import build_data

    sizes = run_all.FULL
    data = build_data(run_all.base_config(sizes))
    model = run_all.finetune(args.kind, sizes, data, torch.device("cpu"))
    xs, ys = zip(*(data.test[i] for i in range(args.examples)))
    x, y = torch.stack(xs), torch.tensor(ys)
    eps = run_all.EPS_ATTACK[args.kind]
    ours = create(args.attack, steps=10, **({"rel_step": 0.25} if args.attack == "pgd" else {}))
    theirs = run_all._torchattacks(args.attack.split("-")[0], model, eps, 10)

    def early() -> None:
        ours.evaluate(model, x, y, eps, generator=torch.Generator().manual_seed(0))

    def full() -> None:
        x_adv = ours(model, x, y, eps, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            model(x_adv)

    def peer() -> None:
        torch.manual_seed(0)
        x_adv = theirs(x, y)
        with torch.no_grad():
            model(x_adv)

    for name, fn in (
        ("ours early exit", early),
        ("ours attack+forward", full),
        ("torchattacks", peer),
    ):
        fn()
        start = time.perf_counter()
        with count_passes(model) as passes, profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        wall = time.perf_counter() - start
        print(f"\n### {name}: {wall:.2f} s (profiled), passes {passes.as_dict()}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
