"""TODO docstring."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robustft.callbacks import Callbacks
from robustft.run.rundir import RunDir
from robustft.tune.spec import METRICS, trial_config


class _Report(Callbacks):
    """A trial's callbacks: every finished epoch's metric goes to Ray Tune (the checkpoint of
    that epoch is already on disk, so a trial stopped here loses nothing), except the last
    epoch's, which is sent once the final evaluation is written. ASHA may stop a trial at any
    report, also at the last epoch (a trial resumed past a rung it was never judged at is
    judged at its next report, whatever the epoch): reported before the evaluation, such a
    trial lost its result after training every epoch and was listed as early-stopped."""

    def __init__(self, metric: str, run_id: str, epochs: int) -> None:
        self.metric, self.run_id, self.epochs = metric, run_id, epochs
        self.last: dict[str, Any] | None = None  # the last epoch's row, sent after the result

    def on_start(
        self, run_dir: Path, config: dict[str, Any], history: list[dict[str, Any]]
    ) -> None:
        if history and int(history[-1]["epoch"]) >= self.epochs:  # resumed for its evaluation
            self.last = history[-1]

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        if int(row["epoch"]) >= self.epochs:
            self.last = row
        else:
            self._send(row)

    def on_result(self, result: Mapping[str, Any], curve: Any) -> None:
        if self.last is not None:
            self._send(self.last)

    def replay(self, run: RunDir) -> None:
        """Report the recorded epochs of a trial that an earlier tuning finished or stopped
        (one this tuning extends), marked ``recorded``: ASHA's rungs get its values, and it
        does not train again."""
        for row in run.read_metrics().rows:
            self._send(row, recorded=True)

    def _send(self, row: dict[str, Any], *, recorded: bool = False) -> None:
        from ray import tune

        value = row.get(self.metric)
        if value is None or not math.isfinite(float(value)):
            value = -math.inf if METRICS[self.metric] == "max" else math.inf
        report = {self.metric: float(value), "epoch": int(row["epoch"]), "run_id": self.run_id}
        tune.report({**report, "recorded": recorded})


def run_trial(params: dict[str, Any]) -> None:
    """The Ray Tune trainable: train (or resume) the trial's run directory."""
    import torch

    from robustft.training.fit import fit

    setup = params["robustft"]
    values = {key: params[key] for key in setup["keys"]}
    config = trial_config(setup["config"], values)
    run_dir = Path(setup["trials"]) / config.run_id()
    torch.set_num_threads(int(setup["cpus"]))
    device = "cuda" if setup["gpus"] else "cpu"
    report = _Report(setup["metric"], config.run_id(), config.train.epochs)
    run = RunDir(run_dir)
    if run.result.is_file() or run.early_stopped.is_file():
        report.replay(run)  # a trial of the tuning this one extends: kept as it ended
        return
    fit(config, run_dir, resume=True, callbacks=report, device=device)
