"""TensorBoard: event files in ``<run dir>/tensorboard`` (``tensorboard --logdir runs`` shows
every run), written with ``torch.utils.tensorboard.SummaryWriter``.

Per epoch, each number of the ``metrics.jsonl`` row is a scalar tagged ``epoch/<key>`` at step
= the epoch; the events are flushed every epoch, so a killed run loses none it reported. A
resumed run appends a new event file to the same folder: one curve per tag. At the end:
``result/<key>`` scalars (clean, robust, expected robustness, AutoAttack, delay, times), the
resolved config as hyperparameters (the HParams tab, against the ``result/`` numbers), the
config, findings and robustness curve as text, and the curve plot as an image.
"""

from __future__ import annotations

import io
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


class TensorBoardTracker(Tracker):
    name = "tensorboard"
    extra = "tensorboard"

    writer: Any = None
    config: dict[str, Any] | None = None

    def open(
        self, run: RunDir, config: dict[str, Any], previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run.tensorboard))
        self.config = config
        if previous is None:
            text = yaml.safe_dump(config, sort_keys=False)
            self.writer.add_text("config", "```yaml\n" + text + "```", 0)
            self.writer.flush()
        return {"log_dir": str(run.tensorboard)}

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"epoch/{key}", value, epoch)
        self.writer.flush()

    def log_result(self, result: RunResult, curve: Any) -> None:
        from torch.utils.tensorboard.summary import hparams

        step = self.last_epoch
        summary = {f"result/{k}": v for k, v in result_summary(result).items()}
        experiment, start, end = hparams(flat_config(self.config or {}), summary)
        file_writer = self.writer._get_file_writer()
        for event in (experiment, start, end):
            file_writer.add_summary(event)
        for key, value in summary.items():
            self.writer.add_scalar(key, value, step)
        self.writer.add_text("findings", findings_text(result) or "none", step)
        self.writer.add_text("robustness_curve", curve_markdown(curve, self.norm), step)
        png = self.curve_png(curve)
        if png is not None:
            import numpy as np
            from PIL import Image

            image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            self.writer.add_image("robustness_curve", image, step, dataformats="HWC")
        self.writer.flush()

    def close(self, error: BaseException | None) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
