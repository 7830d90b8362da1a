"""``robustft sweep SWEEP.yaml``: expand a grid of runs, run or resume them, show their status."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from robustft.commands._render import Progress
from robustft.errors import UserError
from robustft.launchers import list_launchers
from robustft.sweep.driver import RunOutcome, collect, run_sweep, tracked_runs
from robustft.sweep.layout import SweepDir, plan, read_status, resolve_sweep_dir
from robustft.sweep.spec import RunSpec, expand, load_sweep, short_keys, show_value
from robustft.sweep.store import StoredRun
from robustft.units import format_eps
from robustft.utils.process import sigterm_as_interrupt
from robustft.utils.text import percent, text_table

HELP = """\
Expand a sweep file (a base config, named methods and a grid of dotted keys) into runs, then
train and evaluate every run not finished yet, one at a time in this process or N at a time in
worker processes (--jobs N, each with its own GPU in turn when there are several), or as tasks
of a Ray cluster (--launcher ray). Re-running a sweep skips finished runs, resumes interrupted
ones from their checkpoints and retries failed ones. Everything is recorded in
SWEEP_DIR/sweep.db (SQLite: runs and per-epoch metrics), written by this process alone; run
directories are SWEEP_DIR/runs/<run id>.

Ray: every run is a task with --cpus-per-run CPUs and --gpus-per-run GPUs (several: torchrun
inside the task); --out must be on a filesystem every node sees. A task whose node died is
retried and resumes from its checkpoint. Slurm arrays: --index I runs only the I-th run
(0-based; --dry-run prints the count) and leaves sweep.db alone; --collect records the run
directories in it afterwards. See docs/scaling.md.

sweep file:
  name: demo                          # default sweep directory: sweeps/<name>
  base: ../digits_sched.yaml          # run config (relative to the sweep file) or a mapping
  set: {train.epochs: 15}             # optional: overrides for every run
  methods:                            # optional: a run's name = its method
    standard: {attack.eps: 0, attack.schedule: constant}
    sched: {attack.schedule: "hinge(t1=0.24,t2=0.74)"}
  grid:                               # Cartesian product of dotted keys
    train.seed: [0, 1, 2]

examples:
  robustft sweep configs/sweeps/demo.yaml --dry-run
  robustft sweep configs/sweeps/demo.yaml --jobs 2
  robustft sweep configs/sweeps/demo.yaml --log mlflow
  robustft sweep configs/sweeps/demo.yaml --status
  robustft sweep --status sweeps/demo
  robustft sweep configs/sweeps/demo.yaml --launcher ray --address auto --gpus-per-run 1 \
      --out /shared/sweeps/demo
  robustft sweep configs/sweeps/demo.yaml --index $SLURM_ARRAY_TASK_ID --out /shared/sweeps/demo
  robustft sweep configs/sweeps/demo.yaml --collect --out /shared/sweeps/demo

