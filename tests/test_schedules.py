"""Perturbation schedules: epoch convention, every kind, granularity, text/dict forms, errors."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robustft.errors import UserError
from robustft.schedules import (
    KINDS,
    Constant,
    Cosine,
    EpsSchedule,
    Hinge,
    Linear,
    Piecewise,
    Position,
    Schedule,
    Uniform,
    parse_schedule,
    schedule_from_dict,
)

EPS = 8 / 255


def alphas(spec: str, epochs: int = 50) -> list[float]:
    """alpha for epochs 1..epochs of a bound schedule (epoch granularity)."""
    bound = EpsSchedule(parse_schedule(spec), eps=1.0, epochs=epochs)
    return [bound.alpha_at(e) for e in range(1, epochs + 1)]


# --- the paper's convention -------------------------------------------------------------------


def test_hinge_12_37_of_50_convention() -> None:
    a = alphas("hinge(t1=12,t2=37)")
    assert a[:12] == [0.0] * 12  # epochs 1-12 at eps = 0
    assert a[12] == pytest.approx(1 / 25)  # epoch 13
    for epoch in range(13, 37):
        assert a[epoch - 1] == pytest.approx((epoch - 12) / 25)
    assert a[35] < 1.0  # epoch 36 still below eps_g
    assert a[36:] == [1.0] * 14  # epochs 37-50 at eps_g, 37 the first


def test_hinge_eps_values_in_pixel_units() -> None:
    bound = EpsSchedule(parse_schedule("hinge(t1=12,t2=37)"), eps=EPS, epochs=50)
    eps = bound.per_epoch()
    assert len(eps) == 50
    assert eps[11] == 0.0
    assert eps[12] == pytest.approx(EPS / 25)
    assert eps[24] == pytest.approx(EPS * 13 / 25)
    assert eps[36] == EPS
    assert bound.eps_at(50) == EPS
    assert bound.eps_at(13) == pytest.approx(0.32 / 255)


def test_alpha_function_of_fractional_position() -> None:
    hinge = Hinge(Position(12), Position(37))
    assert hinge.alpha(12.0, 50) == 0.0
    assert hinge.alpha(12.5, 50) == pytest.approx(0.02)
    assert hinge.alpha(24.5, 50) == pytest.approx(0.5)
    assert hinge.alpha(37.0, 50) == 1.0
    assert hinge.alpha(0.0, 50) == 0.0


def test_fraction_hinges_give_12_and_37_on_50_epochs() -> None:
    assert alphas("hinge(t1=0.24,t2=0.74)") == alphas("hinge(t1=12,t2=37)")
    assert parse_schedule("hinge") == parse_schedule("hinge(t1=0.24,t2=0.74)")
    assert parse_schedule("hinge()") == Hinge()


@pytest.mark.parametrize(
    ("fraction", "epochs", "epoch"),
    [(0.24, 50, 12), (0.74, 50, 37), (0.24, 8, 2), (0.74, 8, 6), (0.25, 10, 3), (0.75, 10, 8)],
)
def test_fractions_round_to_nearest_epoch_halves_up(
    fraction: float, epochs: int, epoch: int
) -> None:
    assert Position(fraction, fraction=True).resolve(epochs) == epoch


def test_position_text_rule() -> None:
    assert Position.of("12") == Position(12)
    assert Position.of(12) == Position(12)
    assert Position.of("0.24") == Position(0.24, fraction=True)
    assert Position.of("1.0") == Position(1.0, fraction=True)  # the whole run
    assert Position.of("1") == Position(1)  # epoch 1
    assert Position.of("12.5") == Position(12.5)  # a fractional epoch
    assert Position.of("1.0").resolve(50) == 50
    assert Position.of(0.74) == Position(0.74, fraction=True)


def test_hard_switch_and_constant_special_cases() -> None:
    a = alphas("hinge(t1=20,t2=20)")
    assert a[:20] == [0.0] * 20
    assert a[20:] == [1.0] * 30
    assert alphas("hinge(t1=0,t2=0)") == [1.0] * 50 == alphas("constant")


def test_constant_with_zero_eps_is_standard_fine_tuning() -> None:
    assert EpsSchedule(Constant(), eps=0.0, epochs=5).per_epoch() == [0.0] * 5
    assert EpsSchedule(Constant(), eps=EPS, epochs=5).per_epoch() == [EPS] * 5


def test_linear_warm_up() -> None:
    a = alphas("linear(t2=25)")
    assert a[0] == pytest.approx(1 / 25)
    assert a[11] == pytest.approx(12 / 25)
    assert a[24:] == [1.0] * 26
    assert alphas("linear") == alphas("linear(t2=37)") == alphas("hinge(t1=0,t2=37)")


def test_cosine_ramp_values() -> None:
    a = alphas("cosine(t1=12,t2=37)")
    assert a[:12] == [0.0] * 12
    assert a[12] == pytest.approx((1 - math.cos(math.pi / 25)) / 2)
    assert a[36:] == [1.0] * 14
    assert Cosine(Position(10), Position(20)).alpha(15.0, 50) == pytest.approx(0.5)
    assert all(x <= y for x, y in itertools.pairwise(a))
    assert parse_schedule("cosine") == Cosine()
    assert parse_schedule("cosine") != parse_schedule("hinge")


def test_piecewise_knots_and_interpolation() -> None:
    s = parse_schedule("piecewise(0:0,10:0.5,30:1)")
    assert [s.alpha(t, 50) for t in (0, 5, 10, 20, 30, 40, 50)] == pytest.approx(
        [0, 0.25, 0.5, 0.75, 1, 1, 1]
    )
    later = parse_schedule("piecewise(5:0.2, 10:1)")
    assert later.alpha(1, 50) == pytest.approx(0.2)  # flat before the first knot
    assert later.alpha(7.5, 50) == pytest.approx(0.6)
    down = parse_schedule("piecewise(0:1,10:0)")  # non-monotone schedules are allowed
    assert down.alpha(5, 10) == pytest.approx(0.5)


def test_piecewise_fraction_knots() -> None:
    s = parse_schedule("piecewise(0:0,0.5:1)")
    assert s.alpha(25, 50) == 1.0
    assert s.alpha(12.5, 50) == pytest.approx(0.5)


# --- granularity ------------------------------------------------------------------------------


def all_steps(bound: EpsSchedule, n: int) -> list[list[float]]:
    return [[bound.eps_at(e, i, n) for i in range(n)] for e in range(1, bound.epochs + 1)]


@settings(max_examples=60, deadline=None)
@given(
    t1=st.integers(0, 30),
    width=st.integers(0, 20),
    extra=st.integers(0, 10),
    n=st.integers(1, 17),
)
def test_step_granularity_properties(t1: int, width: int, extra: int, n: int) -> None:
    t2, epochs = t1 + width, t1 + width + extra + 1
    s = Hinge(Position(t1), Position(t2))
    by_step = EpsSchedule(s, eps=EPS, epochs=epochs, granularity="step")
    by_epoch = EpsSchedule(s, eps=EPS, epochs=epochs)
    steps = all_steps(by_step, n)
    for epoch in range(1, t1 + 1):  # zero throughout epochs 1..T1
        assert steps[epoch - 1] == [0.0] * n
    for epoch, values in enumerate(steps, start=1):  # last step = per-epoch value
        assert values[-1] == by_epoch.eps_at(epoch)
    flat = [v for values in steps for v in values]
    assert all(a <= b for a, b in itertools.pairwise(flat))  # monotone
    if width > 0:  # continuous: each step moves at most one step of the ramp
        assert max(b - a for a, b in itertools.pairwise(flat)) <= EPS / (width * n) + 1e-12


def test_step_granularity_positions() -> None:
    bound = EpsSchedule(
        parse_schedule("hinge(t1=12,t2=37)"), eps=1.0, epochs=50, granularity="step"
    )
    assert bound.progress(13, 0, 4) == 12.25
    assert bound.progress(13, 3, 4) == 13.0
    assert bound.eps_at(13, 0, 4) == pytest.approx(0.01)
    assert bound.eps_at(13, 3, 4) == pytest.approx(1 / 25)
    assert bound.per_epoch() == EpsSchedule(bound.schedule, eps=1.0, epochs=50).per_epoch()
    epoch_bound = EpsSchedule(bound.schedule, eps=1.0, epochs=50)
    assert epoch_bound.eps_at(13, 0, 4) == epoch_bound.eps_at(13, 3, 4) == pytest.approx(0.04)


def test_eps_at_rejects_out_of_range_positions() -> None:
    bound = EpsSchedule(Constant(), eps=EPS, epochs=10, granularity="step")
    for args in [(0,), (11,), (1, 5, 5), (1, -1, 5), (1, 0, 0)]:
        with pytest.raises(ValueError):
            bound.eps_at(*args)


# --- uniform ----------------------------------------------------------------------------------


def test_uniform_reproducible_and_order_independent() -> None:
    u = Uniform(seed=3)
    forward = [u.alpha(e, 50) for e in range(1, 51)]
    backward = [u.alpha(e, 50) for e in range(50, 0, -1)][::-1]
    assert forward == backward == [Uniform(seed=3).alpha(e, 50) for e in range(1, 51)]
    assert forward != [Uniform(seed=4).alpha(e, 50) for e in range(1, 51)]
    assert len(set(forward)) == 50


def test_uniform_range_and_mean() -> None:
    values = [Uniform(seed=0).alpha(e, 2000) for e in range(1, 2001)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert sum(values) / len(values) == pytest.approx(0.5, abs=0.03)
    assert min(values) < 0.01 and max(values) > 0.99


def test_uniform_takes_the_run_seed_unless_given() -> None:
    run7 = EpsSchedule(parse_schedule("uniform"), eps=EPS, epochs=20, seed=7)
    assert run7.schedule == Uniform(seed=7)
    assert run7.per_epoch() == EpsSchedule(Uniform(seed=7), eps=EPS, epochs=20).per_epoch()
    assert run7.per_epoch() != EpsSchedule(Uniform(), eps=EPS, epochs=20, seed=8).per_epoch()
    fixed = Uniform(seed=3).bind(EPS, 20, seed=7)
    assert fixed.schedule == Uniform(seed=3)
    assert Uniform().with_seed(5) == Uniform(seed=5)
    assert Hinge().with_seed(5) == Hinge()


def test_uniform_step_granularity_draws_per_step() -> None:
    bound = EpsSchedule(Uniform(seed=1), eps=1.0, epochs=3, granularity="step")
    steps = all_steps(bound, 8)
    assert len({v for values in steps for v in values}) == 24
    assert [values[-1] for values in steps] == EpsSchedule(Uniform(1), 1.0, 3).per_epoch()


# --- text and dict forms ----------------------------------------------------------------------


def positions() -> st.SearchStrategy[Position]:
    absolute = st.integers(0, 500).map(lambda v: Position(v))
    fractional_epoch = st.floats(1.0, 500.0, exclude_min=True).map(lambda v: Position(v))
    fraction = st.floats(0.0, 1.0).map(lambda v: Position(v, fraction=True))
    return st.one_of(absolute, fractional_epoch, fraction)


@st.composite
def hinges(draw: st.DrawFn) -> Schedule:
    t1, t2 = draw(positions()), draw(positions())
    if t1.fraction == t2.fraction and t1.value > t2.value:
        t1, t2 = t2, t1
    return draw(st.sampled_from([Hinge, Cosine]))(t1, t2)


@st.composite
def piecewises(draw: st.DrawFn) -> Schedule:
    epochs = draw(st.lists(st.integers(0, 500), min_size=1, max_size=8, unique=True))
    values = draw(st.lists(st.floats(0.0, 1.0), min_size=len(epochs), max_size=len(epochs)))
    return Piecewise(tuple((Position(e), v) for e, v in zip(sorted(epochs), values, strict=True)))


schedules = st.one_of(
    hinges(),
    piecewises(),
    positions().map(lambda p: Linear(p)),
    st.one_of(st.none(), st.integers(0, 2**64 - 1)).map(lambda s: Uniform(s)),
    st.just(Constant()),
)


@settings(max_examples=300, deadline=None)
@given(schedules)
def test_text_round_trip(schedule: Schedule) -> None:
    text = str(schedule)
    assert parse_schedule(text) == schedule
    assert " " not in text


@settings(max_examples=300, deadline=None)
@given(schedules)
def test_dict_round_trip_through_json(schedule: Schedule) -> None:
    data = json.loads(json.dumps(schedule.to_dict()))
    assert schedule_from_dict(data) == schedule
    assert data["kind"] == schedule.kind


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("constant", "constant"),
        ("constant()", "constant"),
        ("hinge(t1=12,t2=37)", "hinge(t1=12,t2=37)"),
        (" Hinge ( t2 = 37 , t1 = 12 ) ", "hinge(t1=12,t2=37)"),
        ("hinge", "hinge(t1=0.24,t2=0.74)"),
        ("hinge(t2=40)", "hinge(t1=0.24,t2=40)"),
        ("linear", "linear(t2=0.74)"),
        ("linear(t2=25)", "linear(t2=25)"),
        ("cosine(t1=0.2,t2=0.8)", "cosine(t1=0.2,t2=0.8)"),
        ("piecewise(0:0, 10:0.50, 30:1.0)", "piecewise(0:0,10:0.5,30:1)"),
        ("uniform", "uniform"),
        ("uniform(seed=3)", "uniform(seed=3)"),
    ],
)
def test_canonical_text(text: str, canonical: str) -> None:
    assert str(parse_schedule(text)) == canonical


def test_to_dict_forms() -> None:
    assert parse_schedule("hinge(t1=12,t2=0.74)").to_dict() == {
        "kind": "hinge",
        "t1": 12,
        "t2": 0.74,
    }
    assert parse_schedule("piecewise(0:0,10:0.5)").to_dict() == {
        "kind": "piecewise",
        "knots": [[0, 0.0], [10, 0.5]],
    }
    assert Uniform().to_dict() == {"kind": "uniform", "seed": None}
    assert schedule_from_dict({"kind": "uniform"}) == Uniform()
    assert schedule_from_dict({"kind": "hinge", "t1": "12", "t2": 37}) == Hinge(
        Position(12), Position(37)
    )


def test_numbers_are_converted_by_the_text_rule() -> None:
    assert Hinge(12, 37) == parse_schedule("hinge(t1=12,t2=37)")  # type: ignore[arg-type]
    assert Hinge(0.24, 1.0) == parse_schedule("hinge(t1=0.24,t2=1.0)")  # type: ignore[arg-type]
    assert Piecewise(((0, 0), (10, 1))) == parse_schedule("piecewise(0:0,10:1)")  # type: ignore[arg-type]


def test_eps_schedule_round_trip_and_construction() -> None:
    bound = EpsSchedule("hinge(t1=12,t2=37)", eps="8/255", epochs=50, granularity="step", seed=2)  # type: ignore[arg-type]
    assert bound.eps == EPS
    assert bound == parse_schedule("hinge(t1=12,t2=37)").bind(EPS, 50, granularity="step", seed=2)
    assert EpsSchedule.from_dict(json.loads(json.dumps(bound.to_dict()))) == bound
    with pytest.raises(dataclasses.FrozenInstanceError):
        bound.eps = 0.1  # type: ignore[misc]
    assert set(KINDS) == {
        "constant",
        "hinge",
        "linear",
        "cosine",
        "piecewise",
        "uniform",
        "auto",
        "hinge-auto",
    }


# --- errors -----------------------------------------------------------------------------------


def raises(spec: str, *words: str, epochs: int | None = None) -> str:
    """Assert that parsing (and binding, if epochs) fails with one line containing ``words``."""
    with pytest.raises(UserError) as info:
        schedule = parse_schedule(spec)
        if epochs is not None:
            schedule.bind(EPS, epochs)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_t1_after_t2() -> None:
    raises("hinge(t1=37,t2=12)", "t1=37", "t2=12", "must not exceed", "swap")
    raises("cosine(t1=0.8,t2=0.2)", "t1=0.8", "t2=0.2")


def test_t1_after_t2_mixed_units_detected_when_bound() -> None:
    schedule = parse_schedule("hinge(t1=0.5,t2=12)")  # epoch 25 vs 12: only known with epochs
    raises("hinge(t1=0.5,t2=12)", "t1=0.5 (epoch 25 of 50)", "t2=12", epochs=50)
    eps = schedule.bind(EPS, 20).per_epoch()  # 0.5 of 20 = epoch 10 <= 12: fine
    assert eps[9] == 0.0
    assert eps[10] == pytest.approx(EPS / 2)


@pytest.mark.parametrize(
    "spec", ["hinge(t1=-3,t2=37)", "hinge(t2=-1)", "linear(t2=-5)", "piecewise(-1:0,10:1)"]
)
def test_negative_values(spec: str) -> None:
    raises(spec, ">= 0")


def test_negative_alpha_and_seed() -> None:
    raises("piecewise(0:-0.5,10:1)", "[0, 1]")
    raises("uniform(seed=-1)", "seed", "integer >= 0")
    raises("uniform(seed=1.5)", "seed", "integer >= 0")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("hinge(t1=12,t2=60)", ["t2=60", "beyond", "50 epochs"]),
        ("linear(t2=51)", ["t2=51", "beyond", "50 epochs"]),
        ("cosine(t1=55,t2=60)", ["beyond"]),
        ("piecewise(0:0,60:1)", ["60", "beyond", "50 epochs"]),
    ],
)
def test_hinges_and_knots_beyond_the_run(spec: str, words: list[str]) -> None:
    parse_schedule(spec)  # fine until bound to an epoch count
    raises(spec, *words, epochs=50)
    parse_schedule(spec).bind(EPS, 60)  # fits a 60-epoch run


def test_unknown_name_suggests_nearest() -> None:
    message = raises("hinje", "unknown schedule 'hinje'", "did you mean 'hinge'?")
    assert "piecewise" in message
    raises("cosin(t1=3)", "did you mean 'cosine'?")


def test_unknown_and_repeated_parameters() -> None:
    raises("hinge(t3=5)", "unknown parameter 't3'", "did you mean", "valid: t1, t2")
    raises("hinge(t11=5)", "did you mean 't1'?")
    raises("linear(t1=5)", "unknown parameter 't1'")
    raises("uniform(sede=1)", "did you mean 'seed'?")
    raises("constant(t1=1)", "constant takes no parameters")
    raises("hinge(t1=1,t1=2)", "'t1' given twice")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("hinge(t1=12,t2=37", ["unbalanced parentheses"]),
        ("hinge t1=12,t2=37)", ["unbalanced parentheses"]),
        ("hinge(t1=12))", ["unbalanced parentheses"]),
        ("hinge t1=12", ["expected '('"]),
        ("hinge((t1=12))", ["malformed"]),
        ("hinge(t1=12)x", ["malformed"]),
        ("hinge(t1=)", ["missing"]),
        ("hinge(=12)", ["missing"]),
        ("hinge(t1=12,,t2=37)", ["empty argument"]),
        ("hinge(t1=12,)", ["empty argument"]),
        ("hinge(12,37)", ["expected name=value"]),
        ("hinge(t1=abc)", ["cannot parse 'abc'"]),
        ("hinge(t1=nan)", ["cannot parse 'nan'"]),
        ("hinge(t1=1=2)", ["bad value"]),
        ("piecewise(0:0,10:)", ["missing"]),
        ("piecewise(0:0,t1=3)", ["epoch:alpha knots"]),
        ("piecewise", ["at least one"]),
        ("piecewise()", ["at least one"]),
        ("hinge(1:0)", ["expected name=value"]),
        ("", ["empty schedule"]),
        ("   ", ["empty schedule"]),
        ("(t1=3)", ["expected a name"]),
    ],
)
def test_malformed_syntax(spec: str, words: list[str]) -> None:
    raises(spec, *words)


def test_piecewise_knot_order() -> None:
    raises("piecewise(0:0,30:0.5,10:1)", "must increase", "10 follows 30")
    raises("piecewise(0:0,10:0.5,10:1)", "must increase")
    raises("piecewise(0:0,0.3:0.5,0.31:1)", "must increase", "epoch 3 of 10", epochs=10)


def test_bad_dicts() -> None:
    with pytest.raises(UserError, match="'kind'"):
        schedule_from_dict({"t1": 3})
    with pytest.raises(UserError, match="did you mean 'hinge'"):
        schedule_from_dict({"kind": "hinje"})
    with pytest.raises(UserError, match="unknown parameter"):
        schedule_from_dict({"kind": "hinge", "t3": 1})
    with pytest.raises(UserError, match="pair"):
        schedule_from_dict({"kind": "piecewise", "knots": [[0, 0, 1]]})
    with pytest.raises(UserError, match="missing 'eps'"):
        EpsSchedule.from_dict({"schedule": {"kind": "constant"}, "epochs": 3})


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"epochs": 0}, ["epochs", "1..1000000"]),
        ({"epochs": 2.5}, ["epochs"]),
        ({"eps": -0.1}, [">= 0"]),
        ({"eps": "8"}, ["8/255"]),
        ({"granularity": "batch"}, ["unknown granularity 'batch'", "epoch, step"]),
        ({"seed": -2}, ["seed"]),
    ],
)
def test_eps_schedule_validation(kwargs: dict[str, object], words: list[str]) -> None:
    args: dict[str, object] = {"schedule": Hinge(), "eps": EPS, "epochs": 50, **kwargs}
    with pytest.raises(UserError) as info:
        EpsSchedule(**args)  # type: ignore[arg-type]
    for word in words:
        assert word in str(info.value)
