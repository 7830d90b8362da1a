"""``robustft schedule``: preview a perturbation schedule before spending GPU hours."""

from __future__ import annotations

import argparse
import json
from typing import Any

from robustft.errors import UserError
from robustft.schedules import GRANULARITIES, AdaptiveSchedule, EpsSchedule, parse_schedule
from robustft.units import format_eps, parse_eps

BAR_WIDTH = 40

DESCRIPTION = """\
Print the per-epoch perturbation eps(t) = alpha(t) * eps_g of a schedule: a table (epoch, eps
in /255 units, eps, alpha) with one '#' bar per epoch, or JSON with --json.

Epochs are 1-based. For hinge(t1=12,t2=37) over 50 epochs, epochs 1-12 train at eps = 0,
epoch 13 at eps_g/25, and epochs 37-50 at eps_g."""

EPILOG = """\
schedules:
  constant                    eps_g throughout (RFT-fix; standard fine-tuning with --eps 0)
  hinge(t1=12,t2=37)          Epsilon-Scheduling: 0 up to t1, linear to eps_g at t2, then eps_g;
                              bare 'hinge' = hinge(t1=0.24,t2=0.74)
  linear(t2=25)               linear warm-up from the start (t1 = 0); bare 'linear' = t2=0.74
  cosine(t1=12,t2=37)         half-cosine ramp between the same hinges
  piecewise(0:0,10:0.5,30:1)  epoch:alpha knots, linear in between, flat outside
  uniform | uniform(seed=3)   alpha ~ U[0,1] drawn per epoch (per step with --granularity step);
                              without a seed, --seed (the run's seed) is used

positions (t1, t2, knot epochs): integers are epochs (12); numbers with a decimal point in
[0, 1] are fractions of the run (0.24 of 50 epochs = epoch 12, rounded to the nearest epoch).

examples:
  robustft schedule hinge --epochs 50 --eps 8/255
  robustft schedule 'hinge(t1=0.24,t2=0.74)' --epochs 20 --eps 4/255
  robustft schedule 'piecewise(0:0,10:0.5,30:1)' --json
  robustft schedule 'linear(t2=25)' --granularity step --steps-per-epoch 100"""


def add_parser(subparsers: Any) -> None:
    """Register the ``schedule`` subcommand."""
    p = subparsers.add_parser(
        "schedule",
        help="preview a perturbation schedule (per-epoch eps table and plot)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", metavar="SPEC", help="schedule text, e.g. 'hinge(t1=12,t2=37)'")
    p.add_argument("--epochs", type=int, default=50, help="training epochs (default: 50)")
    p.add_argument("--eps", default="8/255", help="target eps_g in pixel units (default: 8/255)")
    p.add_argument(
        "--granularity",
        choices=GRANULARITIES,
        default="epoch",
        help="update eps once per epoch (default, the paper's) or at every step",
    )
    p.add_argument(
        "--steps-per-epoch",
        type=int,
        default=100,
        help="steps per epoch for the first-step column with --granularity step (default: 100)",
    )
    p.add_argument("--seed", type=int, default=0, help="run seed for 'uniform' (default: 0)")
    p.add_argument("--json", action="store_true", help="print a JSON list of {epoch, eps, alpha}")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build the bound schedule and print it as a table or JSON."""
    if args.steps_per_epoch < 1:
        raise UserError(f"--steps-per-epoch must be >= 1, got {args.steps_per_epoch}")
    bound = EpsSchedule(
        parse_schedule(args.spec),
        eps=parse_eps(args.eps, name="--eps"),
        epochs=args.epochs,
        granularity=args.granularity,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(rows(bound)))
    else:
        print(render_table(bound, args.steps_per_epoch))
        if isinstance(bound.schedule, AdaptiveSchedule):
            print(
                f"note: {bound.schedule} chooses T1 during training from validation accuracy; "
                "until then eps is 0, as shown"
            )
    return 0


def rows(bound: EpsSchedule) -> list[dict[str, Any]]:
    """One ``{"epoch", "eps", "alpha"}`` dict per epoch (the value at each epoch's end)."""
    return [
        {"epoch": e, "eps": bound.eps_at(e, 0, 1), "alpha": bound.alpha_at(e, 0, 1)}
        for e in range(1, bound.epochs + 1)
    ]


def render_table(bound: EpsSchedule, steps_per_epoch: int = 100) -> str:
    """The aligned table with a '#' bar proportional to alpha, plus a summary line."""
    step = bound.granularity == "step"
    lines = [
        f"schedule {bound.schedule}: eps_g = {format_eps(bound.eps)} = {bound.eps:.6f}, "
        f"{bound.epochs} epochs, eps updated once per {bound.granularity}",
        _header(step, steps_per_epoch),
    ]
    data = rows(bound)
    for row in data:
        first = ""
        if step:
            first_eps = bound.eps_at(row["epoch"], 0, steps_per_epoch)
            first = f"{first_eps * 255:10.2f}  "
        bar = "#" * round(row["alpha"] * BAR_WIDTH)
        lines.append(
            f"{row['epoch']:5d}  {first}{row['eps'] * 255:8.2f}  {row['eps']:8.6f}  "
            f"{row['alpha']:6.4f}  |{bar}"
        )
    lines.append(_summary(data))
    return "\n".join(lines)


def _header(step: bool, steps_per_epoch: int) -> str:
    first = f"{'first/255':>10}  " if step else ""
    last = "last/255" if step else "eps/255"
    scale = f"0{' ' * (BAR_WIDTH - 2)}1"
    text = f"{'epoch':>5}  {first}{last:>8}  {'eps':>8}  {'alpha':>6}  |{scale}"
    if step:
        text += f"  ({steps_per_epoch} steps per epoch)"
    return text


def _summary(data: list[dict[str, Any]]) -> str:
    zero = sum(1 for r in data if r["alpha"] == 0)
    full = sum(1 for r in data if r["alpha"] == 1)
    return (
        f"{zero} epochs at eps = 0, {len(data) - zero - full} in between, "
        f"{full} at eps_g (alpha = 1)"
    )
