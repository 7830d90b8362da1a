"""Perturbation schedules: ``eps(t) = alpha(t) * eps_g`` as pure functions of training progress.

A :class:`Schedule` is a frozen dataclass with ``alpha(t, epochs) -> float`` in ``[0, 1]``. It
holds no state, so a resumed run asks it again and gets the same answer. :class:`EpsSchedule`
binds a schedule to a target ``eps`` (pixel units), an epoch count, a granularity and a seed,
validates all of them once, and answers ``eps_at(epoch, step, steps_per_epoch)``.

Epoch convention:
    ``t`` is the 1-based epoch position: epoch ``e`` ends at ``t = e``, and ``t`` may be
    fractional inside an epoch. For a hinge at ``T1``, ``T2``::

        alpha(t) = 0                     for t <= T1
                 = (t - T1) / (T2 - T1)  for T1 < t < T2
                 = 1                     for t >= T2

    With the paper's ``T1=12, T2=37`` over 50 epochs: epochs 1-12 train at eps = 0, epoch 13
    has alpha 1/25, eps first equals eps_g at epoch 37, and epochs 37-50 (14 epochs) train at
    eps_g. ``T1 == T2`` is a hard switch (0 up to and including epoch ``T1``, 1 after);
    ``T1 = T2 = 0`` is a constant eps_g.

Granularity:
    ``"epoch"`` (the paper's, default): every step of epoch ``e`` uses ``alpha(e)``.
    ``"step"``: step ``i`` (0-based) of ``n`` in epoch ``e`` uses ``alpha((e - 1) + (i + 1) / n)``.
    It is zero throughout epochs ``1..T1``, continuous, and equals the per-epoch value at the
    last step of every epoch.

Text forms (``parse_schedule``; ``str(schedule)`` is the canonical form and parses back to an
equal schedule)::

    constant                      alpha = 1: RFT-fix (with eps_g = 0, standard fine-tuning)
    hinge(t1=12,t2=37)            Epsilon-Scheduling; bare ``hinge`` = hinge(t1=0.24,t2=0.74)
    linear(t2=25)                 warm-up, hinge with t1 = 0; bare ``linear`` = linear(t2=0.74)
    cosine(t1=12,t2=37)           half-cosine ramp between the hinges; same defaults as hinge
    piecewise(0:0,10:0.5,30:1)    epoch:alpha knots, linear in between, flat outside
    uniform / uniform(seed=3)     alpha ~ U[0, 1], drawn once per epoch (or per step)
    auto                          the paper's automated scheduler: eps 0 until validation
                                  accuracy converges (patience 5, tolerance 2 points), then
                                  linear to eps_g at the last epoch; auto(patience=5,tolerance=0.02)
    hinge(auto)                   T1 from a clean probe run (epoch reaching 90% of its final
                                  validation accuracy), T2 at 75% of the run

Positions (``t1``, ``t2``, knot epochs): an integer (``12``) is an absolute epoch; a number with
a decimal point or exponent in ``[0, 1]`` (``0.24``, ``1.0``) is a fraction of the run, resolved
against the epoch count by rounding ``fraction * epochs`` to the nearest epoch, halves up
(``0.24`` and ``0.74`` of 50 epochs are 12 and 37; ``1.0`` is the last epoch); a decimal
above 1 (``12.5``) is a fractional epoch position. The paper's 12/37 of 50 are expressed as
the fractions 0.24/0.74 so that bare ``hinge`` generalises to any epoch count. Hinges and knots
beyond the run are refused when the schedule is bound to an epoch count (``check``/``bind``).

Uniform: alpha is a hash (BLAKE2b) of ``(seed, t)`` mapped to ``[0, 1)``, so each epoch (or
step) gets its own draw, reproducible, independent of query order and resumable without state.
``uniform`` without a seed takes the run's seed when bound (``bind(..., seed=run_seed)`` or
``EpsSchedule(..., seed=run_seed)``); ``uniform(seed=3)`` keeps 3 whatever the run seed.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from robustft.errors import UserError, did_you_mean, unknown_name
from robustft.units import parse_eps
from robustft.utils.registry import Registry

__all__ = [
    "GRANULARITIES",
    "KINDS",
    "SCHEDULES",
    "AdaptiveSchedule",
    "Auto",
    "Constant",
    "Cosine",
    "EpsSchedule",
    "Granularity",
    "Hinge",
    "HingeAuto",
    "Linear",
    "Piecewise",
    "Position",
    "Schedule",
    "Uniform",
    "convergence_epoch",
    "parse_schedule",
    "schedule_from_dict",
]

Granularity = Literal["epoch", "step"]
GRANULARITIES: tuple[str, ...] = ("epoch", "step")

_EXAMPLE = "e.g. hinge(t1=12,t2=37)"
MAX_EPOCHS = 1_000_000  # far above any run; larger counts overflow float epoch positions
_INT_RE = re.compile(r"\d+")
_NUMBER_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_NAME_RE = re.compile(r"([A-Za-z_]\w*)\s*(.*)", re.DOTALL)


def _parse_number(text: str, what: str) -> float:
    """Parse a plain decimal number (no nan/inf), or raise a one-line UserError."""
    if not _NUMBER_RE.fullmatch(text):
        raise UserError(f"{what}: cannot parse {text!r} as a number")
    return float(text)


def _format_number(value: float) -> str:
    """Shortest text that parses back to ``value``: ``1`` for 1.0, ``0.5``, ``1e-05``."""
    return str(int(value)) if value.is_integer() else repr(value)


@dataclass(frozen=True)
class Position:
    """A point in the run: an absolute epoch position or a fraction of the run.

    Attributes:
        value: the epoch position (``fraction=False``) or the fraction of the run in ``[0, 1]``.
        fraction: whether ``value`` is a fraction of the run.
    """

    value: float
    fraction: bool = False

    def __post_init__(self) -> None:
        value = float(self.value)
        if not math.isfinite(value) or value < 0:
            raise UserError(f"positions must be finite and >= 0, got {self.value!r}")
        if self.fraction and value > 1:
            raise UserError(f"a fraction of the run must be in [0, 1], got {self.value!r}")
        if not self.fraction and 0 < value <= 1 and not value.is_integer():
            raise UserError(
                f"epoch position {value!r} would read as a fraction of the run; "
                "use a fraction (fraction=True) or a position above 1"
            )
        object.__setattr__(self, "value", value)

    @classmethod
    def of(cls, value: object, what: str = "position") -> Position:
        """Build a position from text or a number with the text rule.

        Integers (``12`` or ``"12"``) are absolute epochs; other numbers in ``[0, 1]``
        (``0.24``, ``"1.0"``) are fractions of the run; other numbers above 1 are epoch positions.

        Raises:
            UserError: not a number, negative or not finite.
        """
        if isinstance(value, Position):
            return value
        if isinstance(value, str):
            text = value.strip()
            number = _parse_number(text, what)
            is_int = bool(_INT_RE.fullmatch(text.lstrip("+")))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number, is_int = float(value), isinstance(value, int)
        else:
            raise UserError(f"{what}: expected an epoch (12) or a fraction (0.24), got {value!r}")
        if not math.isfinite(number) or number < 0:
            raise UserError(f"{what} must be a finite number >= 0, got {value!r}")
        return cls(number, fraction=not is_int and number <= 1)

    def resolve(self, epochs: int) -> float:
        """The epoch position for a run of ``epochs`` (fractions round to the nearest epoch)."""
        if self.fraction:
            return float(math.floor(self.value * epochs + 0.5 + 1e-9))
        return self.value

    def describe(self, epochs: int) -> str:
        """Text for messages: ``12``, or ``0.24 (epoch 12 of 50)`` for a fraction."""
        if self.fraction:
            return f"{self} (epoch {_format_number(self.resolve(epochs))} of {epochs})"
        return str(self)

    def to_json(self) -> int | float:
        """JSON value following the text rule: int for whole epochs, float for fractions."""
        if not self.fraction and self.value.is_integer():
            return int(self.value)
        return self.value

    def __str__(self) -> str:
        if not self.fraction:
            return _format_number(self.value)
        return repr(self.value)

    def __repr__(self) -> str:
        return f"Position({self.value!r}, fraction=True)" if self.fraction else f"Position({self})"


def _seed(value: object, what: str) -> int | None:
    """Parse a seed (non-negative integer, text or int) or ``None``."""
    if value is None:
        return None
    if isinstance(value, str) and _INT_RE.fullmatch(value.strip()) and len(value.strip()) <= 20:
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64:
        return value
    raise UserError(f"{what} must be an integer >= 0 and < 2**64, got {value!r}")


def _alpha_value(value: object, what: str) -> float:
    """Parse an alpha value (text or number) in ``[0, 1]``."""
    if isinstance(value, str):
        number = _parse_number(value.strip(), what)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise UserError(f"{what}: expected a number in [0, 1], got {value!r}")
    if not 0.0 <= number <= 1.0:
        raise UserError(f"{what} must be in [0, 1] (a fraction of eps_g), got {value!r}")
    return number


def _check_epochs(epochs: object) -> int:
    """Validate an epoch count (a positive int)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= MAX_EPOCHS:
        raise UserError(f"epochs must be an integer in 1..{MAX_EPOCHS}, got {epochs!r}")
    return epochs


