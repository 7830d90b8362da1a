"""Peak memory of one adversarial training step of the paper's backbones, measured on the CPU.

For each backbone (timm, random init: nothing downloaded; a 200-class head as for CUB) and
batch size, a fresh process builds the model and AdamW exactly as ``robustft train`` does
(:func:`robustft.training.build.build_optimizer`), then takes one training step of the paper's
objective at 224x224 pixels: APGD-CE crafting (eval mode, input gradients only) followed by the
update (train mode, forward and backward, AdamW step). Reported: the process's peak resident
memory (``VmHWM``), its resident memory before the step (Python, torch, weights, optimizer),
and the difference, the step's own working memory (activations and gradients).

This is CPU memory, a stand-in for GPU memory per process: on a GPU the same tensors are
allocated, but the CUDA context (about 0.3-0.5 GB), cuDNN workspaces and the caching
allocator's slack come on top, and bf16 autocast (``train.bf16``) roughly halves the
activations. APGD's iterations repeat the same forward/backward, so the peak does not grow with
the step count: ``--steps`` (default 1, to keep CPU time down) changes time, not the peak (the
script's ``--check-steps`` compares 1 and 7 steps on the smallest configuration).

Usage:
    python benchmarks/train_memory.py                       # all, minutes to an hour on CPU
    python benchmarks/train_memory.py --models resnet50 --batches 16 32
A configuration whose peak, extrapolated linearly from the smaller batches, would exceed
``--limit-gb`` is skipped (reported as such) rather than run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

MODELS = ("resnet50", "vit_base_patch16_224", "convnext_base", "swin_base_patch4_window7_224")
GB = 1024**3


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def child(model_name: str, batch: int, steps: int, threads: int) -> dict[str, float]:
    """One training step in this (fresh) process; returns its memory figures."""
    import torch

    from robustft import attacks
    from robustft.config import build_config
    from robustft.models import build_model
    from robustft.objectives import AdversarialCE
    from robustft.training.build import build_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(f"timm:{model_name}", num_classes=200, pretrained=False, mode="full")
    config = build_config({"model": {"name": f"timm:{model_name}", "pretrained": False}})
    optimizer = build_optimizer(config, model)
    objective = AdversarialCE(attacks.create("apgd-ce", norm="linf", steps=steps))
    x, y = torch.rand(batch, 3, 224, 224), torch.randint(0, 200, (batch,))
    model.train()
    before = _status_kb("VmRSS") * 1024
    start = time.perf_counter()
    out = objective(model, x, y, 8 / 255)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    return {
        "model": model_name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": batch,
        "steps": steps,
        "before_gb": before / GB,
        "peak_gb": _status_kb("VmHWM") * 1024 / GB,
        "step_gb": (_status_kb("VmHWM") * 1024 - before) / GB,
        "seconds": time.perf_counter() - start,
    }


def measure(model: str, batch: int, steps: int, threads: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", model, str(batch), str(steps), str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model, batch, steps, threads = sys.argv[2], *map(int, sys.argv[3:6])
        print(json.dumps(child(model, batch, steps, threads)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[16, 32, 64])
    parser.add_argument("--steps", type=int, default=1, help="APGD steps (the peak is the same)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit-gb", type=float, default=12.0)
    parser.add_argument("--check-steps", action="store_true", help="compare 1 and 7 steps")
    args = parser.parse_args()
    print("model | params (M) | batch | before step (GB) | peak (GB) | step (GB) | s")
    if args.check_steps:
        for steps in (1, 7):
            r = measure(args.models[0], min(args.batches), steps, args.threads)
            print(f"{r['model']} APGD-{steps} | batch {r['batch']} | peak {r['peak_gb']:.2f} GB")
    for model in args.models:
        done: list[dict[str, float]] = []
        for batch in sorted(args.batches):
            if len(done) >= 2:  # linear in the batch: a + b * batch
                (b0, p0), (b1, p1) = [(d["batch"], d["peak_gb"]) for d in done[-2:]]
                predicted = p1 + (p1 - p0) / (b1 - b0) * (batch - b1)
                if predicted > args.limit_gb:
                    print(f"{model} | - | {batch} | skipped: about {predicted:.1f} GB expected")
                    continue
            r = measure(model, batch, args.steps, args.threads)
            done.append(r)
            print(
                f"{model} | {r['parameters'] / 1e6:.1f} | {batch} | {r['before_gb']:.2f} | "
                f"{r['peak_gb']:.2f} | {r['step_gb']:.2f} | {r['seconds']:.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
