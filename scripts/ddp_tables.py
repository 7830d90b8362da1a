#!/usr/bin/env python
"""The tables of docs/scaling.md, "2 processes against 1": train a config once in one process
and once under ``torchrun --nproc_per_node=2`` (gloo, CPU, one thread per process), then print
the markdown table that compares the two run directories.

Cases (the commands docs/scaling.md shows):

* ``layernorm``: ``configs/smoke.yaml`` with a BatchNorm-free model (timm's
  ``test_efficientnet_ln``), 120 training images, global batch 20, 3 epochs, no augmentation;
* ``batchnorm``: ``configs/smoke.yaml`` as shipped (EfficientNet-Lite0, whose BatchNorm
  normalises each process's 10 examples with their own statistics), with ``train.threads=1``.

    python scripts/ddp_tables.py [--case layernorm|batchnorm|all] [--workdir DIR]

The run directories are kept in ``--workdir`` (a temporary directory by default, removed);
a case whose two run directories already hold ``result.json`` there is not trained again.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from robustft.run.checkpoint import load_checkpoint
from robustft.run.rundir import RunDir
from robustft.units import format_eps
from robustft.utils.text import percent

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
LAYERNORM = (
    "model.name=timm:test_efficientnet_ln",
    "model.pretrained=false",
    "data.image_size=16",
    "data.max_train_per_class=12",
    "data.augment=none",
    "train.epochs=3",
    "train.threads=1",
    "attack.schedule=constant",
    "eval.max_examples=40",
    "eval.batch_size=16",
    "eval.steps=2",
)
BATCHNORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
CASES: dict[str, tuple[str, ...]] = {"layernorm": LAYERNORM, "batchnorm": ("train.threads=1",)}


def train(run_dir: Path, sets: Sequence[str], processes: int) -> None:
    """``robustft train configs/smoke.yaml`` in ``processes`` processes (torchrun for 2)."""
    if RunDir(run_dir).result.is_file():
        return
    launch = [sys.executable, "-m", "robustft"]
    if processes > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launch += [f"--nproc_per_node={processes}", "-m", "robustft"]
    cmd = [*launch, "train", str(SMOKE), "--run-dir", str(run_dir), "--device", "cpu"]
    cmd += [f"--set={s}" for s in sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)


def read(run_dir: Path) -> dict[str, Any]:
    """A run directory's metrics rows, result, curve and final trainable weights."""
    run = RunDir(run_dir)
    return {
        "rows": run.read_metrics().rows,
        "result": run.read_result(),
        "curve": run.read_robustness(),
        "weights": load_checkpoint(run.checkpoint)["model"],
    }


def table(one: dict[str, Any], two: dict[str, Any]) -> str:
    """The markdown table comparing a 1-process run (``one``) with a 2-process run (``two``)."""
    rows1, rows2 = one["rows"], two["rows"]
    epochs = " / ".join(str(r["epoch"]) for r in rows1)
    lines = ["| | 1 process | 2 processes |", "|---|---|---|"]

    def losses(rows: Sequence[dict[str, Any]]) -> str:
        return " / ".join(f"{r['train_loss']:.6f}" for r in rows)

    lines.append(f"| train loss, epochs {epochs} | {losses(rows1)} | {losses(rows2)} |")
    relative = " / ".join(
        f"{abs(b['train_loss'] - a['train_loss']) / abs(a['train_loss']):.1e}"
        for a, b in zip(rows1, rows2, strict=True)
    )
    lines.append(f"| relative loss difference | | {relative} |")
    keys = ("train_acc", "val_acc", "forward_passes", "example_forward_passes")
    same = all(a[k] == b[k] for a, b in zip(rows1, rows2, strict=True) for k in keys)

    def accuracies(rows: Sequence[dict[str, Any]]) -> str:
        return " / ".join(f"{percent(r['train_acc'])}, {percent(r['val_acc'])}" for r in rows)

    if same:
        lines.append(
            "| train accuracy, validation accuracy, forward passes | | identical every epoch |"
        )
    else:
        lines.append(
            f"| train, validation accuracy %, epochs {epochs} | {accuracies(rows1)} | "
            f"{accuracies(rows2)} |"
        )
    w1, w2 = one["weights"], two["weights"]
    statistics = [k for k in w1 if k.rsplit(".", 1)[-1] in BATCHNORM_BUFFERS]
    for what, names in (
        ("final weights", [k for k in w1 if k not in statistics]),
        ("BatchNorm running statistics", statistics),
    ):
        if names:
            numbers = sum(w1[k].numel() for k in names)
            worst = max(float((w1[k].float() - w2[k].float()).abs().max()) for k in names)
            lines.append(f"| {what}, largest difference ({numbers:,} numbers) | | {worst:.1e} |")
    r1, r2 = one["result"], two["result"]
    eps = format_eps(r1["eval_eps_max"], r1["norm"])
    keys = ("clean_accuracy", "robust_accuracy", "expected_robustness")

    def headline(result: dict[str, Any]) -> str:
        return " / ".join(percent(result[k]) for k in keys) + " %"

    second = "identical" if all(r1[k] == r2[k] for k in keys) else headline(r2)
    lines.append(
        f"| clean / robust at {eps} / expected robustness ({r1['eval_examples']} test images) | "
        f"{headline(r1)} | {second} |"
    )
    c1, c2 = one["curve"], two["curve"]
    same_curve = c1["correct"] == c2["correct"] and c1["attacked"] == c2["attacked"]
    if same_curve:
        differs = "identical"
    else:
        count = sum(
            a != b for x, y in zip(c1["correct"], c2["correct"], strict=True) for a, b in zip(x, y)
        )
        differs = f"{count} (example, eps) results differ"
    lines.append(f"| robustness curve, example by example | | {differs} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=[*CASES, "all"], default="all")
    parser.add_argument("--workdir", type=Path, help="keep the run directories here")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ddp_tables_"))
    try:
        for case in CASES if args.case == "all" else [args.case]:
            sets = CASES[case]
            one, two = workdir / case / "one", workdir / case / "two"
            train(one, sets, 1)
            train(two, sets, 2)
            print(f"{case} ({torch.__version__}, gloo, 1 thread per process):\n")
            print(table(read(one), read(two)) + "\n", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
