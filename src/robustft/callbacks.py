"""What a run reports while it works: :class:`Callbacks`, the hooks :func:`robustft.fit` calls.

Kept apart from the training loop so that the CLI's progress bars and other implementers do not
import torch to subclass it.
"""

from __future__ import annotations

from typing import Any


class Callbacks:
    """Hooks :func:`fit` calls as it works; each does nothing here. Subclass and override the
    ones you need (the CLI's progress bars, the sweep's epoch recorder, experiment trackers).

    * ``on_epoch_start(epoch, epochs, eps, batches)``: before epoch ``epoch`` (1-based) of
      ``epochs``, trained at ``eps`` (pixel units, its last step's for per-step schedules);
    * ``on_batch(done, total)``: after each optimizer step of the epoch;
    * ``on_epoch_end(row)``: the epoch's ``metrics.jsonl`` row, once its checkpoint is saved;
    * ``on_eval_start(total)``, ``on_eval(done, total)``: the final robustness curve, in
      examples.
    """

    def on_epoch_start(self, epoch: int, epochs: int, eps: float, batches: int) -> None:
        pass

    def on_batch(self, done: int, total: int) -> None:
        pass

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        pass

    def on_eval_start(self, total: int) -> None:
        pass

    def on_eval(self, done: int, total: int) -> None:
        pass
