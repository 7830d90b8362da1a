"""``robustft eval RUN``: robustness curve and expected robustness of a trained model."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustft.commands._render import Progress, attack_label
from robustft.config import AUTOATTACK_VERSIONS, SEED_RANGE, valid_seed
from robustft.errors import UserError
from robustft.units import default_eps_step, format_eps, parse_eps
from robustft.utils.text import percent, text_table

if TYPE_CHECKING:
    from robustft.config import RunConfig
    from robustft.data.spec import DataSplits
    from robustft.distributed import World
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
    from robustft.data.splits import check_class_set

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


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What one ``robustft eval`` evaluates with: the arguments given, the run's own ``eval``
    section for the rest (so that by default it reproduces the run's result.json)."""

    attack: str
    steps: int
    norm: str
    eps_max: float
    eps_step: float
    mode: str
    max_examples: int | None
    batch_size: int
    seed: int
    early_stop: bool


def settings(args: argparse.Namespace, config: RunConfig) -> EvalSettings:
    """Validate the arguments and fill what is missing from the run's config."""
    from robustft.training.build import eval_grid

    for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if args.max_examples is not None and args.max_examples < 1:
        raise UserError(f"--max-examples must be >= 1, got {args.max_examples}")
    if args.seed is not None and not valid_seed(args.seed):
        raise UserError(f"--seed must be {SEED_RANGE}, got {args.seed}")
    ecfg = config.eval
    norm = args.norm or config.attack.norm
    upper = 1.0 if norm == "linf" else 1e6
    if args.eps_max is not None:
        eps_max = parse_eps(args.eps_max, name="--eps-max", upper=upper)
        if eps_max == 0:
            raise UserError("--eps-max must be > 0, e.g. 8/255 (eps 0 is the clean accuracy)")
    elif norm != config.attack.norm:
        raise UserError(f"--norm {norm} differs from the run's; pass --eps-max in {norm} units")
    else:
        eps_max = eval_grid(config)[-1]
    if args.eps_step is not None:
        step = parse_eps(args.eps_step, name="--eps-step", upper=upper)
        if step == 0:
            raise UserError("--eps-step must be > 0, e.g. 1/255")
    elif norm != config.attack.norm:  # the run's step is in the other norm's units
        step = default_eps_step(norm, eps_max)
    else:
        step = ecfg.eps_step
    return EvalSettings(
        attack=args.attack or ecfg.attack,
        steps=args.steps if args.steps is not None else ecfg.steps,
        norm=norm,
        eps_max=eps_max,
        eps_step=step,
        mode=args.mode or ecfg.mode,
        max_examples=args.max_examples if args.max_examples is not None else ecfg.max_examples,
        batch_size=args.batch_size or ecfg.batch_size,
        seed=args.seed if args.seed is not None else ecfg.seed,
        early_stop=args.early_stop if args.early_stop is not None else ecfg.early_stop,
    )


def differences(chosen: EvalSettings, config: RunConfig) -> list[str]:
    """The settings that differ from the run's own evaluation (which result.json reports)."""
    from robustft.training.build import eval_grid

    own = EvalSettings(
        attack=config.eval.attack,
        steps=config.eval.steps,
        norm=config.attack.norm,
        eps_max=eval_grid(config)[-1],
        eps_step=config.eval.eps_step,
        mode=config.eval.mode,
        max_examples=config.eval.max_examples,
        batch_size=chosen.batch_size,  # resources, not results
        seed=config.eval.seed,
        early_stop=config.eval.early_stop,
    )
    out = []
    for f in dataclasses.fields(EvalSettings):
        mine, theirs = getattr(chosen, f.name), getattr(own, f.name)
        if mine != theirs:
            if f.name.startswith("eps"):
                mine, theirs = format_eps(mine, chosen.norm), format_eps(theirs, own.norm)
            out.append(f"{f.name} {mine} (run: {theirs})")
    return out


def run(args: argparse.Namespace) -> int:
    from robustft import distributed

    # under torchrun every rank evaluates whole batches of its own; rank 0 reports and writes
    world, device, created = distributed.join(args.device)  # a bad --device fails first
    try:
        return _evaluate(args, world, str(device))
    finally:
        distributed.leave(created)


def _evaluate(args: argparse.Namespace, world: World, device: str) -> int:
    from robustft.robustness.evaluate import robustness_curve
    from robustft.run.load import load_trained_model
    from robustft.run.rundir import run_dir_of, run_state
    from robustft.subset import sample_size
    from robustft.training.build import build_attack, build_data
    from robustft.units import eps_grid
    from robustft.utils.fsio import atomic_write_json

    say = print if world.is_main else _quiet
    model, config, payload = load_trained_model(args.run, device=device)
    chosen = settings(args, config)
    run_dir = run_dir_of(Path(args.run))
    if run_dir is not None:  # a run still training, failed or interrupted: say which epoch
        note = run_state(run_dir).checkpoint_note(payload.get("epoch", "?"), config.train.epochs)
        if note is not None:
            say(f"note: {note}")
    changed = differences(chosen, config)
    if changed:
        say(f"note: not the run's own evaluation settings: {', '.join(changed)}")
    config = with_data_overrides(config, args.data, args.bad_images)
    grid = eps_grid(chosen.eps_max, chosen.eps_step)
    attack = build_attack(chosen.attack, norm=chosen.norm, steps=chosen.steps)
    data = build_data(config)
    check_checkpoint_classes(payload, data, run=args.run, data_given=args.data is not None)
    progress = Progress(label="eval", norm=chosen.norm)
    n = sample_size(data.test, chosen.max_examples)
    if world.is_main:
        progress.on_eval_start(n)
    curve = robustness_curve(
        model,
        data.test,
        attack,
        grid,
        mode=chosen.mode,
        seed=chosen.seed,
        batch_size=chosen.batch_size,
        max_examples=chosen.max_examples,
        progress=progress.on_eval if world.is_main else None,
        world=world,
        early_stop=chosen.early_stop,
    )
    say(curve_table(curve))
    sample = curve.examples or {}
    examples = f"{curve.n_examples} examples" + (
        f" (stratified sample of {sample['of']}, seed {sample['seed']})"
        if sample.get("method", "all") != "all"
        else ""
    )
    say(
        f"expected robustness on [0, {format_eps(chosen.eps_max, chosen.norm)}]: "
        f"{percent(curve.expected_robustness)}% ({attack_label(curve.attack)}, {chosen.norm}, "
        f"{chosen.mode}, {examples}, {curve.seconds:.1f}s)"
    )
    for warning in curve.warnings:
        say(f"warning: {warning}")
    if args.autoattack and world.is_main:  # the reference's evaluation is not sharded: rank 0
        curve = with_autoattack(args, model, config, data, chosen, curve)
    if args.json_path and world.is_main:
        atomic_write_json(args.json_path, curve.to_dict())
        say(f"curve written to {args.json_path}")
    return 0


