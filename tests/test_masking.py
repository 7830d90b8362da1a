"""Gradient masking: planted masking is flagged by the checks and exposed by the Square attack.

Planted masking on the digits TinyCNN (conftest ``trained_model``):

* an input quantiser (8 levels, zero gradient almost everywhere);
* saturated logits (``logits * 1e4``: cross-entropy's softmax saturates, so its gradient is 0);
* a saturated softmax output (``softmax(logits * 1e4)``: probabilities, flat almost everywhere).

Also the Square attack's contract (ball, box, determinism, eps = 0) and a cross-check against
``torchattacks.Square``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from robustft import attacks
from robustft.attacks import Square
from robustft.errors import UserError
from robustft.robustness.checks import gradient_free_check, gradient_free_warning
from robustft.robustness.curve import RobustnessCurve
from robustft.robustness.evaluate import robustness_curve
from robustft.units import eps_grid

EPS = 16 / 255  # largest eps of the curves below; the quantiser's half step is 18/255
GRID = eps_grid(EPS, 4 / 255)
N = 64


class _Quantised(nn.Module):
    """Planted masking #1: inputs rounded to 8 levels; ``round`` has zero gradient."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(torch.round(x * 7) / 7)


class _SaturatedLogits(nn.Module):
    """Planted masking #2a: logits * 1e4, so the attack's softmax (in the CE loss) saturates."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x) * 1e4


class _SaturatedSoftmax(_SaturatedLogits):
    """Planted masking #2b: a final softmax at temperature 1e-4 (outputs are probabilities)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).softmax(dim=1)


class _NanGradient(torch.autograd.Function):
    """Identity whose backward pass returns NaN."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return torch.full_like(grad, float("nan"))


class _NanModel(_SaturatedLogits):
    def forward(self, x: Tensor) -> Tensor:
        return self.inner(_NanGradient.apply(x))


class _DetachedModel(_SaturatedLogits):
    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x.detach())  # the input gradient is None


@pytest.fixture(scope="module", autouse=True)
def _single_thread(trained_model: nn.Module) -> Iterator[None]:
    """One intra-op thread in this module: Square runs thousands of tiny forward passes, and on
    a busy 2-core machine a second thread mostly spins (measured 25x slower). The shared model
    is trained before the switch, with the session's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(digits: tuple[Tensor, ...], n: int = N) -> tuple[Tensor, Tensor]:
    _, _, x_test, y_test = digits
    return x_test[:n], y_test[:n]


@pytest.fixture(scope="module")
def curves(trained_model: nn.Module, digits_data: tuple[Tensor, ...]) -> dict[str, RobustnessCurve]:
    """APGD-CE curves (0..16/255, default checks) of the honest and the three masked models."""
    models = {  # wrappers in eval mode: robustness_curve restores the mode it finds
        "honest": trained_model,
        "quantised": _Quantised(trained_model).eval(),
        "saturated_logits": _SaturatedLogits(trained_model).eval(),
        "saturated_softmax": _SaturatedSoftmax(trained_model).eval(),
    }
    attack = attacks.create("apgd-ce", steps=10)
    data = _data(digits_data)
    return {k: robustness_curve(m, data, attack, GRID, seed=0) for k, m in models.items()}


def _figures(curve: RobustnessCurve) -> tuple[float, float]:
    """(APGD accuracy, accuracy once Square also attacks APGD's survivors) on the subset."""
    check = curve.gradient_free_check
    assert check is not None and check["n"] == N and check["queries"] == 300
    return check["gradient_accuracy"], check["combined_accuracy"]


def _has(curve: RobustnessCurve, text: str) -> bool:
    return any(text in w for w in curve.warnings)


# ------------------------------------------------------------------ planted masking


def test_honest_model_no_false_alarm(
    curves: dict[str, RobustnessCurve],
    trained_model: nn.Module,
    digits_data: tuple[Tensor, ...],
) -> None:
    curve = curves["honest"]
    gradient, combined = _figures(curve)
    assert gradient - combined < 0.05  # Square finds (almost) nothing APGD missed
    assert curve.warnings == ()
    # run standalone, Square is weaker than APGD (measured: 12.5% vs 54.7% at 16/255)
    x, y = _data(digits_data)
    apgd_correct = curve.correct_tensor()[-1]
    alone = gradient_free_check(trained_model, x, y, apgd_correct, EPS, standalone=True)
    assert alone["gradient_accuracy"] <= alone["gradient_free_accuracy"]


