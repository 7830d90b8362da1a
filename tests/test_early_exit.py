"""Evaluation's early exit: an example misclassified at any iterate is settled there.

On fixed seeds the per-example results must be those of the full attack (APGD: identical;
PGD: the full attack's final-point verdicts, or'ed with every intermediate iterate's), the
verdicts must agree with a fresh forward pass, random starts must not depend on which examples
remain, and the passes counted through the model (robustft.cost) must be fewer.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustft import attacks
from robustft.attacks.base import misclassified
from robustft.cost import count_passes
from robustft.robustness.evaluate import robustness_curve

EPS = {"linf": 8 / 255, "l2": 1.0}
N = 128  # test images


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _curve_pair(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], attack, mode: str):
    grid = [0.0, EPS[attack.norm] / 2, EPS[attack.norm]]
    kwargs = {"mode": mode, "seed": 1, "masking_check_examples": 0, "gradient_free_examples": 0}
    full = robustness_curve(model, data, attack, grid, early_stop=False, **kwargs)
    early = robustness_curve(model, data, attack, grid, early_stop=True, **kwargs)
    return full, early


def _example_passes(curve) -> int:
    return curve.passes["example_forward_passes"] + curve.passes["example_backward_passes"]


@pytest.mark.parametrize("mode", ["cascade", "independent"])
@pytest.mark.parametrize(
    ("name", "norm"), [("apgd-ce", "linf"), ("apgd-dlr", "linf"), ("apgd-ce", "l2")]
)
def test_apgd_curve_identical_with_fewer_passes(
    trained_model: nn.Module, digits_data: tuple[torch.Tensor, ...], name, norm, mode
) -> None:
    """APGD already returns a fooling iterate when it finds one: early exit changes no bit."""
    _, _, x_test, y_test = digits_data
    attack = attacks.create(name, norm=norm, steps=10)
    full, early = _curve_pair(trained_model, (x_test[:N], y_test[:N]), attack, mode)
    assert early.correct == full.correct
    assert early.accuracy == full.accuracy
    assert early.early_stop is True and full.early_stop is False
    assert early.accuracy[-1] < early.accuracy[0]  # the attack broke some examples
    assert _example_passes(early) < _example_passes(full)


@pytest.mark.parametrize("mode", ["cascade", "independent"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_curve_never_above_full_with_fewer_passes(
    trained_model: nn.Module, digits_data: tuple[torch.Tensor, ...], norm, mode
) -> None:
    """PGD's full run judges only its last iterate; early exit also counts an example fooled
    at an earlier iterate, so per example it can only be lower."""
    _, _, x_test, y_test = digits_data
    attack = attacks.create("pgd", norm=norm, steps=10)
    full, early = _curve_pair(trained_model, (x_test[:N], y_test[:N]), attack, mode)
    for row_full, row_early in zip(full.correct, early.correct):
        assert all(e <= f for f, e in zip(row_full, row_early))  # '0' < '1'
    assert early.accuracy[0] == full.accuracy[0]
    assert abs(early.accuracy[-1] - full.accuracy[-1]) <= 0.03  # a few late recoveries at most
    assert _example_passes(early) < _example_passes(full)


def _pgd_iterates(model, x, y, eps, norm: str, steps: int) -> list[torch.Tensor]:
    """x_0 (the random start) ... x_steps of one PGD run, each from a fresh PGD with fewer
    steps and the same seed (PGD's k-step run visits the first k iterates of a longer one)."""
    start = attacks.get_geometry(norm).random_init(x, torch.full((len(x),), eps), seeded())
    points = [start]
    for k in range(1, steps + 1):
        points.append(
            attacks.create("pgd", norm=norm, steps=k)(model, x, y, eps, generator=seeded())
        )
    return points


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_settles_exactly_the_examples_fooled_at_some_iterate(
    trained_model: nn.Module, digits_data: tuple[torch.Tensor, ...], norm
) -> None:
    _, _, x_test, y_test = digits_data
    x, y, eps, steps = x_test[:64], y_test[:64], EPS[norm], 5
    fooled_at = torch.stack(
        [
            misclassified(trained_model, p, y)
            for p in _pgd_iterates(trained_model, x, y, eps, norm, steps)
        ]
    )
    attack = attacks.create("pgd", norm=norm, steps=steps)
    verdict = attack.evaluate(trained_model, x, y, eps, generator=seeded())
    assert torch.equal(verdict.fooled, fooled_at.any(dim=0))
    full = attack.evaluate(trained_model, x, y, eps, generator=seeded(), early_stop=False)
    assert torch.equal(full.fooled, fooled_at[-1])
    # the settled examples come back at a fooling point; the others at the last iterate
    last = attacks.create("pgd", norm=norm, steps=steps)(
        trained_model, x, y, eps, generator=seeded()
    )
    survived = ~verdict.fooled
    assert torch.equal(verdict.x_adv[survived], last[survived])


@pytest.mark.parametrize(
    ("name", "hyper"),
    [
        ("pgd", {"steps": 5}),
        ("pgd", {"steps": 3, "restarts": 3}),
        ("apgd-ce", {"steps": 10}),
        ("apgd-ce", {"steps": 5, "restarts": 2}),
        ("apgd-dlr", {"steps": 10}),
        ("fgsm", {}),
        ("square", {"queries": 30}),
    ],
)
def test_verdicts_match_a_fresh_forward_pass_and_stay_in_the_ball(
    trained_model: nn.Module, digits_data: tuple[torch.Tensor, ...], name, hyper
) -> None:
    _, _, x_test, y_test = digits_data
    x, y, eps = x_test[:64], y_test[:64], 6 / 255
    attack = attacks.create(name, **hyper)
    verdict = attack.evaluate(trained_model, x, y, eps, generator=seeded())
    assert verdict.fooled.dtype == torch.bool and verdict.fooled.shape == (64,)
    assert torch.equal(verdict.fooled, misclassified(trained_model, verdict.x_adv, y))
    assert float((verdict.x_adv - x).abs().max()) <= eps + 1e-6
    assert 0 < int(verdict.fooled.sum()) < 64
    full = attack.evaluate(trained_model, x, y, eps, generator=seeded(), early_stop=False)
    assert bool((full.fooled & ~verdict.fooled).sum() == 0)  # never fewer examples broken


def test_restart_starts_do_not_depend_on_settled_examples(
    trained_model: nn.Module, digits_data: tuple[torch.Tensor, ...]
) -> None:
    """PGD's later restarts draw starts for the full batch, so an example's second start is the
    same whether or not its neighbours were settled by the first restart: the survivors of
    early exit end exactly where the full run's highest-loss restart ends."""
    _, _, x_test, y_test = digits_data
    x, y, eps = x_test[:64], y_test[:64], 4 / 255
    attack = attacks.create("pgd", steps=3, restarts=2)
    early = attack.evaluate(trained_model, x, y, eps, generator=seeded())
    full = attack(trained_model, x, y, eps, generator=seeded())
    survived = ~early.fooled
    assert 0 < int(survived.sum()) < 64
    assert torch.equal(early.x_adv[survived], full[survived])


def test_early_exit_saves_passes_and_stops_when_all_are_settled(
    trained_model: nn.Module, digits_data: tuple[torch.Tensor, ...]
) -> None:
    _, _, x_test, y_test = digits_data
    x, y = x_test[:64], y_test[:64]
    attack = attacks.create("apgd-ce", steps=10)
    with count_passes(trained_model) as early:
        verdict = attack.evaluate(trained_model, x, y, 0.5, generator=seeded())
    with count_passes(trained_model) as full:
        attack.evaluate(trained_model, x, y, 0.5, generator=seeded(), early_stop=False)
    assert bool(verdict.fooled.all())  # eps 0.5 breaks every digit...
    assert early.backward < 11 and full.backward == 11  # ...within a few of APGD's 11 passes
    assert early.example_backward < full.example_backward / 3
    assert full.forward == 12  # 11 gradient passes and the judging forward pass


def test_training_call_runs_every_step(
    trained_model: nn.Module, digits_data: tuple[torch.Tensor, ...]
) -> None:
    """Without early_stop (the training path) every example gets every step: same points as
    before, no extra judging pass."""
    _, _, x_test, y_test = digits_data
    x, y = x_test[:32], y_test[:32]
    attack = attacks.create("pgd", steps=4)
    with count_passes(trained_model) as passes:
        attack(trained_model, x, y, 0.5, generator=seeded())
    assert passes.forward == passes.backward == 4
    assert passes.example_backward == 4 * 32
