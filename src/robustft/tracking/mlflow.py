"""MLflow, through ``MlflowClient`` (no global active run, so runs of one process never mix):
the tracking URI is ``MLFLOW_TRACKING_URI`` when set, else MLflow's default; the experiment is
the sweep's name for a sweep's runs (``log.group``), else ``log.project``.

A new run gets the resolved config as parameters (dotted keys) and the run directory as a tag;
each epoch's numbers are metrics at step = the epoch. ``--resume`` reopens the run whose id
``tracking.json`` holds (status back to RUNNING), so an interrupted run is one run with one
curve per metric. At the end: the ``result.json`` numbers as metrics, the findings
(``findings.txt``), the robustness curve as a table (``robustness_curve.md``,
``robustness.json``) and a plot (``robustness_curve.png``) as artifacts; the run ends FINISHED,
FAILED or KILLED (interrupted).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from robustft.run.result import RunResult
from robustft.run.rundir import RunDir
from robustft.tracking.base import (
    Tracker,
    curve_markdown,
    findings_text,
    flat_config,
    result_summary,
)

_PARAMS_PER_BATCH = 100  # MLflow's limit for log_batch
_PARAM_LENGTH = 6000  # MLflow's longest parameter value


class MlflowTracker(Tracker):
    name = "mlflow"
    extra = "mlflow"

    client: Any = None
    run_id: str | None = None

    def open(
        self, run: RunDir, config: dict[str, Any], previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = (previous or {}).get("tracking_uri")
        self.client = MlflowClient(tracking_uri=uri)  # None: MLFLOW_TRACKING_URI or the default
        experiment_name = self.log.group or self.log.project
        if previous and previous.get("run_id"):
            self.run_id = str(previous["run_id"])
            self.client.update_run(self.run_id, status="RUNNING")
            experiment_id = str(previous.get("experiment_id"))
        else:
            experiment = self.client.get_experiment_by_name(experiment_name)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else self.client.create_experiment(experiment_name)
            )
            tags = {"robustft.run_dir": str(run.root.resolve())}
            if self.log.group:
                tags["robustft.sweep"] = self.log.group
            created = self.client.create_run(experiment_id, run_name=self.run_name(), tags=tags)
            self.run_id = created.info.run_id
            params = [
                Param(key, str(value)[:_PARAM_LENGTH]) for key, value in flat_config(config).items()
            ]
            for i in range(0, len(params), _PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=params[i : i + _PARAMS_PER_BATCH])
        return {
            "run_id": self.run_id,
            "experiment_id": experiment_id,
            "experiment": experiment_name,
            "tracking_uri": self.client.tracking_uri,
        }

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self._metrics(metrics, epoch)

    def log_result(self, result: RunResult, curve: Any) -> None:
        self._metrics(result_summary(result), self.last_epoch)
        self.client.log_text(self.run_id, findings_text(result) or "none\n", "findings.txt")
        self.client.log_text(self.run_id, curve_markdown(curve, self.norm), "robustness_curve.md")
        self.client.log_dict(self.run_id, curve.to_dict(), "robustness.json")
        png = self.curve_png(curve)
        if png is not None:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "robustness_curve.png"
                path.write_bytes(png)
                self.client.log_artifact(self.run_id, str(path))

    def close(self, error: BaseException | None) -> None:
        if self.client is None or self.run_id is None:
            return
        if error is None:
            status = "FINISHED"
        else:
            status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        self.client.set_terminated(self.run_id, status)
        self.client = None