exit codes: 0 all runs done, 1 a run failed, 2 bad input, 130 interrupted (re-run to resume).
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a grid of runs (resumable, N at a time) and show its status",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", help="sweep YAML file; with --status also a sweep directory")
    p.add_argument("--jobs", "-j", type=int, default=1, help="local runs at a time (default 1)")
    p.add_argument("--out", help="sweep directory (default: sweeps/<name>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="list the runs, train nothing")
    mode.add_argument("--status", action="store_true", help="show done/running/failed runs")
    mode.add_argument(
        "--collect",
        action="store_true",
        help="record what the run directories hold in sweep.db (after --index runs)",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:1")
    p.add_argument(
        "--launcher",
        choices=list_launchers(),
        default="local",
        help="local: this process or --jobs workers (default); ray: Ray tasks",
    )
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else local)")
    p.add_argument("--cpus-per-run", type=int, help="Ray: CPUs of each run's task (default 1)")
    p.add_argument("--gpus-per-run", type=int, help="Ray: GPUs of each run's task (default 0)")
    p.add_argument(
        "--index", type=int, metavar="I", help="run only the I-th run (0-based), e.g. in arrays"
    )
    p.add_argument(
        "--log",
        action="append",
        default=[],
        metavar="BACKEND",
        help="experiment tracking of every run: tensorboard, mlflow or wandb (repeatable); the "
        "runs are grouped under the sweep's name (MLflow experiment, W&B group)",
    )
    p.set_defaults(handler=run)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Printer:
    """Sweep events as one line each on ``stream`` (stderr by default)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def _line(self, run: RunSpec, total: int, text: str) -> None:
        self.stream.write(f"[{run.index + 1}/{total}] {run.label} {text}\n")
        self.stream.flush()

    def on_run_start(self, run: RunSpec, total: int, resume_after: int) -> None:
        how = f"resumed after epoch {resume_after}" if resume_after else "started"
        self._line(run, total, f"({run.run_id}) {how}")

    def on_epoch(self, run: RunSpec, total: int, row: Mapping[str, Any]) -> None:
        epochs = run.config.train.epochs
        self._line(
            run,
            total,
            f"epoch {row['epoch']}/{epochs} eps {format_eps(row['eps'], run.config.attack.norm)} "
            f"loss {row['train_loss']:.3f} val {percent(row['val_acc'])}%",
        )

    def on_run_end(self, run: RunSpec, total: int, outcome: RunOutcome) -> None:
        if outcome.status == "done" and outcome.result is not None:
            r = outcome.result
            text = (
                f"done in {_duration(outcome.seconds)}: clean {percent(r['clean_accuracy'])}% "
                f"robust {percent(r['robust_accuracy'])}% "
                f"expected robustness {percent(r['expected_robustness'])}%"
            )
        elif outcome.status == "skipped":
            text = "skipped (finished earlier)"
        elif outcome.status == "busy":
            text = "left alone: another live process is running it"
        else:
            text = f"FAILED: {outcome.error}"
        self._line(run, total, text)


def _grid_headers(records: Sequence[StoredRun]) -> list[str]:
    keys: list[str] = []
    for rec in records:
        keys += [k for k in rec.grid if k not in keys]
    return keys


def status_table(records: Sequence[StoredRun]) -> str:
    """The ``--status`` table: one row per run, then counts and the errors of failed runs."""
    keys = _grid_headers(records)
    names = short_keys(keys)
    headers = ["#", "run id", "method", *(names[k] for k in keys), "status", "epochs", "time"]
    headers += ["clean %", "robust %", "exp. rob. %"]
    rows = []
    for rec in records:
        position = "-" if rec.position is None else rec.position + 1
        epochs = f"{rec.epochs}/{rec.config.get('train', {}).get('epochs', '?')}"
        rows.append(
            [
                position,
                rec.id,
                rec.method,
                *(show_value(rec.grid[k]) if k in rec.grid else "-" for k in keys),
                rec.shown_status,
                epochs,
                _duration(rec.elapsed()),
                percent(rec.clean_accuracy),
                percent(rec.robust_accuracy),
                percent(rec.expected_robustness),
            ]
        )
    lines = [text_table(headers, rows), counts_line(records)]
    lines += [f"failed {rec.id} ({rec.method}): {rec.error}" for rec in records if rec.error]
    if any(rec.position is None for rec in records):
        lines.append("runs numbered '-' are no longer in the sweep file (kept in runs/)")
    return "\n".join(lines)


def counts_line(records: Sequence[StoredRun]) -> str:
    statuses = [rec.shown_status for rec in records]
    order = ("done", "running", "interrupted", "failed", "pending")
    parts = [f"{statuses.count(s)} {s}" for s in order if statuses.count(s) or s != "interrupted"]
    return f"{len(records)} runs: " + ", ".join(parts)


def show_status(
    sweep_dir: Path, runs: Sequence[RunSpec] | None = None, source: str | None = None
) -> int:
    """Print the ``--status`` table of ``sweep_dir``: with ``runs`` (the expansion of the sweep
    file ``source`` as it is now) the file's runs, recorded or not yet, then the recorded runs
    no longer in it; without, what ``sweep.db`` holds."""
    status = read_status(sweep_dir, runs, source=source)
    print(f"sweep {sweep_dir}")
    print(status_table(status.records))
    if status.unrecorded:
        print(
            f"{len(status.unrecorded)} runs finished in {SweepDir(sweep_dir).runs} are not "
            f"recorded in sweep.db yet (--index runs, {', '.join(status.unrecorded)}): record "
            f"them with `robustft sweep {source or 'SWEEP.yaml'} --collect --out {sweep_dir}`"
        )
    return 0


def dry_run(runs: Sequence[RunSpec], sweep_dir: Path) -> str:
    """The planned runs and what re-running would do with each (new, resume, skip)."""
    keys = list(runs[0].grid) if runs else []
    names = short_keys(keys)
    shown = {"skip": "skip (finished)", "train": "train"}
    rows = []
    for planned in plan(runs, sweep_dir):
        run = planned.run
        action = shown.get(planned.action, f"resume after epoch {planned.epochs_done}")
        grid = [show_value(run.grid[k]) for k in keys]
        rows.append([run.index + 1, run.index, run.run_id, run.method, *grid, action])
    headers = ["#", "--index", "run id", "method", *(names[k] for k in keys), "plan"]
    out = [text_table(headers, rows)]
    out += [f"{run.label} also stands for: {', '.join(run.aliases)}" for run in runs if run.aliases]
    return "\n".join(out)


def _check_arguments(args: argparse.Namespace) -> None:
    """One line for options that do not go together."""
    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    ray_only = [
        name
        for name, value in (
            ("--address", args.address),
            ("--cpus-per-run", args.cpus_per_run),
            ("--gpus-per-run", args.gpus_per_run),
        )
        if value is not None
    ]
    if args.launcher == "local" and ray_only:
        raise UserError(f"{ray_only[0]} is for --launcher ray (the local launcher uses --jobs)")
    if args.launcher == "ray" and args.jobs > 1:
        raise UserError(
            "--jobs is for the local launcher; Ray runs as many runs as the cluster has room for "
            "(--cpus-per-run, --gpus-per-run)"
        )
    if args.index is not None and (args.launcher == "ray" or args.jobs > 1 or args.collect):
        raise UserError("--index runs one run in this process: drop --launcher, --jobs, --collect")


def _launcher(args: argparse.Namespace, runs: int) -> Any:
    """The launcher the options ask for (None: sequential in this process), announced."""
    if args.launcher == "ray":
        from robustft.launchers.ray import RayLauncher

        cpus, gpus = args.cpus_per_run or 1, args.gpus_per_run or 0
        where = args.address or "RAY_ADDRESS or a local instance"
        print(f"Ray ({where}): each run a task of {cpus} CPU(s) and {gpus} GPU(s)", flush=True)
        return RayLauncher(args.address, cpus_per_run=cpus, gpus_per_run=gpus)
    if args.jobs == 1:
        return None
    from robustft.launchers.local import LocalLauncher

    local = LocalLauncher(min(args.jobs, runs), args.device)
    plural = "s" if local.threads > 1 else ""
    gpus = f", each on its own GPU in turn ({', '.join(local.gpus)})" if local.gpus else ""
    print(f"{local.jobs} runs at a time, {local.threads} thread{plural} each{gpus}", flush=True)
    return local


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    sweep_dir = resolve_sweep_dir(args.target, out=args.out, status=args.status)
    if args.status and Path(args.target).is_dir():
        return show_status(sweep_dir)
    spec = load_sweep(args.target)
    if args.status:  # the runs of the file as it is now, recorded or not
        return show_status(sweep_dir, expand(spec), args.target)
    # --log and the sweep's name as log.group, on every path (run_sweep, --index)
    runs = tracked_runs(spec, args.log)
    planned = spec.planned_runs()
    collapsed = (
        f"; {planned - len(runs)} duplicate configs collapsed" if planned > len(runs) else ""
    )
    print(
        f"sweep {spec.name}: {len(runs)} runs ({len(spec.method_settings())} methods x "
        f"{spec.grid_points()} grid points{collapsed}) in {sweep_dir}"
    )
    if args.index is not None:
        from robustft.sweep.index import pick

        pick(runs, args.index)  # a bad index fails before anything else
    if args.dry_run:
        print(dry_run(runs if args.index is None else [runs[args.index]], sweep_dir))
        print(
            f"{len(runs)} runs: --index 0 to {len(runs) - 1} (Slurm: sbatch "
            f"--array=0-{len(runs) - 1} ... --index $SLURM_ARRAY_TASK_ID)"
        )
        return 0
    if args.collect:
        summary = collect(spec, sweep_dir, runs)
        show_status(sweep_dir, runs, args.target)
        print(f"recorded {summary.skipped} finished runs of {summary.total} from {sweep_dir}")
        return 0
    if args.index is not None:
        return run_one(args, spec, sweep_dir, runs)
    launcher = _launcher(args, len(runs))
    start = time.perf_counter()
    with sigterm_as_interrupt():
        summary = run_sweep(
            spec, sweep_dir, device=args.device, events=Printer(), runs=runs, launcher=launcher
        )
    show_status(sweep_dir, runs, args.target)
    print(
        f"this invocation: {summary.done} trained, {summary.skipped} skipped, "
        f"{summary.failed} failed, {summary.busy} left to other processes "
        f"in {_duration(time.perf_counter() - start)}"
    )
    return 0 if summary.ok else 1


def run_one(args: argparse.Namespace, spec: Any, sweep_dir: Path, runs: list[RunSpec]) -> int:
    """``--index I``: train (skip, resume) the I-th run here, without touching sweep.db."""
    from robustft.commands.train import print_findings, summary
    from robustft.sweep.index import run_index

    run = runs[args.index]
    label = f"[{args.index + 1}/{len(runs)}] {run.label} ({run.run_id})"
    print(f"{label} in {SweepDir(sweep_dir).run_dir(run.run_id)}", flush=True)
    progress = Progress(label=run.method, norm=run.config.attack.norm)
    with sigterm_as_interrupt():
        _, outcome = run_index(
            spec, sweep_dir, args.index, runs=runs, device=args.device, callbacks=progress
        )
    if outcome.status == "skipped":
        print(f"{label} skipped (finished earlier)")
    elif outcome.result is not None:
        print(summary(outcome.result))
        print_findings(outcome.result, run.method)
    return 0
