"""Robustness curves, expected robustness, cascade vs independent, sanity warnings."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from robustft import attacks
from robustft.robustness.curve import RobustnessCurve, expected_robustness
from robustft.robustness.evaluate import robustness_curve
from robustft.units import eps_grid


def test_expected_robustness_hand_computed() -> None:
    # ((80+60)/2 + (60+50)/2 + (50+40)/2 + (40+30)/2) / 4 = 51.25 (papers.md, section 3.3)
    grid = [i / 255 for i in range(5)]
    assert expected_robustness(grid, [80, 60, 50, 40, 30]) == pytest.approx(51.25)
    # a flat curve averages to itself; two points give the midpoint
    assert expected_robustness(grid, [70] * 5) == pytest.approx(70)
    assert expected_robustness([0, 8 / 255], [90, 10]) == pytest.approx(50)


def test_expected_robustness_nonuniform_grid_is_area_over_eps() -> None:
    # area = 1*(1+0.5)/2 + 3*(0.5+0.1)/2 = 0.75 + 0.9 = 1.65; / 4 = 0.4125
    assert expected_robustness([0, 1, 4], [1.0, 0.5, 0.1]) == pytest.approx(0.4125)


@pytest.mark.parametrize("grid", [[1 / 255, 2 / 255], [0], [0, 2 / 255, 1 / 255]])
def test_expected_robustness_rejects_bad_grids(grid: list[float]) -> None:
    with pytest.raises(ValueError):
        expected_robustness(grid, [0.5] * len(grid))


@pytest.fixture(scope="module")
def curves(
    trained_model: nn.Module, digits_data: tuple[torch.Tensor, ...]
) -> dict[str, RobustnessCurve]:
    _, _, x_test, y_test = digits_data
    data = (x_test[:200], y_test[:200])
    attack = attacks.create("apgd-ce", steps=10)
    grid = eps_grid(8 / 255)
    return {
        mode: robustness_curve(trained_model, data, attack, grid, mode=mode, seed=3)
        for mode in ("cascade", "independent")
    }


def test_curve_bounds_and_monotone(curves: dict[str, RobustnessCurve]) -> None:
    for curve in curves.values():
        assert len(curve.epsilons) == 9 and curve.epsilons[0] == 0
        assert curve.clean_accuracy > 0.9
        assert all(a <= curve.clean_accuracy for a in curve.accuracy)
        assert curve.robust_accuracy <= curve.expected_robustness <= curve.clean_accuracy
        assert curve.robust_accuracy < curve.clean_accuracy  # the attack does something
    cascade = curves["cascade"]
    assert all(b <= a for a, b in zip(cascade.accuracy, cascade.accuracy[1:]))


def test_cascade_never_above_independent_and_cheaper(curves: dict[str, RobustnessCurve]) -> None:
    cascade, independent = curves["cascade"], curves["independent"]
    c, i = cascade.correct_tensor(), independent.correct_tensor()
    # per example: cascade is the running minimum of independent (same random starts)
    assert torch.equal(c, torch.cummin(i.int(), dim=0).values.bool())
    assert all(a <= b + 1e-12 for a, b in zip(cascade.accuracy, independent.accuracy))
    assert sum(cascade.attacked) < sum(independent.attacked)


def test_curve_json_round_trip(curves: dict[str, RobustnessCurve], tmp_path) -> None:
    curve = curves["cascade"]
    path = tmp_path / "curve.json"
    path.write_text(curve.to_json())
    data = json.loads(path.read_text())
    assert data["expected_robustness"] == curve.expected_robustness
    assert data["attack"]["name"] == "apgd-ce" and data["seed"] == 3
    back = RobustnessCurve.from_dict(data)
    assert back == curve


def test_curve_is_deterministic(
    trained_model: nn.Module, digits_data: tuple[torch.Tensor, ...]
) -> None:
    _, _, x_test, y_test = digits_data
    attack = attacks.create("pgd", steps=5)
    runs = [
        robustness_curve(
            trained_model, (x_test[:64], y_test[:64]), attack, eps_grid(4 / 255), seed=1
        )
        for _ in range(2)
    ]
    assert runs[0].correct == runs[1].correct


def test_model_mode_restored(
    trained_model: nn.Module, digits_data: tuple[torch.Tensor, ...]
) -> None:
    _, _, x_test, y_test = digits_data
    trained_model.train()
    try:
        robustness_curve(
            trained_model, (x_test[:16], y_test[:16]), attacks.create("fgsm"), [0, 2 / 255]
        )
        assert trained_model.training
    finally:
        trained_model.eval()


class _Softmaxed(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).softmax(dim=1)


def test_warns_on_probability_outputs(
    trained_model: nn.Module, digits_data: tuple[torch.Tensor, ...]
) -> None:
    _, _, x_test, y_test = digits_data
    curve = robustness_curve(
        _Softmaxed(trained_model), (x_test[:16], y_test[:16]), attacks.create("fgsm"), [0, 1 / 255]
    )
    assert any("probabilities" in w for w in curve.warnings)


class _Quantised(nn.Module):
    """Planted gradient masking: inputs rounded to 4 levels (zero gradient almost everywhere)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 3) / 3)


def test_masking_check_runs_and_reports(
    trained_model: nn.Module, digits_data: tuple[torch.Tensor, ...]
) -> None:
    _, _, x_test, y_test = digits_data
    curve = robustness_curve(
        trained_model,
        (x_test[:64], y_test[:64]),
        attacks.create("pgd", steps=10),
        [0, 8 / 255],
        masking_check_eps=0.5,
    )
    assert curve.masking_check is not None
    assert curve.masking_check["accuracy"] <= 0.1  # an honest model breaks at a huge eps
    assert not any("masking" in w for w in curve.warnings)


def test_masking_check_flags_quantised_model(
    trained_model: nn.Module, digits_data: tuple[torch.Tensor, ...]
) -> None:
    _, _, x_test, y_test = digits_data
    masked = _Quantised(trained_model)
    curve = robustness_curve(
        masked,
        (x_test[:64], y_test[:64]),
        attacks.create("pgd", steps=10),
        [0, 8 / 255],
        masking_check_eps=0.5,
    )
    assert any("masking" in w for w in curve.warnings)


def test_rejects_bad_grid_and_mode(trained_model: nn.Module, tiny_batch) -> None:
    from robustft.errors import UserError

    with pytest.raises(UserError, match="start at 0"):
        robustness_curve(trained_model, tiny_batch, attacks.create("fgsm"), [1 / 255, 2 / 255])
    with pytest.raises(UserError, match="mode"):
        robustness_curve(
            trained_model, tiny_batch, attacks.create("fgsm"), [0, 1 / 255], mode="cascde"
        )