class Schedule(ABC):
    """A perturbation schedule: ``alpha(t, epochs)`` in ``[0, 1]``, a pure function.

    Subclasses are frozen dataclasses. ``str(s)`` is the canonical text form, ``to_dict()`` the
    JSON form; :func:`parse_schedule` and :func:`schedule_from_dict` invert them.
    """

    kind: ClassVar[str]
    _converters: ClassVar[Mapping[str, Callable[[object, str], Any]]] = {}

    @abstractmethod
    def alpha(self, t: float, epochs: int) -> float:
        """The fraction of eps_g at 1-based epoch position ``t`` of a run of ``epochs``."""

    def check(self, epochs: int) -> None:
        """Validate the schedule against a run of ``epochs`` epochs.

        Raises:
            UserError: hinges or knots out of order or beyond the run.
        """
        _check_epochs(epochs)

    def with_seed(self, seed: int) -> Schedule:
        """This schedule with ``seed`` as its default seed (only random schedules use it)."""
        del seed
        return self

    def bind(
        self, eps: float, epochs: int, *, granularity: str = "epoch", seed: int = 0
    ) -> EpsSchedule:
        """Bind to a target eps (pixel units) and a run; see :class:`EpsSchedule`."""
        return EpsSchedule(self, eps=eps, epochs=epochs, granularity=granularity, seed=seed)

    def params(self) -> dict[str, Any]:
        """The parameters as JSON values, in canonical order."""
        out = {}
        for name in self._converters:
            value = getattr(self, name)
            out[name] = value.to_json() if isinstance(value, Position) else value
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: ``{"kind": ..., **params}``."""
        return {"kind": self.kind, **self.params()}

    @classmethod
    def from_args(cls, args: Mapping[str, object]) -> Schedule:
        """Build from raw parameter values (text or JSON), validating names and values."""
        for name in args:
            if name not in cls._converters:
                raise _unknown_param(cls.kind, name, list(cls._converters))
        kwargs = {
            name: convert(args[name], f"{cls.kind}: {name}")
            for name, convert in cls._converters.items()
            if name in args
        }
        return cls(**kwargs)

    def _text_args(self) -> list[str]:
        """``name=value`` items for the canonical text form."""
        return [f"{name}={getattr(self, name)}" for name in self._converters]

    def __str__(self) -> str:
        args = self._text_args()
        return f"{self.kind}({','.join(args)})" if args else self.kind


def _unknown_param(kind: str, name: str, valid: Sequence[str]) -> UserError:
    if not valid:
        return UserError(f"{kind} takes no parameters, got {name!r}; write just '{kind}'")
    return UserError(
        f"{kind}: unknown parameter {name!r}{did_you_mean(name, valid)}; valid: {', '.join(valid)}"
    )


def _ramp(t: float, start: float, end: float) -> float:
    """Linear 0 -> 1 between ``start`` and ``end``; a hard switch after ``start`` if equal."""
    if t <= start:
        return 0.0
    if t >= end:
        return 1.0
    return (t - start) / (end - start)


def _positions(p0: Position, p1: Position, epochs: int | None) -> tuple[float, float] | None:
    """Comparable values of two positions: resolved if bound, raw if unbound and same type."""
    if epochs is not None:
        return p0.resolve(epochs), p1.resolve(epochs)
    if p0.fraction == p1.fraction:
        return p0.value, p1.value
    return None


def _describe(p: Position, epochs: int | None) -> str:
    return p.describe(epochs) if epochs is not None else str(p)


def _check_order(kind: str, t1: Position, t2: Position, epochs: int | None) -> None:
    """Raise when t1 > t2 (known unbound if both are the same type) or t2 is beyond the run."""
    values = _positions(t1, t2, epochs)
    if values is not None and values[0] > values[1]:
        raise UserError(
            f"{kind}: t1={_describe(t1, epochs)} > t2={_describe(t2, epochs)}; t1 (end of the "
            "eps=0 phase) must not exceed t2 (first epoch at full eps), swap them"
        )
    if epochs is not None and t2.resolve(epochs) > epochs:
        raise UserError(
            f"{kind}: t2={t2.describe(epochs)} is beyond the run of {epochs} epochs; "
            f"use t2 <= {epochs} or a fraction of the run such as t2=0.74"
        )


_T1_DEFAULT = Position(0.24, fraction=True)
_T2_DEFAULT = Position(0.74, fraction=True)


@dataclass(frozen=True)
class Constant(Schedule):
    """alpha = 1 throughout: RFT-fix (standard fine-tuning when eps_g = 0)."""

    kind: ClassVar[str] = "constant"

    def alpha(self, t: float, epochs: int) -> float:
        """Always 1."""
        return 1.0


@dataclass(frozen=True)
class Hinge(Schedule):
    """Epsilon-Scheduling: 0 up to ``t1``, linear up to 1 at ``t2``, then 1.

    Numbers given instead of :class:`Position` are converted with :meth:`Position.of`.
    Defaults are the paper's 12/37 of 50 epochs as fractions: 0.24 and 0.74 of the run.
    """

    t1: Position = _T1_DEFAULT
    t2: Position = _T2_DEFAULT
    kind: ClassVar[str] = "hinge"
    _converters: ClassVar[Mapping[str, Callable[[object, str], Any]]] = {
        "t1": Position.of,
        "t2": Position.of,
    }

    def __post_init__(self) -> None:
        object.__setattr__(self, "t1", Position.of(self.t1, f"{self.kind}: t1"))
        object.__setattr__(self, "t2", Position.of(self.t2, f"{self.kind}: t2"))
        _check_order(self.kind, self.t1, self.t2, None)

    def check(self, epochs: int) -> None:
        """Refuse t1 > t2 and t2 beyond the run."""
        _check_order(self.kind, self.t1, self.t2, _check_epochs(epochs))

    def alpha(self, t: float, epochs: int) -> float:
        """Linear ramp between the resolved hinges."""
        return _ramp(t, self.t1.resolve(epochs), self.t2.resolve(epochs))


@dataclass(frozen=True)
class Cosine(Hinge):
    """Like :class:`Hinge` with a half-cosine ramp: ``(1 - cos(pi * r)) / 2``."""

    kind: ClassVar[str] = "cosine"

    def alpha(self, t: float, epochs: int) -> float:
        """Half-cosine ramp between the resolved hinges (0 and 1 exactly at the ends)."""
        r = super().alpha(t, epochs)
        if r in (0.0, 1.0):
            return r
        return 0.5 * (1.0 - math.cos(math.pi * r))


@dataclass(frozen=True)
class Linear(Schedule):
    """Linear warm-up from 0 at the start to 1 at ``t2``: a hinge with ``t1 = 0``.

    The default ``t2`` is 0.74 of the run, the paper's T2, so that ``linear`` differs from
    ``hinge`` only by the missing eps = 0 phase.
    """

    t2: Position = _T2_DEFAULT
    kind: ClassVar[str] = "linear"
    _converters: ClassVar[Mapping[str, Callable[[object, str], Any]]] = {"t2": Position.of}

    def __post_init__(self) -> None:
        object.__setattr__(self, "t2", Position.of(self.t2, f"{self.kind}: t2"))

    def check(self, epochs: int) -> None:
        """Refuse t2 beyond the run."""
        _check_order(self.kind, Position(0), self.t2, _check_epochs(epochs))

    def alpha(self, t: float, epochs: int) -> float:
        """Linear ramp from epoch position 0 to ``t2``."""
        return _ramp(t, 0.0, self.t2.resolve(epochs))


def _knots(value: object, what: str) -> tuple[tuple[Position, float], ...]:
    """Convert ``[(epoch, alpha), ...]`` (text or JSON values) into typed knots."""
    if not isinstance(value, (list, tuple)) or not value:
        raise UserError(
            f"{what}: needs at least one epoch:alpha knot, e.g. piecewise(0:0,10:0.5,30:1)"
        )
    knots = []
    for item in value:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise UserError(f"{what}: each knot is a pair [epoch, alpha], got {item!r}")
        knots.append((Position.of(item[0], f"{what} epoch"), _alpha_value(item[1], what)))
    return tuple(knots)


@dataclass(frozen=True)
class Piecewise(Schedule):
    """Linear interpolation between ``(epoch, alpha)`` knots; flat before the first, after the last.

    Knot epochs must increase strictly (checked again after resolving fractions when bound).
    """

    knots: tuple[tuple[Position, float], ...] = field(default=())
    kind: ClassVar[str] = "piecewise"
    _converters: ClassVar[Mapping[str, Callable[[object, str], Any]]] = {"knots": _knots}

    def __post_init__(self) -> None:
        object.__setattr__(self, "knots", _knots(self.knots, self.kind))
        self._check_increasing(None)

    def _check_increasing(self, epochs: int | None) -> None:
        for (p0, _), (p1, _) in itertools.pairwise(self.knots):
            values = _positions(p0, p1, epochs)
            if values is not None and values[1] <= values[0]:
                raise UserError(
                    f"{self.kind}: knot epochs must increase, but {_describe(p1, epochs)} "
                    f"follows {_describe(p0, epochs)}; sort the knots and drop duplicates"
                )

    def check(self, epochs: int) -> None:
        """Refuse knots out of order or beyond the run."""
        self._check_increasing(_check_epochs(epochs))
        last = self.knots[-1][0]
        if last.resolve(epochs) > epochs:
            raise UserError(
                f"{self.kind}: knot at epoch {last.describe(epochs)} is beyond the run of "
                f"{epochs} epochs; move it to <= {epochs} or use a fraction of the run"
            )

    def alpha(self, t: float, epochs: int) -> float:
        """Linear interpolation between the resolved knots."""
        points = [(p.resolve(epochs), a) for p, a in self.knots]
        if t <= points[0][0]:
            return points[0][1]
        for (x0, a0), (x1, a1) in itertools.pairwise(points):
            if t <= x1:
                return a1 if x1 == x0 else a0 + (a1 - a0) * (t - x0) / (x1 - x0)
        return points[-1][1]

    def params(self) -> dict[str, Any]:
        """``{"knots": [[epoch, alpha], ...]}``."""
        return {"knots": [[p.to_json(), a] for p, a in self.knots]}

    def _text_args(self) -> list[str]:
        return [f"{p}:{_format_number(a)}" for p, a in self.knots]


@dataclass(frozen=True)
class Uniform(Schedule):
    """alpha ~ U[0, 1], a fresh draw for every distinct ``t`` (once per epoch or per step).

    The draw is a BLAKE2b hash of ``(seed, t)``: reproducible and order-independent. With
    ``seed=None`` the run's seed is used once bound (:meth:`with_seed`); unbound, seed 0.
    """

    seed: int | None = None
    kind: ClassVar[str] = "uniform"
    _converters: ClassVar[Mapping[str, Callable[[object, str], Any]]] = {"seed": _seed}

    def __post_init__(self) -> None:
        _seed(self.seed, f"{self.kind}: seed")

    def with_seed(self, seed: int) -> Schedule:
        """A copy using ``seed`` unless a seed was given explicitly."""
        return self if self.seed is not None else replace(self, seed=_seed(seed, "seed"))

    def alpha(self, t: float, epochs: int) -> float:
        """``hash(seed, t)`` mapped to ``[0, 1)``."""
        key = f"robustft.uniform:{self.seed or 0}:{float(t).hex()}".encode()
        digest = hashlib.blake2b(key, digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64

    def _text_args(self) -> list[str]:
        return [] if self.seed is None else [f"seed={self.seed}"]


def convergence_epoch(
    val_accuracies: Sequence[float], patience: int, tolerance: float
) -> int | None:
    """First (1-based) epoch at which validation accuracy has converged, or None.

    Converged: ``patience`` consecutive epochs without an improvement of more than
    ``tolerance`` (absolute, accuracy as a fraction) over the best accuracy so far. The paper's
    automatic scheduler uses patience 5 and tolerance 2% (taken here as 2 points).
    """
    best, waited = -math.inf, 0
    for epoch, acc in enumerate(val_accuracies, start=1):
        if acc > best + tolerance:
            best, waited = acc, 0
        else:
            waited += 1
            if waited >= patience:
                return epoch
    return None


def first_epoch_reaching(val_accuracies: Sequence[float], fraction: float) -> int:
    """First (1-based) epoch whose accuracy reaches ``fraction`` of the final accuracy."""
    target = fraction * val_accuracies[-1]
    return next(e for e, acc in enumerate(val_accuracies, start=1) if acc >= target)


class AdaptiveSchedule(Schedule):
    """A schedule whose hinge T1 is chosen during the run from validation accuracy.

    Until resolved, ``alpha`` is 0 (clean fine-tuning). The trainer calls :meth:`resolve` with
    the run's data and uses the returned (pure) schedule; the choice is recorded in the run's
    results and recomputed identically on resume.
    """


@dataclass(frozen=True)
class Auto(AdaptiveSchedule):
    """The paper's automated scheduler (Section 6.3): eps = 0 until validation accuracy has
    converged (``patience`` epochs without a gain above ``tolerance``), then linear to eps_g at
    the last epoch. T1 is a function of the validation history, so it survives a resume."""

    patience: int = 5
    tolerance: float = 0.02
    kind: ClassVar[str] = "auto"
    _converters: ClassVar[Mapping[str, Callable[[object, str], Any]]] = {
        "patience": lambda v, what: _positive_int(v, what),
        "tolerance": lambda v, what: _alpha_value(v, what),
    }

    def alpha(self, t: float, epochs: int) -> float:
        """0 until resolved (the trainer resolves it after every epoch)."""
        return 0.0

    def resolve(self, val_accuracies: Sequence[float], epochs: int) -> Schedule:
        """``hinge(t1=T1, t2=epochs)`` once converged at epoch T1, else ``self``."""
        t1 = convergence_epoch(val_accuracies, self.patience, self.tolerance)
        if t1 is None:
            return self
        return Hinge(t1=Position(float(t1)), t2=Position(float(epochs)))


@dataclass(frozen=True)
class HingeAuto(AdaptiveSchedule):
    """``hinge(auto)``: T1 from a short clean probe run, the epoch at which clean fine-tuning
    reaches ``reach`` (90%) of its final validation accuracy (the paper's own rule for its
    T1 = 12); T2 at ``t2`` of the run (default 75%). The probe runs ``probe`` of the epochs."""

    t2: Position = field(default_factory=lambda: Position(0.75, fraction=True))
    probe: float = 0.5
    reach: float = 0.9
    kind: ClassVar[str] = "hinge-auto"
    _converters: ClassVar[Mapping[str, Callable[[object, str], Any]]] = {
        "t2": Position.of,
        "probe": lambda v, what: _alpha_value(v, what),
        "reach": lambda v, what: _alpha_value(v, what),
    }

    def __post_init__(self) -> None:
        object.__setattr__(self, "t2", Position.of(self.t2, "hinge(auto): t2"))
        if not 0 < self.probe <= 1 or not 0 < self.reach <= 1:
            raise UserError(
                f"hinge(auto): probe and reach must be fractions in (0, 1], got "
                f"probe={self.probe}, reach={self.reach}"
            )

    def check(self, epochs: int) -> None:
        """Refuse t2 beyond the run."""
        if self.t2.resolve(_check_epochs(epochs)) > epochs:
            raise UserError(f"hinge(auto): t2={self.t2} is beyond the run of {epochs} epochs")

    def alpha(self, t: float, epochs: int) -> float:
        """0 until resolved (the trainer runs the probe before the first epoch)."""
        return 0.0

    def probe_epochs(self, epochs: int) -> int:
        """Length of the clean probe run."""
        return max(2, round(self.probe * epochs))

    def resolve(self, val_accuracies: Sequence[float], epochs: int) -> Schedule:
        """``hinge(t1=T1, t2=...)`` from the probe's validation accuracies."""
        t2 = self.t2.resolve(epochs)
        t1 = min(float(first_epoch_reaching(val_accuracies, self.reach)), t2)
        return Hinge(t1=Position(t1), t2=Position(t2))

    def __str__(self) -> str:
        return f"hinge(t1=auto,{','.join(self._text_args())})"


