"""``robustft demo``: what Epsilon-Scheduling does, offline, on a laptop CPU."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from robustft.commands._render import Progress
from robustft.config import RunConfig
from robustft.errors import UserError
from robustft.run.result import RunResult
from robustft.units import format_eps, parse_eps
from robustft.utils.text import percent, text_table

HELP = """\
Train standard fine-tuning, RFT-fix and Epsilon-Scheduling with the same budget on the offline
default (EfficientNet-Lite0 ImageNet weights from pip, scikit-learn digits), evaluate each
over the eps grid and print a table. Needs no network; about 5-8 minutes on 2 CPU cores.
Re-running continues or reuses finished runs in --out.

--text asks the same question of a text backbone: all-MiniLM-L6-v2 on the drug reviews
(positive vs negative), eps in the l2-token threat model (token embeddings); needs the text
extra (pip install -e ".[text]"); under 10 minutes on 2 CPU cores.
"""


def add_parser(sub: Any) -> None:
    from robustft.demo import DEMO_EPOCHS, TEXT_DEMO_EPOCHS

    p = sub.add_parser(
        "demo",
        help="standard FT vs RFT-fix vs Epsilon-Scheduling, offline",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs per run (default {DEMO_EPOCHS}; {TEXT_DEMO_EPOCHS} with --text)",
    )
    p.add_argument(
        "--eps",
        default=None,
        help="eps_g (default 16/255 l-inf pixel units; 0.3 l2-token with --text)",
    )
    p.add_argument(
        "--text",
        action="store_true",
        help="the text demo: MiniLM on the drug reviews, eps on token embeddings",
    )
    p.add_argument("--out", default="runs/demo", help="where the run directories go")
    p.add_argument("--device", default="auto")
    p.set_defaults(handler=run)


def _row(label: str, result: RunResult) -> list[object]:
    return [
        label,
        percent(result["clean_accuracy"]),
        percent(result["robust_accuracy"]),
        percent(result["expected_robustness"]),
        result["adaptation_delay"] or "never",
        f"{result['train_seconds'] + result['eval_seconds']:.0f}",
    ]


def summary_table(runs: list[tuple[RunConfig, Path, RunResult]], eps: float) -> str:
    """The demo's table, one row per method (the README shows it): clean, robust and expected
    robustness in % with 2 decimals, the adaptation delay and the wall time."""
    from robustft.demo import METHOD_LABELS

    rows = [_row(METHOD_LABELS[_method(c)], r) for c, _, r in runs]
    norm = runs[0][0].attack.norm if runs else "linf"
    headers = ["method", "clean %", f"robust@{format_eps(eps, norm)} %", "expected rob. %"]
    return text_table([*headers, "delay (epoch)", "time (s)"], rows)


def _method(config: RunConfig) -> str:
    """``standard``, ``fix`` or ``sched``, from the config's name (``demo-[text-]METHOD``)."""
    return config.name.removeprefix("demo-").removeprefix("text-")


def _setting(config: RunConfig, eps: float) -> str:
    if config.data.modality == "text":
        return (
            f"demo --text: {config.model.name} (all-MiniLM-L6-v2 weights) on drug reviews "
            f"({'/'.join(config.data.labels or ())}), {config.data.max_train_per_class} train "
            f"reviews/class, {config.data.max_length} tokens, {config.train.epochs} epochs, "
            f"batch {config.train.batch_size}, eps_g {format_eps(eps, 'l2-token')} l2-token "
            f"(fraction of the mean token-embedding norm), {config.train.optimizer} lr "
            f"{config.train.lr:g} (head {config.train.head_lr:g}), train attack "
            f"{config.attack.name} {config.attack.steps} steps, eval {config.eval.attack} "
            f"{config.eval.steps} steps on eighths of eps_g over {config.eval.max_examples} test "
            "reviews"
        )
    return (
        f"demo: {config.model.name} (ImageNet weights) on digits {config.data.image_size}x"
        f"{config.data.image_size}, {config.data.max_train_per_class} train images/class, "
        f"{config.train.epochs} epochs, batch {config.train.batch_size}, eps_g {format_eps(eps)} "
        f"l-inf, {config.train.optimizer} lr {config.train.lr:g}, train attack "
        f"{config.attack.name} {config.attack.steps} steps, eval {config.eval.attack} "
        f"{config.eval.steps} steps on the 1/255 grid over the test split"
    )


def _findings(runs: list[tuple[RunConfig, Path, RunResult]]) -> list[str]:
    """Diagnoses of each run, standard fine-tuning (the first) included; it is the
    suboptimal-transfer reference of the others."""
    from robustft.run.result import diagnose
    from robustft.run.rundir import RunDir

    reference = runs[0][2]["clean_accuracy"]
    lines = []
    for i, (config, run_dir, result) in enumerate(runs):
        history = RunDir(run_dir).read_metrics().rows
        compare = None if i == 0 else reference
        for f in diagnose(result, history, config.to_dict(), reference_clean=compare):
            method = _method(config)
            lines.append(f"  {method}: {f.code}: {f.message} -> {f.suggestion}")
    return lines


def run(args: argparse.Namespace) -> int:
    from robustft.demo import DEMO_EPOCHS, TEXT_DEMO_EPOCHS, demo_configs
    from robustft.diagnostics import THRESHOLD_TEXT, adaptation_threshold
    from robustft.run.rundir import RunDir, default_run_dir
    from robustft.training.fit import fit

    epochs = args.epochs or (TEXT_DEMO_EPOCHS if args.text else DEMO_EPOCHS)
    if epochs < 2:
        raise UserError(f"--epochs must be >= 2 for a schedule to ramp, got {epochs}")
    eps = None if args.eps is None else parse_eps(args.eps, name="--eps")
    if eps == 0:
        raise UserError("--eps must be > 0 (the demo compares robust fine-tuning methods)")
    configs = demo_configs(epochs, eps, text=args.text)
    eps = configs[-1].attack.eps
    print(_setting(configs[-1], eps))
    start = time.perf_counter()
    runs = []
    for config in configs:
        method = _method(config)
        run_dir = default_run_dir(config, Path(args.out))
        resume = RunDir(run_dir).has_checkpoint()
        progress = Progress(label=method, norm=config.attack.norm)
        result = fit(config, run_dir, resume=resume, callbacks=progress, device=args.device)
        runs.append((config, run_dir, result))
    print(summary_table(runs, eps))
    threshold = adaptation_threshold(int(runs[0][2]["num_classes"]))
    grid = "eighths of eps_g" if args.text else "1/255 grid"
    norm = configs[0].attack.norm
    print(
        "expected robustness: accuracy averaged over eps uniform on "
        f"[0, {format_eps(eps, norm)}] (APGD-CE, {grid}); delay: first epoch with validation "
        f"accuracy > {100 * threshold:.3g}% ({THRESHOLD_TEXT})"
    )
    findings = _findings(runs)
    print("diagnostics:\n" + ("\n".join(findings) if findings else "  none"))
    print("run directories:\n" + "\n".join(f"  {c.name}: {d}" for c, d, _ in runs))
    print(f"wall time: {time.perf_counter() - start:.0f}s")
    return 0
