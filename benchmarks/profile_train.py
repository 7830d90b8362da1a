"""Where a PGD-7 training step's time goes: robustft's objective (NCHW and channels_last) vs a
plain PyTorch step with torchattacks' PGD-7, on the offline default at 32 px, torch.profiler
operator totals.

    python benchmarks/profile_train.py [--threads 1] [--batch 25]

Uses the standard model cached by ``run_all.py`` (run it first).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--rows", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import torchattacks

    from robustft.attacks import create
    from robustft.objectives import AdversarialCE
    from robustft.training.build import build_data

    sizes = run_all.FULL
    data = build_data(run_all.base_config(sizes))
    base = run_all.finetune("standard", sizes, data, torch.device("cpu"))
    xs, ys = zip(*(data.train[i] for i in range(args.batch)))
    x, y = torch.stack(xs), torch.tensor(ys)
    eps = 8 / 255

    def ours_step(channels_last: bool):  # type: ignore[no-untyped-def]
        model = copy.deepcopy(base)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        objective = AdversarialCE(create("pgd", steps=7))

        def step() -> None:
            model.train()
            out = objective(model, x, y, eps, generator=torch.Generator().manual_seed(0))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()

        return step

    model_ta = copy.deepcopy(base)
    opt_ta = torch.optim.AdamW(model_ta.parameters(), lr=1e-5)
    attack = torchattacks.PGD(model_ta, eps=eps, alpha=eps / 4, steps=7, random_start=True)

    def plain_step() -> None:
        x_adv = attack(x, y)
        model_ta.train()
        loss = nn.functional.cross_entropy(model_ta(x_adv), y)
        opt_ta.zero_grad(set_to_none=True)
        loss.backward()
        opt_ta.step()

    runs = {
        "ours NCHW": ours_step(False),
        "ours channels_last": ours_step(True),
        "plain + torchattacks": plain_step,
    }
    for name, fn in runs.items():
        fn()
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        print(f"\n### {name}: {time.perf_counter() - start:.2f} s (profiled)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
