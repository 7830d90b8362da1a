"""``robustft train CONFIG``: robust fine-tuning of one run, then its robustness curve."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from robustft.commands._render import Progress
from robustft.config import add_log_backends, load_config
from robustft.errors import PeerFailed, UserError
from robustft.run.result import RunResult
from robustft.run.rundir import RunDir, default_run_dir
from robustft.units import format_eps
from robustft.utils.text import percent, text_table

HELP = """\
Fine-tune a pretrained backbone with adversarial training under an eps schedule, checkpoint
every epoch, then evaluate the robustness curve on the test split (APGD-CE 10 steps on the
1/255 grid up to eps_g by default) and write result.json.

examples:
  robustft train configs/digits_sched.yaml
  robustft train configs/digits_sched.yaml --set train.epochs=5 --set attack.eps=4/255
  robustft train configs/digits_sched.yaml --run-dir runs/mine --resume
  torchrun --nproc_per_node=4 -m robustft train configs/digits_sched.yaml   # 4 GPUs, one run
  robustft train configs/smoke.yaml --log tensorboard --log mlflow
  robustft train configs/smoke.yaml --set eval.autoattack=standard

Under torchrun (docs/scaling.md) train.batch_size is the global batch, split across the
processes; rank 0 writes the run directory and prints; --max-restarts resumes by itself.
"""

LOG_HELP = (
    "experiment tracking besides metrics.jsonl: tensorboard, mlflow or wandb (repeatable; "
    "added to the config's log.backends; each needs its extra, e.g. "
    "pip install 'robustft[tensorboard]')"
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="robust fine-tuning of one run",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value with a dotted key, e.g. --set train.epochs=10 (repeatable)",
    )
    p.add_argument("--run-dir", help="run directory (default: runs/<name>-<config hash>)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite a run dir holding another run")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1")
    p.add_argument("--log", action="append", default=[], metavar="BACKEND", help=LOG_HELP)
    p.set_defaults(handler=run)


def summary(result: RunResult) -> str:
    """The end-of-run table."""
    eps = format_eps(result["eval_eps_max"], result.get("norm", "linf"))
    rows = [
        ["clean accuracy (%)", percent(result["clean_accuracy"])],
        [f"robust accuracy at {eps} (%)", percent(result["robust_accuracy"])],
        [f"expected robustness [0, {eps}] (%)", percent(result["expected_robustness"])],
        *autoattack_rows(result),
        ["task-adaptation delay (epoch)", result["adaptation_delay"] or "never"],
        ["training time (s)", f"{result['train_seconds']:.1f}"],
        ["evaluation time (s)", f"{result['eval_seconds']:.1f}"],
    ]
    return text_table(["metric", "value"], rows)


def autoattack_rows(result: RunResult) -> list[list[Any]]:
    """The summary row of the AutoAttack number, when the run measured it."""
    measured = result.get("autoattack")
    if not measured or result.get("autoattack_accuracy") is None:
        return []
    from robustft.robustness.autoattack import label

    name = label(measured["version"], measured["eps"], measured.get("norm", "linf"))
    return [[f"{name} (%), {measured['n']} examples", percent(result["autoattack_accuracy"])]]


def print_findings(result: RunResult, label: str = "") -> None:
    """Diagnostics and evaluation warnings of a run, one line each."""
    prefix = f"[{label}] " if label else ""
    for f in result.get("findings", []):
        print(f"{prefix}diagnosis {f['code']}: {f['message']} -> {f['suggestion']}")
    for warning in result.get("warnings", []):
        print(f"{prefix}warning: {warning}")


def run(args: argparse.Namespace) -> int:
    from robustft.distributed import env_world

    main = env_world().is_main  # under torchrun, rank 0 alone reports
    try:
        config = add_log_backends(load_config(args.config, args.overrides), args.log)
    except UserError as err:
        if main:
            raise
        raise PeerFailed(str(err)) from None  # rank 0 prints the same line
    from robustft.training.fit import fit

    run_dir = args.run_dir or default_run_dir(config)
    if main and args.resume and not RunDir(Path(run_dir)).has_checkpoint():
        print(f"note: nothing to resume in {run_dir} (no checkpoint yet): starting at epoch 1")
    result = fit(
        config,
        run_dir,
        resume=args.resume,
        force=args.force,
        callbacks=Progress(label=config.name, norm=config.attack.norm),
        device=args.device,
    )
    if main:
        print(summary(result))
        print_findings(result)
        print(f"run directory: {run_dir}")
    return 0
