"""What a run reports while it works: :class:`Callbacks`, the hooks :func:`robustft.fit` calls.

Kept apart from the training loop so that the CLI's progress bars and other implementers do not
import torch to subclass it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_logger = logging.getLogger(__name__)


class Callbacks:
    """Hooks :func:`fit` calls as it works; each does nothing here. Subclass and override the
    ones you need (the CLI's progress bars, the sweep's epoch recorder, experiment trackers).

    * ``on_start(run_dir, config, history)``: once the run directory is locked and written and,
      when resuming, the checkpoint restored: ``config`` is the resolved config (sections of
      keys, as in ``config.yaml``), ``history`` the ``metrics.jsonl`` rows of the epochs
      already done (empty for a fresh run);
    * ``on_epoch_start(epoch, epochs, eps, batches)``: before epoch ``epoch`` (1-based) of
      ``epochs``, trained at ``eps`` (pixel units, its last step's for per-step schedules);
    * ``on_batch(done, total)``: after each optimizer step of the epoch;
    * ``on_epoch_end(row)``: the epoch's ``metrics.jsonl`` row, once its checkpoint is saved;
    * ``on_stage(name)``: an evaluation stage begins (``"robustness curve"``,
      ``"AutoAttack (standard)"``); ``on_eval_start(total)`` and ``on_eval(done, total)``
      follow, in examples;
    * ``on_note(text)``: a remark on what is evaluated, before it is (:func:`robustft.
      evaluate_run`: the run's checkpoint is not its final model, the settings are not the
      run's own);
    * ``on_result(result, curve)``: ``result.json``'s dict
      (:class:`~robustft.run.result.RunResult`) and the
      :class:`~robustft.robustness.RobustnessCurve`, once both are written;
    * ``on_close(error)``: last, whenever ``on_start`` was called: ``None`` when the run
      finished, else the exception that ends it (a numerical fault, an interrupt).
    """

    def on_start(
        self, run_dir: Path, config: dict[str, Any], history: list[dict[str, Any]]
    ) -> None:
        pass

    def on_epoch_start(self, epoch: int, epochs: int, eps: float, batches: int) -> None:
        pass

    def on_batch(self, done: int, total: int) -> None:
        pass

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        pass

    def on_stage(self, name: str) -> None:
        pass

    def on_eval_start(self, total: int) -> None:
        pass

    def on_eval(self, done: int, total: int) -> None:
        pass

    def on_note(self, text: str) -> None:
        pass

    def on_result(self, result: Mapping[str, Any], curve: Any) -> None:
        pass

    def on_close(self, error: BaseException | None) -> None:
        pass


class CallbackList(Callbacks):
    """Several callbacks as one: every hook is called on each, in order. ``None`` entries are
    left out, so ``CallbackList([user_callbacks, *trackers])`` works when the user gave none;
    objects that are not :class:`Callbacks` subclasses are called for the hooks they have."""

    def __init__(self, callbacks: Iterable[Any]) -> None:
        self.callbacks = [cb for cb in callbacks if cb is not None]

    def _each(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            method = getattr(cb, hook, None)
            if method is not None:
                method(*args)

    def on_start(
        self, run_dir: Path, config: dict[str, Any], history: list[dict[str, Any]]
    ) -> None:
        self._each("on_start", run_dir, config, history)

    def on_epoch_start(self, epoch: int, epochs: int, eps: float, batches: int) -> None:
        self._each("on_epoch_start", epoch, epochs, eps, batches)

    def on_batch(self, done: int, total: int) -> None:
        self._each("on_batch", done, total)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self._each("on_epoch_end", row)

    def on_stage(self, name: str) -> None:
        self._each("on_stage", name)

    def on_eval_start(self, total: int) -> None:
        self._each("on_eval_start", total)

    def on_eval(self, done: int, total: int) -> None:
        self._each("on_eval", done, total)

    def on_note(self, text: str) -> None:
        self._each("on_note", text)

    def on_result(self, result: Mapping[str, Any], curve: Any) -> None:
        self._each("on_result", result, curve)

    def on_close(self, error: BaseException | None) -> None:
        """Closes every callback even when one of them fails (the first failure is raised
        after the others were closed)."""
        failure: Exception | None = None
        for cb in self.callbacks:
            try:
                if hasattr(cb, "on_close"):
                    cb.on_close(error)
            except Exception as err:  # close the rest first: a tracker must not leak its run
                _logger.debug("on_close of %s failed", type(cb).__name__, exc_info=True)
                failure = failure or err
        if failure is not None:
            raise failure
