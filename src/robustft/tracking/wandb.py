"""Weights & Biases: ``wandb.init`` with ``log.project`` as the project, the sweep's name
(``log.group``) as the group and the resolved config as the run config. ``WANDB_MODE``
(``offline`` writes only local files, synced later with ``wandb sync``), ``WANDB_DIR`` and the
rest of W&B's environment are honoured; without ``WANDB_DIR`` the files go into the run
directory.

Each epoch's numbers are logged with ``epoch`` as their x-axis (``define_metric``), so a run
resumed with the id that ``tracking.json`` holds (``resume="allow"``) continues the same curves.
At the end: the ``result.json`` numbers and the findings in the run summary, the robustness
curve as a ``wandb.Table`` and as an image.
"""

from __future__ import annotations

import io
import os
from typing import Any

from robustft.run.result import RunResult
from robustft.run.rundir import RunDir
from robustft.tracking.base import Tracker, curve_rows, findings_text, result_summary


class WandbTracker(Tracker):
    name = "wandb"
    extra = "wandb"

    wandb_run: Any = None

    def open(
        self, run: RunDir, config: dict[str, Any], previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        import wandb

        run_id = (previous or {}).get("id")  # None: W&B makes one up
        self.wandb_run = wandb.init(
            project=self.log.project,
            group=self.log.group,
            name=self.run_name(),
            id=None if run_id is None else str(run_id),
            resume="allow",
            dir=os.environ.get("WANDB_DIR") or str(run.root),
            config=config,
        )
        self.wandb_run.define_metric("epoch")
        self.wandb_run.define_metric("*", step_metric="epoch")
        return {"id": self.wandb_run.id, "project": self.log.project, "group": self.log.group}

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.wandb_run.log({**metrics, "epoch": epoch})

    def log_result(self, result: RunResult, curve: Any) -> None:
        import wandb

        self.wandb_run.summary.update(result_summary(result))
        self.wandb_run.summary["findings"] = findings_text(result)
        table = wandb.Table(
            columns=[f"eps ({self.norm})", "accuracy", "attacked"],
            data=[list(row) for row in curve_rows(curve)],
        )
        logged: dict[str, Any] = {"robustness_curve": table, "epoch": self.last_epoch}
        png = self.curve_png(curve)
        if png is not None:
            from PIL import Image

            logged["robustness_curve_plot"] = wandb.Image(Image.open(io.BytesIO(png)))
        self.wandb_run.log(logged)

    def close(self, error: BaseException | None) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=0 if error is None else 1)
            self.wandb_run = None
