"""Property tests of the norm geometries: projection, random starts, ascent directions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from robustft.attacks import get_geometry
from robustft.attacks.geometry import Geometry, L2Geometry, LinfGeometry
from robustft.errors import UserError

NORMS = ["linf", "l2"]
SHAPE = (3, 2, 3, 3)  # (B, C, H, W): small, so that hypothesis explores many cases quickly
TOL = 1e-5  # float32 rounding when x + delta is formed and the norm recomputed

pixels = arrays(np.float32, SHAPE, elements=st.floats(0, 1, width=32))
anywhere = arrays(np.float32, SHAPE, elements=st.floats(-3, 4, width=32))
budgets = arrays(
    np.float32,
    (SHAPE[0],),
    elements=st.one_of(st.just(0.0), st.floats(0.0001220703125, 3.0, width=32)),
)
norms = st.sampled_from(NORMS)


def ball_and_box(
    geometry: Geometry, point: torch.Tensor, x: torch.Tensor, eps: torch.Tensor
) -> None:
    """Assert ``point`` lies in the eps-ball around ``x`` (up to TOL) and in [0, 1] exactly."""
    assert point.min() >= 0 and point.max() <= 1
    distance = geometry.norm(point - x)
    assert bool((distance <= eps + TOL).all()), (distance - eps).max()


@settings(max_examples=150, deadline=None)
@given(norm=norms, x=pixels, x_adv=anywhere, eps=budgets)
def test_projection_lands_in_ball_and_box(
    norm: str, x: np.ndarray, x_adv: np.ndarray, eps: np.ndarray
) -> None:
    geometry = get_geometry(norm)
    x_t, eps_t = torch.from_numpy(x), torch.from_numpy(eps)
    projected = geometry.project(torch.from_numpy(x_adv), x_t, eps_t)
    ball_and_box(geometry, projected, x_t, eps_t)
    zero = eps_t == 0
    assert torch.equal(projected[zero], x_t[zero])  # eps = 0 gives x exactly


@settings(max_examples=150, deadline=None)
@given(norm=norms, x=pixels, x_adv=anywhere, eps=budgets)
def test_projection_is_idempotent(
    norm: str, x: np.ndarray, x_adv: np.ndarray, eps: np.ndarray
) -> None:
    geometry = get_geometry(norm)
    x_t, eps_t = torch.from_numpy(x), torch.from_numpy(eps)
    once = geometry.project(torch.from_numpy(x_adv), x_t, eps_t)
    twice = geometry.project(once, x_t, eps_t)
    if norm == "linf":
        assert torch.equal(once, twice)
    else:
        torch.testing.assert_close(once, twice, atol=TOL, rtol=0)


@settings(max_examples=150, deadline=None)
@given(
    norm=norms,
    x=pixels,
    direction=anywhere,
    eps=budgets,
    fraction=st.floats(0, 0.9),
)
def test_projection_leaves_feasible_points_unchanged(
    norm: str, x: np.ndarray, direction: np.ndarray, eps: np.ndarray, fraction: float
) -> None:
    geometry = get_geometry(norm)
    x_t, eps_t = torch.from_numpy(x), torch.from_numpy(eps)
    delta = torch.from_numpy(direction)
    length = geometry.norm(delta).clamp_min(1e-12)
    delta = delta * (fraction * eps_t / length).view(-1, 1, 1, 1)  # norm <= 0.9 * eps
    feasible = (x_t + delta).clamp(0, 1)
    assert torch.equal(geometry.project(feasible, x_t, eps_t), feasible)


@settings(max_examples=100, deadline=None)
@given(norm=norms, x=pixels, eps=budgets, seed=st.integers(0, 2**31 - 1))
def test_random_init_is_inside_ball_and_box(
    norm: str, x: np.ndarray, eps: np.ndarray, seed: int
) -> None:
    geometry = get_geometry(norm)
    x_t, eps_t = torch.from_numpy(x), torch.from_numpy(eps)
    start = geometry.random_init(x_t, eps_t, torch.Generator().manual_seed(seed))
    ball_and_box(geometry, start, x_t, eps_t)
    again = geometry.random_init(x_t, eps_t, torch.Generator().manual_seed(seed))
    assert torch.equal(start, again)


@pytest.mark.parametrize("norm", NORMS)
def test_random_init_spreads_inside_the_ball(norm: str) -> None:
    """Starts are random, reach far into the ball and are not all on its boundary."""
    geometry = get_geometry(norm)
    x = torch.full((400, 3, 8, 8), 0.5)
    eps = torch.full((400,), 0.1 if norm == "linf" else 1.0)
    start = geometry.random_init(x, eps, torch.Generator().manual_seed(0))
    delta = start - x
    if norm == "linf":
        values = delta.flatten()
        assert values.abs().max() <= 0.1 + 1e-7
        assert abs(float(values.mean())) < 0.005  # symmetric
        assert float(values.std()) == pytest.approx(0.1 / 3**0.5, rel=0.05)  # uniform(-eps, eps)
    else:
        radius = geometry.norm(delta)
        assert radius.max() <= 1.0 + 1e-5
        assert float(radius.mean()) == pytest.approx(0.5, abs=0.05)  # radius ~ U(0, eps)
        directions = delta / radius.view(-1, 1, 1, 1)
        assert float(directions.mean(dim=0).norm()) < 0.2  # no preferred direction


@settings(max_examples=100, deadline=None)
@given(grad=anywhere, zero_rows=st.lists(st.booleans(), min_size=3, max_size=3))
def test_ascent_directions(grad: np.ndarray, zero_rows: list[bool]) -> None:
    g = torch.from_numpy(grad)
    g[torch.tensor(zero_rows)] = 0.0
    for geometry in (LinfGeometry(), L2Geometry()):
        direction = geometry.ascent_direction(g)
        assert torch.isfinite(direction).all()
        assert bool(((direction * g).flatten(1).sum(dim=1) >= 0).all())  # an ascent direction
        assert bool((direction[torch.tensor(zero_rows)] == 0).all())
    sign = LinfGeometry().ascent_direction(g)
    assert torch.equal(sign, g.sign())
    unit = L2Geometry().ascent_direction(g)
    lengths = unit.flatten(1).norm(dim=1)
    nonzero = g.flatten(1).norm(dim=1) > 1e-6
    torch.testing.assert_close(lengths[nonzero], torch.ones_like(lengths[nonzero]))


def test_norms_match_torch() -> None:
    delta = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    flat = delta.flatten(1)
    torch.testing.assert_close(LinfGeometry().norm(delta), flat.abs().amax(dim=1))
    torch.testing.assert_close(L2Geometry().norm(delta), torch.linalg.vector_norm(flat, dim=1))


def test_l2_projection_is_the_nearest_ball_point_inside_the_box() -> None:
    """Far from the box edges, l2 projection is a radial shrink to exactly eps."""
    x = torch.full((2, 1, 4, 4), 0.5)
    delta = torch.zeros_like(x)
    delta[:, 0, 0, 0] = 0.3
    delta[:, 0, 1, 1] = -0.4  # norm 0.5
    projected = L2Geometry().project(x + delta, x, torch.tensor([0.25, 1.0]))
    torch.testing.assert_close(projected[0] - x[0], delta[0] / 2)
    assert torch.equal(projected[1], (x + delta)[1])


@pytest.mark.parametrize("norm", NORMS)
def test_zero_eps_projects_to_x_even_for_underflowing_perturbations(norm: str) -> None:
    x = torch.zeros(2, 1, 3, 3)
    x_adv = torch.full_like(x, 8.5e-32)  # its squared l2 norm underflows to 0 in float32
    assert torch.equal(get_geometry(norm).project(x_adv, x, torch.zeros(2)), x)


def test_unknown_norm_is_a_user_error_with_suggestion() -> None:
    with pytest.raises(UserError, match=r"unknown norm 'Linf' \(did you mean 'linf'\?\)"):
        get_geometry("Linf")
    with pytest.raises(UserError, match="valid: l2, linf"):
        get_geometry("l1")
