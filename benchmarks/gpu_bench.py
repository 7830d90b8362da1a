"""GPU benchmark: attacks and training steps of one model (default
``timm:vit_small_patch16_224`` at 224 px, random init; ``--model efficientnet_lite0
--pretrained`` for the offline default with its packaged weights) in fp32, bf16 autocast,
bf16 autocast + ``torch.compile`` and fp32 channels_last; one JSON file.

Run twice by ``benchmarks/gpu_check.sh`` (once per model); ``--device cpu --dry`` checks the
whole path on a CPU (batch 2, two attack steps, the ``eager`` compile backend).

Per setting (the four alternate, median of ``--repeats``): PGD-10 and APGD-CE-10 accuracy
under attack at 4/255 (``Attack.evaluate``, early exit) and one PGD-7 training step (craft,
forward, backward, AdamW) on a random batch; peak GPU memory of the training step. torchattacks'
PGD-10 (fp32) is timed alongside as the peer where torchattacks is installed (a line says when
it is not). ``--budget-s``: a task that would start after this many seconds is recorded as
skipped; the JSON file is rewritten after every task, so a run stopped from outside keeps what
it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import alternate, load_average, machine, peak_memory_mib, settings

MODEL = "timm:vit_small_patch16_224"
EPS = 4 / 255
# name, bf16 autocast, torch.compile, channels_last
SETTINGS = (
    ("fp32", False, False, False),
    ("bf16", True, False, False),
    ("bf16+compile", True, True, False),
    ("channels_last", False, False, True),
)


@contextlib.contextmanager
def maybe_bf16(device: torch.device, on: bool) -> Iterator[None]:
    if on:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def contenders(args: argparse.Namespace, device: torch.device) -> dict[str, dict[str, Any]]:
    """name -> {settings, attack functions, train step} for each of :data:`SETTINGS`, and
    torchattacks' PGD where it is installed."""
    from robustft.attacks import create
    from robustft.models import build_model
    from robustft.objectives import AdversarialCE

    torch.manual_seed(0)
    base = build_model(args.model, num_classes=10, pretrained=args.pretrained).to(device).eval()
    size = args.image_size
    gen = torch.Generator().manual_seed(0)
    x_nchw = torch.rand(args.batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=gen).to(device)
    steps = 2 if args.dry else 10
    pgd, apgd = create("pgd", steps=steps, rel_step=0.25), create("apgd-ce", steps=steps)
    out: dict[str, dict[str, Any]] = {}
    for name, bf16, compiled, nhwc in SETTINGS:
        model = copy.deepcopy(base)
        x = x_nchw
        if nhwc:
            model = model.to(memory_format=torch.channels_last)
            x = x_nchw.contiguous(memory_format=torch.channels_last)
        if compiled:
            model.net.compile(backend=args.compile_backend)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        objective = AdversarialCE(create("pgd", steps=2 if args.dry else 7), autocast_bf16=bf16)

        def attack(r: int, a: Any, m: Any = model, b: bool = bf16, x: Any = x) -> float:
            g = torch.Generator().manual_seed(max(r, 0))
            with maybe_bf16(device, b):
                fooled = a.evaluate(m, x, y, EPS, generator=g).fooled
            return 1 - float(fooled.float().mean())

        def step(
            r: int, m: Any = model, opt: Any = optimizer, obj: Any = objective, x: Any = x
        ) -> float:
            g = torch.Generator().manual_seed(max(r, 0))
            m.train()
            result = obj(m, x, y, 8 / 255, generator=g)
            opt.zero_grad(set_to_none=True)
            result.loss.backward()
            opt.step()
            m.eval()
            return float(result.loss)

        out[name] = {
            "settings": settings(
                device=device.type,
                dtype="bf16" if bf16 else "fp32",
                compile=compiled,
                channels_last=nhwc,
            ).as_dict(),
            f"pgd-{steps}": lambda r, a=pgd, f=attack: f(r, a),
            f"apgd-ce-{steps}": lambda r, a=apgd, f=attack: f(r, a),
            f"train step pgd-{2 if args.dry else 7}": step,
        }
    try:
        import torchattacks
    except ImportError:
        logging.warning("torchattacks is not installed: its PGD cross-check is skipped")
        return out
    peer = torchattacks.PGD(base, eps=EPS, alpha=EPS / 4, steps=steps, random_start=True)

    def torchattacks_pgd(r: int) -> float:
        torch.manual_seed(max(r, 0))
        x_adv = peer(x_nchw, y)
        with torch.no_grad():
            return float((base(x_adv).argmax(1) == y).float().mean())

    out["torchattacks fp32"] = {
        "settings": settings(device=device.type).as_dict(),
        f"pgd-{steps}": torchattacks_pgd,
    }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from robustft.utils.fsio import atomic_write_json

    device = torch.device(args.device)
    start = time.perf_counter()
    results: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    out = {
        "model": args.model,
        "pretrained": args.pretrained,
        "image_size": args.image_size,
        "batch": args.batch,
        "eps": EPS,
        "machine": machine(),
        "load_average": load_average(),
        "dry": args.dry,
        "budget_s": args.budget_s,
        "results": results,
        "train_step_peak_mib": memory,
        "seconds": 0.0,
    }

    def save() -> None:
        out["seconds"] = round(time.perf_counter() - start, 1)
        atomic_write_json(args.out, out)

    def over_budget() -> bool:
        return args.budget_s is not None and time.perf_counter() - start > args.budget_s

    table = contenders(args, device)
    if not any(name.startswith("torchattacks") for name in table):
        out["torchattacks"] = "not installed: its PGD cross-check skipped"
    tasks = sorted({task for entry in table.values() for task in entry if task != "settings"})
    for task in tasks:
        if over_budget():
            results[task] = {"skipped": f"out of the time budget ({args.budget_s} s)"}
            continue
        runs: dict[str, Callable[[int], Any]] = {
            name: entry[task] for name, entry in table.items() if task in entry
        }
        timings = alternate(runs, args.repeats, warmup=True)
        results[task] = {
            name: {
                "median_s": round(t.median, 4),
                "times_s": [round(s, 4) for s in t.seconds],
                "value": round(float(t.result), 4),
                "speedup_vs_fp32": round(timings["fp32"].median / t.median, 3),
                "settings": table[name]["settings"],
            }
            for name, t in timings.items()
        }
        save()
    # one more training step per setting, already compiled and warm where its task ran
    for name, entry in table.items():
        for task, step in entry.items():
            timed = name in results.get(task, {})
            if task.startswith("train step") and timed:
                memory[name] = peak_memory_mib(lambda s=step: s(0), device)
    save()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default=MODEL, help=f"a robustft model name (default {MODEL})")
    parser.add_argument(
        "--pretrained", action="store_true", help="load its weights (efficientnet_lite0: packaged)"
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dry", action="store_true", help="tiny sizes: check the path on a CPU")
    parser.add_argument("--compile-backend", default=None, help="default inductor; dry: eager")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="skip the tasks that would start later"
    )
    parser.add_argument("--out", default="benchmarks/gpu_results.json", help="a JSON file")
    args = parser.parse_args(argv)
    if args.dry:
        args.batch, args.repeats = 2, 1
        args.compile_backend = args.compile_backend or "eager"
    args.compile_backend = args.compile_backend or "inductor"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_bench: error: no CUDA device; use --device cpu --dry", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = run(args)
    print(json.dumps(result["results"], indent=1))
    done = sum("skipped" not in task for task in result["results"].values())
    print(
        f"gpu_bench: {args.model}: {done} of {len(result['results'])} tasks in "
        f"{result['seconds']} s, written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
