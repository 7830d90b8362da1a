"""``robustft export RUN --out model.safetensors``: a plain merged model from a trained run."""

from __future__ import annotations

import argparse
from typing import Any

HELP = """\
Write the trained model of a run (its directory or a checkpoint file) as one .safetensors file:
the network's own parameter names (timm/torchvision/transformers), LoRA adapters merged into
the weights, and metadata (model name, classes, input mean/std in pixel units, input size, run
id). Load it with robustft.export.load_exported(path), or with timm/torchvision directly
(normalise [0, 1] images with the stored mean/std first). An hf: model also gets config.json
(and the source's preprocessor_config.json when it had one) beside the file: exported as
DIR/model.safetensors, transformers opens it with
AutoModelForImageClassification.from_pretrained(DIR).

Next to the file it writes a model card, README.md, with the training config, clean/robust
accuracy, expected robustness, the AutoAttack number when measured and the robustness curve
(robustness_curve.png): the layout the Hugging Face Hub reads, so the folder can be uploaded as
it is. A README.md that robustft did not write is never overwritten (--no-card skips the card).

A run still training, failed or interrupted is exported from its last checkpoint: a note names
its epoch (of how many) and the state, and the card says it (failed: with failure.json's
reason) instead of test results.

examples:
  robustft export runs/fast-lora-1a2b3c4d5e --out exports/fast-lora/model.safetensors
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
    p.add_argument(
        "--force", action="store_true", help="overwrite an existing --out file (and its card)"
    )
    p.add_argument("--no-card", action="store_true", help="write no model card (README.md)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from robustft.run.export import export_run

    summary = export_run(args.run, args.out, force=args.force, card=not args.no_card)
    meta = summary.metadata
    if summary.note is not None:
        print(f"note: {summary.note}")
    print(
        f"wrote {summary.path} ({summary.parameters / 1e6:.2f}M parameters in "
        f"{summary.tensors} tensors, {summary.size_bytes / 1e6:.1f} MB; {meta['model']}, "
        f"{meta['num_classes']} classes, trained with mode {meta['trained_mode']})"
    )
    if summary.card is not None:
        print(f"model card: {summary.card} (Hugging Face Hub layout: upload the folder as it is)")
    print(f"load: robustft.export.load_exported({str(summary.path)!r})")
    if summary.transformers_files:
        names = ", ".join(p.name for p in summary.transformers_files)
        folder = str(summary.path.parent)
        if summary.path.name == "model.safetensors":
            print(
                f"transformers: AutoModelForImageClassification.from_pretrained({folder!r}) "
                f"(with {names})"
            )
        else:
            print(
                f"transformers: wrote {names} beside it; name the file model.safetensors for "
                f"AutoModelForImageClassification.from_pretrained({folder!r})"
            )
    return 0
