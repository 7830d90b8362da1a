"""``robustft eval RUN``: robustness curve and expected robustness of a trained model."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any

from robustft.commands._render import Progress, pct, table
from robustft.errors import UserError
from robustft.evaluate import RobustnessCurve
from robustft.units import format_eps, parse_eps

if TYPE_CHECKING:
    from robustft.config import RunConfig
    from robustft.data import DataSplits

HELP = """\
Evaluate a trained run (its directory or a checkpoint file) on its test split: accuracy under
attack at every eps of the grid 0, eps-step, ..., eps-max, and expected robustness (the accuracy
averaged over eps uniform on [0, eps-max], trapezoid rule).

Modes: cascade (default) attacks at each eps only the examples still robust at the previous
one (never higher than independent, much cheaper); independent attacks every example at every
eps (the paper's protocol).

--data evaluates on another dataset (its test/ folder, or a test split carved out as in
training); its classes must be the checkpoint's, with the same names in the same order.

examples:
  robustft eval runs/demo-sched-1a2b3c4d5e
  robustft eval runs/x/checkpoints/last.pt --eps-max 16/255 --mode independent --json curve.json
  robustft eval runs/x --data imagefolder:/data/birds-shifted --bad-images skip
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="robustness curve of a trained run",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--eps-max", help="largest eps, e.g. 8/255 (default: the run's eps_g)")
    p.add_argument("--eps-step", default="1/255", help="grid step (default 1/255)")
    p.add_argument(
        "--attack",
        default="apgd-ce",
        help="apgd-ce (default), apgd-dlr, pgd, fgsm, fgsm-rs, square (gradient-free, l-inf)",
    )
    p.add_argument("--steps", type=int, default=10, help="attack steps (default 10)")
    p.add_argument("--norm", choices=["linf", "l2"], help="threat model (default: the run's)")
    p.add_argument("--mode", choices=["cascade", "independent"], default="cascade")
    p.add_argument("--max-examples", type=int, help="evaluate on the first N test examples")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="seed of the random starts")
    p.add_argument("--json", dest="json_path", metavar="FILE", help="write the curve as JSON")
    p.add_argument("--device", default="auto")
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
    rows = [
        [format_eps(e), pct(a), attacked]
        for e, a, attacked in zip(curve.epsilons, curve.accuracy, curve.attacked)
    ]
    return table(["eps", "accuracy (%)", "attacked"], rows)


def with_data_overrides(config: RunConfig, name: str | None, bad_images: str | None) -> RunConfig:
    """``config`` with ``data.name`` and ``data.bad_images`` replaced where given."""
    data = config.data
    if name is not None:
        data = dataclasses.replace(data, name=name)
    if bad_images is not None:
        data = dataclasses.replace(data, bad_images=bad_images)
    return dataclasses.replace(config, data=data)


def check_checkpoint_classes(
    payload: dict[str, Any], data: DataSplits, *, run: str, data_given: bool
) -> None:
    """Refuse evaluating a checkpoint on a dataset with other classes (see check_class_set)."""
    from robustft.data import check_class_set

    source = f"the checkpoint of {run}"
    dataset = f"dataset {data.spec.name}"
    fix = (
        "evaluate on data with exactly the checkpoint's classes"
        if data_given
        else "restore the data the run was trained on, or pass --data with the same classes"
    )
    names = payload.get("class_names")
    if names is not None:
        check_class_set(names, data.class_names, source=source, dataset=dataset, fix=fix)
    elif int(payload["num_classes"]) != data.num_classes:
        raise UserError(
            f"class mismatch: {source} has {payload['num_classes']} classes but {dataset} "
            f"has {data.num_classes}; {fix}"
        )


def run(args: argparse.Namespace) -> int:
    from robustft.checkpoint import atomic_write_json
    from robustft.evaluate import robustness_curve
    from robustft.train import build_attack, build_data, load_trained_model
    from robustft.units import eps_grid

    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if args.max_examples is not None and args.max_examples < 1:
        raise UserError(f"--max-examples must be >= 1, got {args.max_examples}")
    model, config, payload = load_trained_model(args.run, device=args.device)
    config = with_data_overrides(config, args.data, args.bad_images)
    norm = args.norm or config.attack.norm
    upper = 1.0 if norm == "linf" else 1e6
    eps_max = (
        parse_eps(args.eps_max, name="--eps-max", upper=upper)
        if args.eps_max
        else config.attack.eps
    )
    if eps_max == 0:
        raise UserError("--eps-max: the run was trained at eps 0; pass --eps-max, e.g. 8/255")
    grid = eps_grid(eps_max, parse_eps(args.eps_step, name="--eps-step", upper=upper))
    attack = build_attack(args.attack, norm=norm, steps=args.steps)
    data = build_data(config)
    check_checkpoint_classes(payload, data, run=args.run, data_given=args.data is not None)
    progress = Progress(label="eval")
    n = len(data.test) if args.max_examples is None else min(args.max_examples, len(data.test))
    progress.on_eval_start(n)
    curve = robustness_curve(
        model,
        data.test,
        attack,
        grid,
        mode=args.mode,
        seed=args.seed,
        batch_size=args.batch_size,
        max_examples=args.max_examples,
        progress=progress.on_eval,
    )
    print(curve_table(curve))
    print(
        f"expected robustness on [0, {format_eps(eps_max)}]: {pct(curve.expected_robustness)}% "
        f"({args.attack}, {args.steps} steps, {norm}, {args.mode}, {curve.n_examples} examples, "
        f"{curve.seconds:.1f}s)"
    )
    for warning in curve.warnings:
        print(f"warning: {warning}")
    if args.json_path:
        atomic_write_json(args.json_path, curve.to_dict())
        print(f"curve written to {args.json_path}")
    return 0