def _positive_int(value: object, what: str) -> int:
    number = _parse_number(str(value), what) if isinstance(value, str) else value
    if isinstance(number, bool) or not isinstance(number, (int, float)) or number < 1:
        raise UserError(f"{what}: expected an integer >= 1, got {value!r}")
    if not float(number).is_integer():
        raise UserError(f"{what}: expected an integer >= 1, got {value!r}")
    return int(number)


SCHEDULES: Registry[type[Schedule]] = Registry(
    "schedule",
    {
        cls.kind: cls
        for cls in (Constant, Hinge, Linear, Cosine, Piecewise, Uniform, Auto, HingeAuto)
    },
)
"""The schedule kinds by name; :func:`parse_schedule` creates one from its text."""
KINDS: tuple[str, ...] = SCHEDULES.names()


def _split_call(text: str) -> tuple[str, list[str]]:
    """Split ``name(a,b)`` into the name and raw argument strings; check the parentheses."""
    match = _NAME_RE.fullmatch(text)
    if not match:
        raise UserError(f"malformed schedule {text!r}: expected a name first, {_EXAMPLE}")
    name, rest = match.group(1).lower(), match.group(2).strip()
    if not rest:
        return name, []
    opens, closes = rest.count("("), rest.count(")")
    if opens != closes:
        raise UserError(
            f"unbalanced parentheses in schedule {text!r} ({opens} '(' but {closes} ')'), "
            f"{_EXAMPLE}"
        )
    if not rest.startswith("("):
        raise UserError(f"malformed schedule {text!r}: expected '(' after {name!r}, {_EXAMPLE}")
    if opens > 1 or not rest.endswith(")"):
        raise UserError(f"malformed schedule {text!r}: one flat (...) list expected, {_EXAMPLE}")
    inner = rest[1:-1].strip()
    if not inner:
        return name, []
    items = [item.strip() for item in inner.split(",")]
    if "" in items:
        raise UserError(f"malformed schedule {text!r}: empty argument (stray ',')")
    return name, items


