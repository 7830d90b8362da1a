"""Diagnostics of robust fine-tuning: task-adaptation delay.

Ngnawé et al. (2025) define the task-adaptation delay as the first epoch at which validation
clean accuracy exceeds 5%. That threshold presumes many classes (their datasets have 100-257,
so chance is 0.4-1%). When chance accuracy is not far below 5% the definition would fire on
chance alone, so robustft uses ``threshold = max(5%, 2 x chance)``: 5% for 40 or more classes
(the paper's setting, unchanged), 20% for 10 classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PAPER_THRESHOLD = 0.05


def adaptation_threshold(num_classes: int) -> float:
    """Validation accuracy (fraction) that counts as "adapting": max(5%, 2 / num_classes)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return max(PAPER_THRESHOLD, 2.0 / num_classes)


def task_adaptation_delay(
    history: Sequence[Mapping[str, Any]], num_classes: int, key: str = "val_acc"
) -> int | None:
    """First (1-based) epoch whose validation clean accuracy exceeds the threshold.

    Args:
        history: per-epoch rows with ``epoch`` and ``key`` (accuracy as a fraction).
        num_classes: number of classes (sets the threshold, see the module docstring).

    Returns:
        The epoch number, or None if the model never adapted.
    """
    threshold = adaptation_threshold(num_classes)
    for row in history:
        value = row.get(key)
        if value is not None and float(value) > threshold:
            return int(row["epoch"])
    return None