def test_quantiser_is_flagged_and_exposed(curves: dict[str, RobustnessCurve]) -> None:
    curve = curves["quantised"]
    gradient, combined = _figures(curve)
    assert curve.robust_accuracy > 0.85  # APGD is fooled: the curve is almost flat
    assert gradient - combined > 0.2  # Square exposes it (measured: 92.2% -> 57.8%)
    assert _has(curve, "not near zero")  # masking check at eps 0.5
    assert _has(curve, "gradient-free Square attack") and _has(curve, "gradient masking")
    assert not _has(curve, "probabilities")


def test_saturated_logits_are_flagged_and_exposed(curves: dict[str, RobustnessCurve]) -> None:
    curve = curves["saturated_logits"]
    gradient, combined = _figures(curve)
    assert gradient - combined > 0.2  # measured: 93.8% -> 53.1%
    assert _has(curve, "not near zero") and _has(curve, "gradient-free Square attack")
    assert not _has(curve, "probabilities")  # logits, just scaled: only the attacks tell


def test_saturated_softmax_is_flagged(curves: dict[str, RobustnessCurve]) -> None:
    """Outputs are exactly one-hot almost everywhere, so the margin Square minimises is flat
    too: Square gains only a little. The probabilities and masking checks flag it."""
    curve = curves["saturated_softmax"]
    gradient, combined = _figures(curve)
    assert combined <= gradient
    assert _has(curve, "probabilities") and _has(curve, "not near zero")


def test_dlr_is_not_fooled_by_saturated_logits(
    trained_model: nn.Module, digits_data: tuple[Tensor, ...]
) -> None:
    x, y = _data(digits_data, 32)
    masked = _SaturatedLogits(trained_model).eval()
    gen = torch.Generator().manual_seed(0)
    ce = attacks.create("apgd-ce")(masked, x, y, EPS, generator=gen)
    dlr = attacks.create("apgd-dlr")(masked, x, y, EPS, generator=gen)
    with torch.no_grad():
        acc_ce = float((masked(ce).argmax(1) == y).float().mean())
        acc_dlr = float((masked(dlr).argmax(1) == y).float().mean())
    assert acc_dlr < acc_ce - 0.3


# ------------------------------------------------------------------ the warning rule


@pytest.mark.parametrize(
    ("n", "missed", "warns"),
    [
        (64, 3, False),  # 3 examples but 4.7 points
        (64, 4, True),  # 4 examples, 6.25 points
        (20, 1, False),  # 5 points but 1 example
        (20, 3, True),  # 3 examples, 15 points
        (64, 0, False),
    ],
)
def test_gradient_free_warning_rule(n: int, missed: int, warns: bool) -> None:
    result = {
        "attack": "square",
        "eps": 8 / 255,
        "queries": 300,
        "n": n,
        "attacked": 10,
        "gradient_accuracy": 10 / n,
        "combined_accuracy": (10 - missed) / n,
        "missed_by_gradient": missed,
    }
    warning = gradient_free_warning(result, "apgd-ce")
    assert (warning is not None) == warns
    if warning:
        assert f"broke {missed} of the 10 examples that apgd-ce left correct" in warning
        assert "8/255" in warning and "masking" in warning
    assert gradient_free_warning(None, "pgd") is None
    assert gradient_free_warning({"skipped": "l2"}, "pgd") is None


# ------------------------------------------------------------------ recording


def test_curve_records_the_check_and_round_trips(curves: dict[str, RobustnessCurve]) -> None:
    curve = curves["quantised"]
    data = json.loads(curve.to_json())
    assert set(data["gradient_free_check"]) >= {
        "gradient_accuracy",
        "combined_accuracy",
        "n",
        "eps",
        "queries",
    }
    assert data["gradient_free_check"]["eps"] == pytest.approx(EPS)
    assert RobustnessCurve.from_dict(data) == curve
    del data["gradient_free_check"]  # a file written before the check existed
    assert RobustnessCurve.from_dict(data).gradient_free_check is None


def test_check_can_be_disabled_and_skips_l2(
    trained_model: nn.Module, digits_data: tuple[Tensor, ...]
) -> None:
    data = _data(digits_data, 16)
    off = robustness_curve(
        trained_model, data, attacks.create("fgsm"), [0, 2 / 255], gradient_free_examples=0
    )
    assert off.gradient_free_check is None
    l2 = robustness_curve(trained_model, data, attacks.create("fgsm", norm="l2"), [0, 0.5])
    assert l2.gradient_free_check is not None and "l-inf only" in l2.gradient_free_check["skipped"]