def _split_pair(item: str, sep: str, text: str) -> tuple[str, str]:
    """Split ``a=b`` or ``a:b``, refusing a missing side."""
    left, _, right = (part.strip() for part in item.partition(sep))
    if not left:
        raise UserError(f"malformed schedule {text!r}: missing name or epoch before {sep!r}")
    if not right or sep in right:
        raise UserError(f"malformed schedule {text!r}: missing or bad value in {item!r}")
    return left, right


def _keyword_args(kind: str, items: list[str], text: str) -> dict[str, str]:
    """Parse ``name=value`` items into a dict, refusing knots and duplicates."""
    args: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"{kind}: expected name=value, got {item!r}; {_EXAMPLE}")
        key, value = _split_pair(item, "=", text)
        key = key.lower()
        if key in args:
            raise UserError(f"{kind}: parameter {key!r} given twice in {text!r}")
        args[key] = value
    return args


def parse_schedule(text: str) -> Schedule:
    """Parse a schedule's text form (grammar in the module docstring).

    Example:
        >>> str(parse_schedule("hinge(t1=12, t2=37)"))
        'hinge(t1=12,t2=37)'

    Raises:
        UserError: unknown name or parameter, malformed syntax or invalid values.
    """
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"empty schedule; write one, {_EXAMPLE}")
    text = text.strip()
    name, items = _split_call(text)
    cls = SCHEDULES.lookup(name)
    if cls is Hinge and any(item.replace(" ", "").lower() in ("auto", "t1=auto") for item in items):
        rest = [i for i in items if i.replace(" ", "").lower() not in ("auto", "t1=auto")]
        return HingeAuto.from_args(_keyword_args("hinge(auto)", rest, text))
    if cls is not Piecewise:
        return cls.from_args(_keyword_args(name, items, text))
    if any(":" not in item for item in items):
        raise UserError("piecewise takes epoch:alpha knots, e.g. piecewise(0:0,10:0.5,30:1)")
    return cls.from_args({"knots": [_split_pair(item, ":", text) for item in items]})


