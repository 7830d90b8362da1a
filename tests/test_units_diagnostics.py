"""eps parsing and formatting; task-adaptation delay."""

from __future__ import annotations

import pytest

from robustft.diagnostics import adaptation_threshold, task_adaptation_delay
from robustft.errors import UserError
from robustft.units import eps_grid, format_eps, parse_eps


@pytest.mark.parametrize(
    ("text", "value"), [("8/255", 8 / 255), ("0", 0.0), ("0.5", 0.5), (4 / 255, 4 / 255)]
)
def test_parse_eps(text: object, value: float) -> None:
    assert parse_eps(text) == value


@pytest.mark.parametrize("text", ["8", "-1/255", "abc", "1/0", "nan", "inf", True, None])
def test_parse_eps_rejects(text: object) -> None:
    with pytest.raises(UserError):
        parse_eps(text)


def test_format_and_grid() -> None:
    assert format_eps(8 / 255) == "8/255"
    assert format_eps(0.1) == "25.5/255"  # l-inf: one unit, also between grid points
    assert format_eps(16 / 255 / 7) == "2.29/255"
    assert format_eps(0.1, "l2") == "0.1" and format_eps(51 / 255, "l2") == "0.2"
    grid = eps_grid(8 / 255)
    assert len(grid) == 9 and grid[0] == 0 and grid[-1] == pytest.approx(8 / 255)
    assert len(eps_grid(4 / 255)) == 5
    with pytest.raises(UserError, match="multiple"):
        eps_grid(8.5 / 255)


def test_adaptation_delay_threshold() -> None:
    assert adaptation_threshold(200) == 0.05  # the paper's 5% with many classes
    assert adaptation_threshold(10) == pytest.approx(0.2)  # 2 x chance for 10 classes
    history = [
        {"epoch": 1, "val_acc": 0.12},
        {"epoch": 2, "val_acc": 0.19},
        {"epoch": 3, "val_acc": 0.6},
    ]
    assert task_adaptation_delay(history, 10) == 3
    assert task_adaptation_delay(history, 100) == 1
    assert task_adaptation_delay(history[:2], 10) is None
