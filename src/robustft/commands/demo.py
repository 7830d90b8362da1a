"""``robustft demo``: what Epsilon-Scheduling does, offline, on a laptop CPU."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from robustft.commands._render import Progress, pct, table
from robustft.errors import UserError
from robustft.units import format_eps, parse_eps

HELP = """\
Train standard fine-tuning, RFT-fix and Epsilon-Scheduling with the same budget on the offline
default (EfficientNet-Lite0 ImageNet weights from pip, scikit-learn digits), evaluate each
over the eps grid and print a table. Needs no network; about 5-8 minutes on 2 CPU cores.
Re-running continues or reuses finished runs in --out.
"""


def add_parser(sub: Any) -> None:
    from robustft.demo import DEMO_EPOCHS

    p = sub.add_parser(
        "demo",
        help="standard FT vs RFT-fix vs Epsilon-Scheduling, offline",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--epochs", type=int, default=DEMO_EPOCHS, help=f"epochs per run (default {DEMO_EPOCHS})"
    )
    p.add_argument("--eps", default="16/255", help="eps_g, l-inf pixel units (default 16/255)")
    p.add_argument("--out", default="runs/demo", help="where the run directories go")
    p.add_argument("--device", default="auto")
    p.set_defaults(handler=run)


def _row(label: str, result: dict[str, Any]) -> list[object]:
    return [
        label,
        pct(result["clean_accuracy"]),
        pct(result["robust_accuracy"]),
        pct(result["expected_robustness"]),
        result["adaptation_delay"] or "never",
        f"{result['train_seconds'] + result['eval_seconds']:.0f}",
    ]


def run(args: argparse.Namespace) -> int:
    from robustft.demo import METHOD_LABELS, demo_configs
    from robustft.diagnostics import adaptation_threshold
    from robustft.rundir import default_run_dir
    from robustft.train import fit

    if args.epochs < 2:
        raise UserError(f"--epochs must be >= 2 for a schedule to ramp, got {args.epochs}")
    eps = parse_eps(args.eps, name="--eps")
    if eps == 0:
        raise UserError("--eps must be > 0 (the demo compares robust fine-tuning methods)")
    configs = demo_configs(args.epochs, eps)
    first = configs[-1]
    print(
        f"demo: {first.model.name} (ImageNet weights) on digits {first.data.image_size}x"
        f"{first.data.image_size}, {first.data.max_train_per_class} train images/class, "
        f"{args.epochs} epochs, batch {first.train.batch_size}, eps_g {format_eps(eps)} l-inf, "
        f"{first.train.optimizer} lr {first.train.lr:g}, train attack {first.attack.name} "
        f"{first.attack.steps} steps, eval {first.eval.attack} {first.eval.steps} steps on the "
        "1/255 grid over the test split"
    )
    start = time.perf_counter()
    rows, dirs, results = [], [], []
    for config in configs:
        method = config.name.removeprefix("demo-")
        run_dir = default_run_dir(config, Path(args.out))
        resume = run_dir.is_dir() and (run_dir / "checkpoints" / "last.pt").is_file()
        result = fit(
            config, run_dir, resume=resume, callbacks=Progress(label=method), device=args.device
        )
        rows.append(_row(METHOD_LABELS[method], result))
        results.append(result)
        dirs.append(f"  {method}: {run_dir}")
    headers = [
        "method",
        "clean %",
        f"robust@{format_eps(eps)} %",
        "expected rob. %",
        "delay (epoch)",
        "time (s)",
    ]
    print(table(headers, rows))
    threshold = adaptation_threshold(int(results[0]["num_classes"]))
    print(
        "expected robustness: accuracy averaged over eps uniform on "
        f"[0, {format_eps(eps)}] (APGD-CE, 1/255 grid); delay: first epoch with validation "
        f"accuracy > {100 * threshold:.0f}% (max(5%, 2 x chance))"
    )
    print("run directories:\n" + "\n".join(dirs))
    print(f"wall time: {time.perf_counter() - start:.0f}s")
    return 0