def schedule_from_dict(data: Mapping[str, Any]) -> Schedule:
    """Inverse of :meth:`Schedule.to_dict`.

    Raises:
        UserError: missing or unknown ``kind``, unknown parameters or invalid values.
    """
    if not isinstance(data, Mapping) or "kind" not in data:
        raise UserError(f"a schedule dict needs a 'kind' key, got {data!r}")
    kind = str(data["kind"]).lower()
    cls = SCHEDULES.lookup(kind)
    args = {k: v for k, v in data.items() if k != "kind"}
    if cls is Uniform and args.get("seed", 0) is None:
        del args["seed"]
    return cls.from_args(args)


@dataclass(frozen=True)
class EpsSchedule:
    """A schedule bound to a target eps and a run: the trainer's source of the current eps.

    Attributes:
        schedule: the alpha schedule (a :class:`Schedule`; text is parsed).
        eps: the target perturbation eps_g in pixel units (``8/255``; text is parsed).
        epochs: the number of training epochs.
        granularity: ``"epoch"`` (eps fixed within an epoch) or ``"step"`` (a
            :data:`Granularity`; typed ``str`` because it usually comes from a config, and
            validated here).
        seed: default seed for random schedules (``uniform`` without a seed); the run's seed.

    Raises:
        UserError: at construction, for any invalid field or a schedule that does not fit.
    """

    schedule: Schedule
    eps: float
    epochs: int
    granularity: str = "epoch"
    seed: int = 0

    def __post_init__(self) -> None:
        schedule: object = self.schedule
        if isinstance(schedule, str):
            schedule = parse_schedule(schedule)
        if not isinstance(schedule, Schedule):
            raise UserError(f"schedule must be a Schedule or its text form, got {schedule!r}")
        if self.granularity not in GRANULARITIES:
            raise unknown_name("granularity", str(self.granularity), GRANULARITIES)
        seed = _seed(self.seed, "seed")
        if seed is None:
            raise UserError("seed must be an integer >= 0 (the run's seed), got None")
        _check_epochs(self.epochs)
        schedule.check(self.epochs)
        object.__setattr__(self, "schedule", schedule.with_seed(seed))
        object.__setattr__(self, "eps", parse_eps(self.eps))
        object.__setattr__(self, "seed", seed)

    def progress(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """The 1-based position ``t`` used for ``step`` (0-based) of ``epoch`` (1-based).

        Raises:
            ValueError: epoch, step or steps_per_epoch out of range (a caller bug).
        """
        if not 1 <= epoch <= self.epochs:
            raise ValueError(f"epoch must be in 1..{self.epochs}, got {epoch}")
        if steps_per_epoch < 1 or not 0 <= step < steps_per_epoch:
            raise ValueError(f"need 0 <= step < steps_per_epoch, got {step} of {steps_per_epoch}")
        if self.granularity == "epoch":
            return float(epoch)
        return (epoch - 1) + (step + 1) / steps_per_epoch

    def alpha_at(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """The fraction of eps in use at ``step`` of ``epoch``, in ``[0, 1]``."""
        return self.schedule.alpha(self.progress(epoch, step, steps_per_epoch), self.epochs)

    def eps_at(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """The perturbation size (pixel units) at ``step`` (0-based) of ``epoch`` (1-based)."""
        return self.alpha_at(epoch, step, steps_per_epoch) * self.eps

    def per_epoch(self) -> list[float]:
        """eps for epochs 1..epochs (for ``"step"``: the value at each epoch's last step)."""
        return [self.schedule.alpha(float(e), self.epochs) * self.eps for e in self._epochs()]

    def _epochs(self) -> range:
        return range(1, self.epochs + 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the schedule as its dict)."""
        return {
            "schedule": self.schedule.to_dict(),
            "eps": self.eps,
            "epochs": self.epochs,
            "granularity": self.granularity,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpsSchedule:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                schedule_from_dict(data["schedule"]),
                eps=data["eps"],
                epochs=data["epochs"],
                granularity=data.get("granularity", "epoch"),
                seed=data.get("seed", 0),
            )
        except KeyError as err:
            raise UserError(f"eps schedule dict is missing {err.args[0]!r}") from None
