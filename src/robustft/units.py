"""Perturbation sizes: parsing and formatting in pixel units.

Images live in ``[0, 1]``, so ``eps`` is a fraction of the pixel range: ``8/255`` is the
classic l-inf budget. Text forms accepted everywhere (config, CLI): ``"8/255"``, ``"0.0314"``,
``"0"``. A bare number greater than 1 (``"8"``) is refused, because it almost always means
``8/255`` written in 0-255 units.
"""

from __future__ import annotations

import math
from fractions import Fraction

from robustft.errors import UserError


def parse_eps(value: object, *, name: str = "eps", upper: float = 1.0) -> float:
    """Parse a perturbation size given as a number or text such as ``"8/255"``.

    Args:
        value: a float/int, or a string ``"a/b"`` or ``"0.03"``.
        name: what the value is called, for error messages.
        upper: the largest accepted value (``1.0`` for l-inf pixel units).

    Returns:
        eps as a float in pixel units, in ``[0, upper]``.

    Raises:
        UserError: the text does not parse, or the value is negative, non-finite or too large.
    """
    if isinstance(value, bool):
        raise UserError(f"{name}: expected a number such as 8/255, got {value!r}")
    if isinstance(value, (int, float)):
        eps = float(value) if abs(value) < 1e308 else math.inf  # huge ints: no OverflowError
    elif isinstance(value, str):
        text = value.strip()
        try:
            top, slash, bottom = text.partition("/")  # "8/255", and "2.5/255" as format_eps writes
            eps = float(Fraction(top) / Fraction(bottom)) if slash else float(text)
        except (ValueError, ZeroDivisionError):
            raise UserError(
                f"{name}: cannot parse {value!r}; write a pixel fraction such as 8/255 or 0.03"
            ) from None
        except OverflowError:  # "1000...0/1": too large for a float, refused below
            eps = math.inf
    else:
        raise UserError(f"{name}: expected a number such as 8/255, got {value!r}")
    if not math.isfinite(eps) or eps < 0:
        raise UserError(f"{name}: must be a finite number >= 0, got {value!r}")
    if eps > upper:
        text = str(value).strip()
        plain = "/" not in text and eps <= 255 and upper <= 1.0
        hint = f" (did you mean {text}/255?)" if plain else ""
        raise UserError(f"{name}: {value!r} exceeds {upper:g} in [0,1] pixel units{hint}")
    return eps


def eps_upper(norm: str) -> float:
    """The largest eps accepted in ``norm``: 1 in l-inf (the whole pixel range), 1e6 in l2
    (l2 sizes grow with the image size: no natural bound)."""
    return 1.0 if norm == "linf" else 1e6


def format_eps(eps: float, norm: str = "linf") -> str:
    """Format eps for humans, in one unit per norm: l-inf in 255ths of the pixel range
    (``8/255``, ``2.29/255`` between grid points), l2 as a plain number (``0.5``)."""
    if norm != "linf":
        return f"{eps:.4g}"
    k = eps * 255
    if abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{k:.2f}".rstrip("0").rstrip(".") + "/255"


def default_eps_step(norm: str, eps_max: float) -> float:
    """The grid step of an evaluation in ``norm`` that names no step of its own: ``1/255`` in
    l-inf (the pixel quantum: the grid of 8/255 has 9 points), ``eps_max / 8`` in l2 (l2 sizes
    have no quantum, and 0.5, 1.0 or 3.0 all differ in scale: eighths give the same 9-point
    grid as l-inf 8/255 and divide any eps_max exactly)."""
    return 1 / 255 if norm == "linf" else eps_max / 8


MAX_GRID_POINTS = 10_000  # every point is an attack over the test set


def eps_grid(eps_max: float, eps_step: float = 1 / 255) -> list[float]:
    """The evaluation grid ``0, step, 2*step, ..., eps_max`` (eps_max included).

    Raises:
        UserError: eps_max is not a (near) multiple of eps_step, or step <= 0.
    """
    if eps_step <= 0:
        raise UserError(f"eps step must be > 0, got {eps_step}")
    n = eps_max / eps_step
    if not n <= MAX_GRID_POINTS:  # also inf and nan
        raise UserError(
            f"eps grid 0..{format_eps(eps_max)} in steps of {eps_step:.3g} needs {n:.3g} steps "
            f"(at most {MAX_GRID_POINTS}); use a larger eps step such as 1/255"
        )
    if abs(n - round(n)) > 1e-6:
        raise UserError(
            f"eps max {format_eps(eps_max)} is not a multiple of step {format_eps(eps_step)}"
        )
    return [i * eps_step for i in range(round(n) + 1)]
