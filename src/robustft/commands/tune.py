"""``robustft tune CONFIG --search KEY=DIST(...)``: ASHA search through Ray Tune."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from robustft.tune.spec import TuneSpec
from robustft.utils.text import markdown_table, short_number

HELP = """\
Tune hyperparameters of a run config with ASHA (Ray Tune's ASHAScheduler), as the paper tuned
learning rate and weight decay on RFT-fix's clean validation accuracy. --trials configurations
are sampled (seeded) from the --search distributions; each trial trains an ordinary robustft
run in TUNE_DIR/trials/<run id>/ and reports --metric after every epoch; ASHA stops trials that
fall behind at its rungs (epochs grace, grace*rf, ...), and those run directories are marked
early_stopped.json. At the end: TUNE_DIR/trials.md and trials.csv (the trials, best first) and
TUNE_DIR/best.yaml (the best finished trial's config, ready for robustft train).

Ray Tune is the engine (pip install 'robustft[ray]'): without --address the trials run on a
local Ray instance on this machine, --cpus-per-trial and --gpus-per-trial each (the only
launcher: --launcher ray is accepted for symmetry with robustft sweep). Run the same command
again after an interruption: Ray Tune restores the tuning; unfinished trials resume their run
directories from their checkpoints, finished ones are not run again. Run it again with a larger
--trials to extend a tuning: its trials are kept as they ended (finished or stopped early) and
new ones, the next samples of the same seed, are trained and judged against them.

distributions: loguniform(LOW,HIGH), uniform(LOW,HIGH), randint(LOW,HIGH) (inclusive),
choice(A,B,...). metrics: val_acc (default), val_robust_acc (needs val.robust_every=1),
train_acc, train_loss (--mode min).

examples:
  robustft tune configs/digits_standard.yaml --search 'train.lr=loguniform(1e-5,1e-2)' \\
      --search 'train.weight_decay=loguniform(1e-4,0.1)' --trials 16
  robustft tune configs/paper/vit-cub.yaml --search 'train.lr=loguniform(1e-5,1e-3)' \\
      --trials 32 --address auto --gpus-per-trial 1 --out /shared/tunes/vit-cub
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "tune",
        help="ASHA hyperparameter search through Ray Tune (resumable)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML run config to tune")
    p.add_argument(
        "--search",
        action="append",
        default=[],
        metavar="KEY=DIST(ARGS)",
        help="a searched key, e.g. 'train.lr=loguniform(1e-5,1e-2)' (repeatable)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value for every trial (repeatable)",
    )
    p.add_argument("--trials", type=int, default=16, help="configurations sampled (default 16)")
    p.add_argument("--metric", default="val_acc", help="per-epoch metric (default val_acc)")
    p.add_argument("--mode", choices=["max", "min"], help="default: max (min for train_loss)")
    p.add_argument("--grace", type=int, default=1, help="ASHA grace period in epochs (1)")
    p.add_argument("--reduction-factor", type=int, default=2, help="ASHA reduction factor (2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled configurations")
    p.add_argument("--cpus-per-trial", type=int, default=1, help="default 1")
    p.add_argument("--gpus-per-trial", type=int, default=0, help="0 (default) or 1")
    p.add_argument("--launcher", choices=["ray"], default="ray", help="Ray Tune (the only one)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else local)")
    p.add_argument("--out", help="tune directory (default: tunes/<config name>)")
    p.add_argument("--force", action="store_true", help="start over in a --out of another tuning")
    p.set_defaults(handler=run)


def build_spec(args: argparse.Namespace) -> TuneSpec:
    """The :class:`robustft.tune.spec.TuneSpec` the arguments describe (validated)."""
    return TuneSpec.from_file(
        args.config,
        overrides=args.overrides,
        searches=args.search,
        trials=args.trials,
        metric=args.metric,
        mode=args.mode,
        grace=args.grace,
        reduction=args.reduction_factor,
        seed=args.seed,
        cpus=args.cpus_per_trial,
        gpus=args.gpus_per_trial,
    )


class _Lines:
    """One line per trial epoch on stderr."""

    def __init__(self, metric: str) -> None:
        self.metric = metric

    def __call__(self, trial_id: str, result: dict[str, Any]) -> None:
        from robustft.tune.trials import trial_number

        if result.get("recorded"):  # an earlier trial's epochs, shown when it trained
            return
        number = trial_number(trial_id, 0)
        value = result.get(self.metric)
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        sys.stderr.write(
            f"[trial {number}] {result.get('run_id', '')} epoch {result.get('epoch')} "
            f"{self.metric} {shown}\n"
        )
        sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    from robustft.launchers.ray import require_ray
    from robustft.tune.driver import extension, tune_runs
    from robustft.tune.trials import default_tune_dir

    spec = build_spec(args)
    require_ray()  # a missing Ray is one line before anything starts
    out = Path(args.out) if args.out else default_tune_dir(spec)
    print(
        f"tuning {spec.base().name}: {spec.trials} trials of {', '.join(map(str, spec.searches))}"
        f"; ASHA on {spec.metric} ({spec.mode}), grace {spec.grace}, reduction "
        f"{spec.reduction}, up to {spec.base().train.epochs} epochs; in {out}",
        flush=True,
    )
    grown = extension(spec, out, force=args.force)
    if grown is not None:
        print(
            f"extending the tuning of {grown[0]} trials to {grown[1]}: the {grown[0]} are kept as "
            f"they ended (they report their recorded epochs to ASHA, training nothing) and "
            f"{grown[1] - grown[0]} new ones are sampled",
            flush=True,
        )
    try:
        result = tune_runs(
            spec, out, address=args.address, on_result=_Lines(spec.metric), force=args.force
        )
    except KeyboardInterrupt as err:
        ended = f" ({err})" if str(err) else ""
        print(
            f"robustft: tuning interrupted{ended}; run the same command again to resume it",
            file=sys.stderr,
        )
        return 130
    print(markdown_table(*result.table()))
    counts = result.counts()
    print(
        f"{len(result.trials)} trials: {counts['done']} finished, {counts['early-stopped']} "
        f"stopped early by ASHA, {counts['failed']} failed; table in {result.layout.table_md}"
    )
    best = result.best()
    values = ", ".join(f"{k}={short_number(v)}" for k, v in best.values.items())
    print(f"best: trial {best.number} ({values}), {spec.metric} {short_number(best.metric)}")
    print(f"best config: {result.layout.best} (robustft train {result.layout.best})")
    return 0
