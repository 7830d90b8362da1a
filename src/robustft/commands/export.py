"""``robustft export RUN --out model.safetensors``: a plain merged model from a trained run."""

from __future__ import annotations

import argparse
from typing import Any

HELP = """\
Write the trained model of a run (its directory or a checkpoint file) as one .safetensors file:
the network's own parameter names (timm/torchvision), LoRA adapters merged into the weights,
and metadata (model name, classes, input mean/std in pixel units, input size, run id). Load it
with robustft.export.load_exported(path), or with timm/torchvision directly (normalise [0, 1]
images with the stored mean/std first).

examples:
  robustft export runs/fast-lora-1a2b3c4d5e --out model.safetensors
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write a run's model as one merged .safetensors file",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--out", required=True, metavar="FILE.safetensors")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from robustft.export import export_run

    summary = export_run(args.run, args.out, force=args.force)
    meta = summary.metadata
    print(
        f"wrote {summary.path} ({summary.parameters / 1e6:.2f}M parameters in "
        f"{summary.tensors} tensors, {summary.size_bytes / 1e6:.1f} MB; {meta['model']}, "
        f"{meta['num_classes']} classes, trained with mode {meta['trained_mode']})"
    )
    print(f"load: robustft.export.load_exported({str(summary.path)!r})")
    return 0
