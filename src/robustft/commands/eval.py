"""``robustft eval RUN``: robustness curve and expected robustness of a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustft.commands._render import Progress, attack_label
from robustft.config import AUTOATTACK_VERSIONS
from robustft.units import format_eps
from robustft.utils.text import percent, text_table

if TYPE_CHECKING:
    from robustft.robustness.curve import RobustnessCurve

HELP = """\
Evaluate a trained run (its directory or a checkpoint file) on its test split: accuracy under
attack at every eps of the grid 0, eps-step, ..., eps-max, and expected robustness (the accuracy
averaged over eps uniform on [0, eps-max], trapezoid rule).

Modes: cascade (default) attacks at each eps only the examples still robust at the previous
one (never higher than independent, much cheaper); independent attacks every example at every
eps (the paper's protocol).

--data evaluates on another dataset (its test/ folder, or a test split carved out as in
training); its classes must be the checkpoint's, with the same names in the same order.

--norm other than the run's needs --eps-max in its units; the grid step then defaults to 1/255
in linf and eps-max/8 in l2 (--eps-step to choose).

--autoattack [standard|plus] also measures AutoAttack accuracy (the reference implementation,
the RobustBench number) at eps-max on the same examples; on a finished run's own data, eps and
sample (its --max-examples and --seed) it is stored in the run's robustness.json and
result.json (key autoattack), next to the curve; otherwise it is printed with why it was not.

A run still training, failed or interrupted is evaluated from its last checkpoint; a note names
the checkpoint's epoch (of how many) and the run's state (failed: failure.json's reason).

examples:
  robustft eval runs/demo-sched-1a2b3c4d5e
  robustft eval runs/demo-sched-1a2b3c4d5e --autoattack standard
  robustft eval runs/x/checkpoints/last.pt --eps-max 16/255 --mode independent --json curve.json
  robustft eval runs/x --data imagefolder:/data/birds-shifted --bad-images skip
  torchrun --nproc_per_node=4 -m robustft eval runs/x --json curve.json   # batches sharded
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="robustness curve of a trained run",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--eps-max", help="largest eps, e.g. 8/255 (default: the run's eval grid)")
    p.add_argument(
        "--eps-step",
        help="grid step (default: the run's, 1/255 unless changed; with another --norm, 1/255 "
        "in linf and eps-max/8 in l2)",
    )
    p.add_argument(
        "--attack",
        help="apgd-ce, apgd-dlr, pgd, fgsm, fgsm-rs, square (gradient-free, l-inf); "
        "default: the run's eval.attack",
    )
    p.add_argument("--steps", type=int, help="attack steps (default: the run's eval.steps)")
    p.add_argument("--norm", choices=["linf", "l2"], help="threat model (default: the run's)")
    p.add_argument(
        "--mode", choices=["cascade", "independent"], help="default: the run's eval.mode"
    )
    p.add_argument(
        "--max-examples",
        type=int,
        help="evaluate on a seeded, stratified sample of N test examples (default: the run's "
        "eval.max_examples, normally all)",
    )
    p.add_argument("--batch-size", type=int, help="default: the run's eval.batch_size")
    p.add_argument("--seed", type=int, help="seed of the random starts and of the sample")
    p.add_argument(
        "--early-stop",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="settle an example at the first iterate that fools the model (same accuracies for "
        "APGD, fewer passes); --no-early-stop runs every step (default: the run's "
        "eval.early_stop)",
    )
    p.add_argument(
        "--autoattack",
        nargs="?",
        const="standard",
        choices=AUTOATTACK_VERSIONS,
        help="also AutoAttack accuracy at eps-max (standard when no version is given); needs "
        "pip install 'robustft[autoattack]'",
    )
    p.add_argument("--json", dest="json_path", metavar="FILE", help="write the curve as JSON")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:1")
    p.add_argument(
        "--data",
        metavar="NAME",
        help="dataset to evaluate on instead of the run's (data.name), e.g. imagefolder:DIR",
    )
    p.add_argument(
        "--bad-images",
        choices=["refuse", "skip"],
        help="unreadable image files: refuse or skip them (default: the run's data.bad_images)",
    )
    p.set_defaults(handler=run)


def curve_table(curve: RobustnessCurve) -> str:
    norm = str(curve.attack.get("norm", "linf"))
    rows = [
        [format_eps(e, norm), percent(a), attacked]
        for e, a, attacked in zip(curve.epsilons, curve.accuracy, curve.attacked)
    ]
    return text_table([f"eps ({norm})", "accuracy (%)", "attacked"], rows)


class _Progress(Progress):
    """Progress bars on stderr; notes on stdout as they come, before the evaluation."""

    def on_note(self, text: str) -> None:
        print(f"note: {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    from robustft.distributed import env_world
    from robustft.run.rundir import RunDir
    from robustft.training.run_eval import evaluate_run
    from robustft.utils.fsio import atomic_write_json

    # under torchrun every rank evaluates whole batches of its own; rank 0 reports and writes
    main = env_world().is_main
    evaluation = evaluate_run(
        args.run,
        attack=args.attack,
        steps=args.steps,
        norm=args.norm,
        eps_max=args.eps_max,
        eps_step=args.eps_step,
        mode=args.mode,
        max_examples=args.max_examples,
        batch_size=args.batch_size,
        seed=args.seed,
        early_stop=args.early_stop,
        data=args.data,
        bad_images=args.bad_images,
        autoattack=args.autoattack,
        device=args.device,
        progress=_Progress(label="eval"),
    )
    if not main:
        return 0
    chosen, curve = evaluation.settings, evaluation.curve
    print(curve_table(curve))
    sample = curve.examples or {}
    examples = f"{curve.n_examples} examples" + (
        f" (stratified sample of {sample['of']}, seed {sample['seed']})"
        if sample.get("method", "all") != "all"
        else ""
    )
    print(
        f"expected robustness on [0, {format_eps(chosen.eps_max, chosen.norm)}]: "
        f"{percent(curve.expected_robustness)}% ({attack_label(curve.attack)}, {chosen.norm}, "
        f"{chosen.mode}, {examples}, {curve.seconds:.1f}s)"
    )
    for warning in curve.warnings:
        print(f"warning: {warning}")
    measured = evaluation.autoattack
    if measured is not None:
        print(
            f"{measured.label()}: {percent(measured.accuracy)}% ({measured.n} examples, seed "
            f"{measured.seed}, {', '.join(measured.attacks)}, {measured.implementation}, "
            f"{measured.seconds:.1f}s); the curve's {attack_label(curve.attack)} at the same "
            f"eps: {percent(curve.robust_accuracy)}%"
        )
        for warning in measured.warnings:
            print(f"warning (AutoAttack): {warning}")
        if evaluation.stored:
            print(f"AutoAttack stored in {RunDir(Path(args.run)).result} and robustness.json")
        else:
            print(f"note: AutoAttack not stored in {args.run}: {evaluation.not_stored_because}")
    if args.json_path:
        atomic_write_json(args.json_path, curve.to_dict())
        print(f"curve written to {args.json_path}")
    return 0