def _quiet(*args: object, **kwargs: object) -> None:
    """``print`` of the ranks other than 0 of a torchrun evaluation: nothing."""


def with_autoattack(
    args: argparse.Namespace,
    model: Any,
    config: RunConfig,
    data: DataSplits,
    chosen: EvalSettings,
    curve: RobustnessCurve,
) -> RobustnessCurve:
    """Measure AutoAttack (``--autoattack``), print it, store it in the run when it is the
    run's own evaluation budget and data; returns the curve with it attached."""
    from robustft.robustness.autoattack import autoattack_accuracy, label
    from robustft.run.rundir import RunDir
    from robustft.subset import sample_size

    progress = Progress(label="eval", norm=chosen.norm)
    progress.on_stage(label(args.autoattack, chosen.eps_max, chosen.norm))
    n = sample_size(data.test, chosen.max_examples)
    progress.on_eval_start(n)
    measured = autoattack_accuracy(
        model,
        data.test,
        eps=chosen.eps_max,
        norm=chosen.norm,
        version=args.autoattack,
        num_classes=data.num_classes,
        max_examples=chosen.max_examples,
        seed=chosen.seed,
        batch_size=chosen.batch_size,
        progress=progress.on_eval,
    )
    print(
        f"{measured.label()}: {percent(measured.accuracy)}% ({measured.n} examples, seed "
        f"{measured.seed}, {', '.join(measured.attacks)}, {measured.implementation}, "
        f"{measured.seconds:.1f}s); the curve's {attack_label(curve.attack)} at the same eps: "
        f"{percent(curve.robust_accuracy)}%"
    )
    for warning in measured.warnings:
        print(f"warning (AutoAttack): {warning}")
    curve = dataclasses.replace(curve, autoattack=measured.to_dict())
    why_not = _not_stored_because(args, config, chosen, measured.examples)
    if why_not:
        print(f"note: AutoAttack not stored in {args.run}: {why_not}")
    else:
        store_autoattack(Path(args.run), measured.to_dict())
        print(f"AutoAttack stored in {RunDir(Path(args.run)).result} and robustness.json")
    return curve


def _not_stored_because(
    args: argparse.Namespace, config: RunConfig, chosen: EvalSettings, sample: dict[str, Any]
) -> str:
    """Why an AutoAttack number measured on ``sample`` (its ``examples``) does not belong in the
    run's files ('' when it does): it must sit beside the run's own curve, on its examples."""
    from robustft.run.rundir import RunDir
    from robustft.training.build import eval_grid

    if not Path(args.run).is_dir():
        return "a checkpoint file was given, not a run directory"
    if args.data is not None:
        return "evaluated on other data (--data)"
    if chosen.norm != config.attack.norm or chosen.eps_max != eval_grid(config)[-1]:
        return "eps or norm differ from the run's evaluation budget"
    run = RunDir(Path(args.run))
    curve = run.read_robustness()
    if curve is None or not run.result.is_file():
        return "the run has not finished (no robustness curve to store it beside)"
    own = curve.get("examples") or {}
    if own != sample:  # n, seed, how drawn, and which indices
        return (
            f"measured on {_sample_text(sample)}, the run's curve on {_sample_text(own)}; "
            "measure it without --max-examples and --seed to store it"
        )
    return ""


def _sample_text(examples: dict[str, Any]) -> str:
    """``40 examples (seed 0)``: the size and seed of an evaluation's sample."""
    return f"{examples.get('n', '?')} examples (seed {examples.get('seed', '?')})"


def store_autoattack(run_dir: Path, measured: dict[str, Any]) -> None:
    """Add an AutoAttack result to a run's robustness.json (``autoattack``) and result.json
    (``autoattack_accuracy``, ``autoattack``), atomically, holding the run's lock."""
    from robustft.run.result import add_autoattack
    from robustft.run.rundir import RunDir, locked
    from robustft.utils.fsio import atomic_write_json

    with locked(RunDir(run_dir)) as run:
        stored = run.read_robustness()
        if stored is not None:
            stored["autoattack"] = measured
            atomic_write_json(run.robustness, stored)
        result = run.read_result()
        if result is not None:
            add_autoattack(result, measured)
            atomic_write_json(run.result, result)
