"""``robustft sweep SWEEP.yaml --index I``: the I-th run of the expansion, in this process.

For schedulers that start one process per run themselves, such as Slurm job arrays
(``sbatch --array=0-$((N-1))`` with ``--index $SLURM_ARRAY_TASK_ID``; ``--dry-run`` prints N).
The run has the sweep's semantics, decided from its run directory: finished (``result.json``)
is skipped, a checkpoint is resumed, anything else trained (again). Array tasks run on many
nodes at once, so they do not write ``sweep.db`` (SQLite on a network filesystem is unsafe):
``robustft sweep SWEEP.yaml --collect`` records what their run directories hold afterwards.
"""

from __future__ import annotations

import time
from pathlib import Path

from robustft.callbacks import Callbacks
from robustft.errors import UserError
from robustft.run.rundir import RunDir
from robustft.sweep.driver import RunOutcome
from robustft.sweep.layout import SweepDir
from robustft.sweep.spec import RunSpec, SweepSpec


def pick(runs: list[RunSpec], index: int) -> RunSpec:
    """The run at 0-based ``index`` of the expansion.

    Raises:
        UserError: out of range (the message gives the range).
    """
    if not 0 <= index < len(runs):
        raise UserError(
            f"--index {index}: the sweep has {len(runs)} runs, numbered 0 to {len(runs) - 1}"
        )
    return runs[index]


def run_index(
    spec: SweepSpec,
    sweep_dir: str | Path,
    index: int,
    *,
    runs: list[RunSpec],
    device: str = "auto",
    callbacks: Callbacks | None = None,
) -> tuple[RunSpec, RunOutcome]:
    """Train (or skip, or resume) run ``index`` of ``spec`` in its sweep run directory.

    Raises:
        UserError: a bad index, or the run's own errors (a numerical fault among them).
    """
    from robustft.training.fit import fit

    run = pick(runs, index)
    layout = SweepDir(Path(sweep_dir))
    if not layout.spec.is_file():
        layout.write_spec(spec)
    run_dir = RunDir(layout.run_dir(run.run_id))
    done = run_dir.read_result()
    if done is not None:
        return run, RunOutcome("skipped", result=done)
    start = time.monotonic()
    result = fit(
        run.config,
        run_dir.root,
        resume=run_dir.has_checkpoint(),
        callbacks=callbacks,
        device=device,
    )
    return run, RunOutcome("done", seconds=time.monotonic() - start, result=result)