def test_warnings_reach_the_report(tmp_path: Path, curves: dict[str, RobustnessCurve]) -> None:
    from robustft.report import write_report
    from robustft.report.collect import collect_runs
    from test_report import make_run

    run = make_run(tmp_path / "runs", "fix", clean=0.9, robust=0.9)
    result = json.loads((run / "result.json").read_text())
    result["warnings"] = list(curves["quantised"].warnings)
    (run / "result.json").write_text(json.dumps(result))
    write_report(collect_runs(tmp_path / "runs"), tmp_path / "out", plots=False)
    for name in ("report.md", "report.html"):
        text = (tmp_path / "out" / name).read_text()
        assert "eval_warning" in text and "gradient-free Square attack" in text


# ------------------------------------------------------------------ the Square attack


def test_square_contract(trained_model: nn.Module, digits_data: tuple[Tensor, ...]) -> None:
    x, y = _data(digits_data, 32)
    square = attacks.create("square", queries=50)
    assert isinstance(square, Square) and square.describe()["name"] == "square"
    assert attacks.create(**square.describe()) == square

    def run(seed: int, eps: float | Tensor = EPS) -> Tensor:
        return square(trained_model, x, y, eps, generator=torch.Generator().manual_seed(seed))

    x_adv = run(0)
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert torch.equal(x_adv, run(0))  # deterministic given the generator's seed
    assert not torch.equal(x_adv, run(1))
    assert torch.equal(run(0, 0.0), x)  # eps = 0 is a no-op
    per_example = torch.where(torch.arange(32) % 2 == 0, EPS, 0.0)
    mixed = run(0, per_example)
    assert torch.equal(mixed[1::2], x[1::2])
    assert float((mixed - x).abs().amax(dim=(1, 2, 3)).max()) <= EPS + 1e-6


def test_square_starts_from_x_init(
    trained_model: nn.Module, digits_data: tuple[Tensor, ...]
) -> None:
    x, y = _data(digits_data, 8)
    x_init = (x + 0.5).clamp(0, 1)  # outside the ball: projected first
    start = attacks.create("square", queries=1)(trained_model, x, y, EPS, x_init=x_init)
    assert torch.equal(start, torch.min(torch.max(x_init, x - EPS), x + EPS))


def test_curve_restores_each_submodule_mode(
    trained_model: nn.Module, digits_data: tuple[Tensor, ...]
) -> None:
    wrapper = _Quantised(trained_model)  # a new module is in train mode, the inner one is not
    robustness_curve(wrapper, _data(digits_data, 8), attacks.create("fgsm"), [0, 2 / 255])
    assert wrapper.training and not trained_model.training


@pytest.mark.parametrize("wrap", [_Quantised, _NanModel, _DetachedModel])
def test_square_needs_no_gradient(
    wrap: type[nn.Module], trained_model: nn.Module, digits_data: tuple[Tensor, ...]
) -> None:
    x, y = _data(digits_data, 32)
    model = wrap(trained_model).eval()
    x_adv = attacks.create("square", queries=100)(
        model, x, y, EPS, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        before = int((model(x).argmax(1) == y).sum())
        after = int((model(x_adv).argmax(1) == y).sum())
    assert after < before
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6


def test_square_rejects_l2_and_bad_hyperparameters() -> None:
    with pytest.raises(UserError, match="supports only norm"):
        attacks.create("square", norm="l2")
    with pytest.raises(UserError, match="queries"):
        attacks.create("square", queries=0)
    with pytest.raises(UserError, match="p_init"):
        attacks.create("square", p_init=1.5)
    with pytest.raises(UserError, match="steps"):
        attacks.create("square", steps=10)


def test_square_matches_torchattacks(
    trained_model: nn.Module, digits_data: tuple[Tensor, ...]
) -> None:
    """Same order of success as torchattacks' Square at the same budget (measured on 200
    examples at 8/255: 84.5% vs 85.0% robust accuracy at 300 queries, 74.5% vs 76.5% at
    1000)."""
    torchattacks = pytest.importorskip("torchattacks")
    x, y = _data(digits_data, 96)
    eps = 8 / 255
    ours = attacks.create("square", queries=300)(
        trained_model, x, y, eps, generator=torch.Generator().manual_seed(0)
    )
    reference = torchattacks.Square(
        trained_model, norm="Linf", eps=eps, n_queries=300, p_init=0.8, seed=0
    )(x, y)
    with torch.no_grad():
        acc_ours = float((trained_model(ours).argmax(1) == y).float().mean())
        acc_ref = float((trained_model(reference).argmax(1) == y).float().mean())
    clean = float((trained_model(x).argmax(1) == y).float().mean())
    assert acc_ours < clean and acc_ref < clean
    assert abs(acc_ours - acc_ref) <= 0.08
