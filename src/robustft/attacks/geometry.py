"""Threat-model geometry: everything an attack needs to know about its norm.

A :class:`Geometry` is a stateless strategy object, one per norm and input space
(:mod:`robustft.attacks.space`). Attacks never branch on the norm name or the kind of input
inside their loops; they ask the geometry for a random start, an ascent direction and a
projection. Tensors are batches ``(B, ...)``: images ``(B, C, H, W)`` in ``[0, 1]`` pixel units
in the pixel space, packed text inputs ``(B, L, D + 1)`` in the embedding space; ``eps`` is a
``(B,)`` tensor of per-example budgets in the same units.

The feasible set is the eps-ball around the clean input intersected with the input space's box
(``[0, 1]`` for pixels; for text, the frozen rows and channel at their clean values).
:meth:`Geometry.project` sets the frozen coordinates back to the clean input's (none in pixel
space), projects onto the ball, then clamps to the box. Because the clean input lies in the box,
clamping moves each coordinate towards it and never increases the distance, so the result lies
in both sets (up to float rounding of about 1e-7 for l2). For text the box fixes some
coordinates and leaves the others unbounded, so this is the exact Euclidean projection.

Norms: ``linf`` (every coordinate moves by at most eps), ``l2`` (the Euclidean norm of the whole
perturbation is at most eps) and, for text, ``l2-token`` (each token's perturbation, a vector
over its D embedding coordinates, has l2 norm at most eps; an example's norm is the largest
over its tokens).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from robustft.attacks.space import InputSpace, PixelSpace, get_space
from robustft.errors import UserError, unknown_name
from robustft.utils.registry import Registry

_TINY = 1e-12  # guards divisions by a norm that may be zero


def _per_example(values: Tensor, like: Tensor) -> Tensor:
    """Reshape a (B,) tensor to (B, 1, ..., 1) so that it broadcasts against ``like``.

    Floating values are cast to ``like``'s dtype; boolean masks stay boolean.
    """
    if values.dtype != torch.bool:
        values = values.to(like.dtype)
    return values.view(-1, *([1] * (like.ndim - 1)))


def _draw(
    draw: str, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Draw ``rand`` or ``randn`` noise (float32) on the generator's device, then move it.

    Drawing on the generator's device (the CPU by default) makes results independent of the
    device the model runs on.
    """
    source = generator.device if generator is not None else torch.device("cpu")
    sample = torch.rand if draw == "rand" else torch.randn
    return sample(shape, generator=generator, device=source).to(device)


def _masked(values: Tensor, movable: Tensor | None) -> Tensor:
    """``values`` with the frozen coordinates set to zero (unchanged when all move)."""
    return values if movable is None else torch.where(movable, values, torch.zeros_like(values))


class Geometry(ABC):
    """Operations of one threat model: an eps-ball of one norm, intersected with the box of an
    input space (pixel space unless another is given).

    Args:
        space: the input space the points live in (:class:`~robustft.attacks.space.PixelSpace`
            when None).
    """

    name: ClassVar[str]
    spaces: ClassVar[tuple[str, ...]] = ("pixel", "embedding")  # the input spaces it applies to

    def __init__(self, space: InputSpace | None = None) -> None:
        self.space = PixelSpace() if space is None else space

    @abstractmethod
    def norm(self, delta: Tensor) -> Tensor:
        """Per-example norm of a perturbation.

        Args:
            delta: (B, ...) perturbations.

        Returns:
            (B,) float32 norms.
        """

    def ascent_direction(self, grad: Tensor, x: Tensor | None = None) -> Tensor:
        """The steepest-ascent direction for a gradient: norm 1 in this geometry's norm, zero
        where the gradient is zero.

        Args:
            grad: (B, ...) input gradients of the loss.
            x: the clean inputs the points move around; given, the direction is taken within
                the coordinates the input space lets move (zero on padding and special tokens
                and on the kind channel of text; every pixel moves).

        Returns:
            (B, ...) directions, same dtype as ``grad``.
        """
        if x is not None:
            grad = self.space.restrict(grad, x)
        return self._direction(grad)

    @abstractmethod
    def _direction(self, grad: Tensor) -> Tensor:
        """:meth:`ascent_direction` of a gradient already zero on the frozen coordinates."""

    @abstractmethod
    def _noise(
        self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
    ) -> tuple[Tensor, ...]:
        """The random draws of a start for a batch of ``shape``; each has the batch dimension
        first, so that rows can be taken from them (:meth:`random_init_rows`)."""

    @abstractmethod
    def _delta(self, noise: Sequence[Tensor], eps: Tensor, movable: Tensor | None) -> Tensor:
        """A float32 perturbation inside the eps-ball (before the box) made from ``noise``,
        zero on the frozen coordinates (``movable`` false; None: every coordinate moves)."""

    @abstractmethod
    def _project_ball(self, x_adv: Tensor, x: Tensor, eps: Tensor) -> Tensor:
        """Project onto the eps-ball around ``x`` (ignoring the input space's box)."""

    def random_init(
        self, x: Tensor, eps: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """A random starting point in the eps-ball around ``x``, inside the input space's box.

        l-inf: uniform in the cube. l2: uniform direction, radius uniform in ``[0, eps]``.
        l2-token: the same, per token. Frozen coordinates (text) stay at ``x``.

        Args:
            x: clean inputs (B, ...) (images in [0, 1], or packed text).
            eps: (B,) budgets.
            generator: source of randomness (the global one when ``None``).

        Returns:
            (B, ...) points in the eps-ball around ``x`` and in the box, dtype of ``x``.
        """
        noise = self._noise(tuple(x.shape), generator, x.device)
        return self._start(x, noise, eps)

    def random_init_rows(
        self, x: Tensor, eps_all: Tensor, generator: torch.Generator | None, *, first: int
    ) -> Tensor:
        """Rows ``first .. first + len(x)`` of the start :meth:`random_init` would draw for a
        batch of ``len(eps_all)`` examples: the same values, and the generator advanced the
        same way (a rank of a data-parallel run starts its shard as one process would).

        Args:
            x: this shard's clean inputs (b, ...).
            eps_all: (B,) budgets of the whole batch, B >= first + b.
        """
        rows = slice(first, first + len(x))
        noise = self._noise((len(eps_all), *x.shape[1:]), generator, x.device)
        return self._start(x, [n[rows] for n in noise], eps_all[rows])

    def _start(self, x: Tensor, noise: Sequence[Tensor], eps: Tensor) -> Tensor:
        delta = self._delta(noise, eps, self.space.movable(x))
        return self.project(x + delta.to(x.dtype), x, eps)

    def project(self, x_adv: Tensor, x: Tensor, eps: Tensor) -> Tensor:
        """Project ``x_adv`` into the eps-ball around ``x`` intersected with the input space's
        box.

        Points already feasible are returned unchanged (bit for bit); ``eps == 0`` gives ``x``.

        Args:
            x_adv: (B, ...) candidate points.
            x: (B, ...) clean inputs.
            eps: (B,) budgets.

        Returns:
            (B, ...) feasible points, dtype of ``x_adv``.
        """
        held = self.space.hold(x_adv, x)  # frozen coordinates (text) at x: exact projection
        return self.space.clamp(self._project_ball(held, x, eps), x)


class LinfGeometry(Geometry):
    """The l-infinity ball: every coordinate (pixel, embedding channel) moves by at most eps."""

    name: ClassVar[str] = "linf"

    def norm(self, delta: Tensor) -> Tensor:
        return delta.detach().flatten(1).abs().amax(dim=1).float()

    def _direction(self, grad: Tensor) -> Tensor:
        return grad.sign()

    def _noise(
        self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
    ) -> tuple[Tensor, ...]:
        return (_draw("rand", shape, generator, device),)

    def _delta(self, noise: Sequence[Tensor], eps: Tensor, movable: Tensor | None) -> Tensor:
        unit = _masked(2.0 * noise[0] - 1.0, movable)
        return unit * _per_example(eps, unit)

    def _project_ball(self, x_adv: Tensor, x: Tensor, eps: Tensor) -> Tensor:
        radius = _per_example(eps, x)
        return torch.minimum(torch.maximum(x_adv, x - radius), x + radius)


class L2Geometry(Geometry):
    """The l2 ball: the perturbation's Euclidean norm (over all pixels and channels, or all
    tokens' embedding coordinates) is <= eps."""

    name: ClassVar[str] = "l2"

    def norm(self, delta: Tensor) -> Tensor:
        lengths: Tensor = torch.linalg.vector_norm(delta.detach().flatten(1).float(), dim=1)
        return lengths

    def _direction(self, grad: Tensor) -> Tensor:
        length = grad.flatten(1).float().norm(dim=1).clamp_min(_TINY)
        return grad / _per_example(length, grad)

    def _noise(
        self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
    ) -> tuple[Tensor, ...]:
        return _draw("randn", shape, generator, device), _draw("rand", shape[:1], generator, device)

    def _delta(self, noise: Sequence[Tensor], eps: Tensor, movable: Tensor | None) -> Tensor:
        # A uniform random direction (normalised Gaussian) times a radius uniform in [0, eps].
        # Not uniform in volume: that would need radius eps * U^(1/d), which puts nearly every
        # start on the sphere in high dimension; starting closer to x makes a 10-step PGD of
        # 0.25 * eps stronger (digits TinyCNN, l2 eps 1.0: 27% robust accuracy vs 29% from the
        # sphere). torchattacks' PGDL2 draws its start the same way.
        direction = _masked(noise[0], movable)
        direction = direction / _per_example(
            direction.flatten(1).norm(dim=1).clamp_min(_TINY), direction
        )
        radius = eps.float() * noise[1]
        return direction * _per_example(radius, direction)

    def _project_ball(self, x_adv: Tensor, x: Tensor, eps: Tensor) -> Tensor:
        delta = x_adv - x
        length = self.norm(delta)
        eps = eps.float()
        # eps == 0 always shrinks, to x exactly, even when a tiny delta's norm underflows to 0
        outside = (length > eps) | (eps == 0)
        scale = torch.where(outside, eps / length.clamp_min(_TINY), torch.ones_like(length))
        shrunk = x + delta * _per_example(scale, delta)
        return torch.where(_per_example(outside, x_adv), shrunk, x_adv)


def _token_lengths(delta: Tensor) -> Tensor:
    """(B, L) float32 l2 norms of the rows of (B, L, C) (over the last dimension)."""
    lengths: Tensor = torch.linalg.vector_norm(delta.float(), dim=-1)
    return lengths


class L2TokenGeometry(Geometry):
    """The per-token l2 ball of text: each token's perturbation (its row of a packed input,
    whose kind channel never moves) has Euclidean norm <= eps; the per-example norm is the
    largest over the tokens. Embedding space only: a ball per image row would mean nothing.

    Each token is its own l2 ball: the ascent direction normalises the gradient per token (every
    token with a non-zero gradient moves a full step, as SMART's and TAVAT's per-token
    normalisation), the random start is a uniform direction and a radius uniform in
    ``[0, eps]`` per token (the l2 geometry's draw, per token), and the projection shrinks each
    token outside its ball onto it.
    """

    name: ClassVar[str] = "l2-token"
    spaces: ClassVar[tuple[str, ...]] = ("embedding",)

    def norm(self, delta: Tensor) -> Tensor:
        return _token_lengths(delta.detach()).flatten(1).amax(dim=1)

    def _direction(self, grad: Tensor) -> Tensor:
        length = _token_lengths(grad).clamp_min(_TINY).unsqueeze(-1)
        return grad / length.to(grad.dtype)

    def _noise(
        self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
    ) -> tuple[Tensor, ...]:
        return (
            _draw("randn", shape, generator, device),
            _draw("rand", shape[:-1], generator, device),
        )

    def _delta(self, noise: Sequence[Tensor], eps: Tensor, movable: Tensor | None) -> Tensor:
        direction = _masked(noise[0], movable)
        direction = direction / _token_lengths(direction).clamp_min(_TINY).unsqueeze(-1)
        radius = _per_example(eps.float(), noise[1]) * noise[1]  # (B, L)
        return direction * radius.unsqueeze(-1)

    def _project_ball(self, x_adv: Tensor, x: Tensor, eps: Tensor) -> Tensor:
        delta = x_adv - x
        length = _token_lengths(delta)  # (B, L)
        radius = _per_example(eps.float(), length)
        # eps == 0 always shrinks, to x exactly (as in l2)
        outside = (length > radius) | (radius == 0)
        scale = torch.where(outside, radius / length.clamp_min(_TINY), torch.ones_like(length))
        shrunk = x + delta * scale.unsqueeze(-1).to(delta.dtype)
        return torch.where(outside.unsqueeze(-1), shrunk, x_adv)


GEOMETRIES: Registry[type[Geometry]] = Registry(
    "norm", {g.name: g for g in (LinfGeometry, L2Geometry, L2TokenGeometry)}
)
"""The threat models by norm name (``linf``, ``l2``, ``l2-token``:
:data:`robustft.config.NORMS`)."""


@functools.cache
def get_geometry(name: str, space: str = "pixel") -> Geometry:
    """Return the geometry of a norm in an input space (one shared object per pair).

    Args:
        name: ``"linf"``, ``"l2"`` or ``"l2-token"`` (text only).
        space: ``"pixel"`` (images) or ``"embedding"`` (packed text inputs).

    Raises:
        UserError: an unknown norm or space (the message suggests the closest one), or a norm
            that does not apply to the space (``l2-token`` with images).
    """
    input_space = get_space(space)
    others = [n for n, g in GEOMETRIES.items() if space in g.spaces]
    if not GEOMETRIES.is_known(name):
        raise unknown_name("norm", str(name), others)  # the norms of this space
    cls = GEOMETRIES[name]
    if space not in cls.spaces:
        applies = " or ".join(get_space(s).inputs for s in cls.spaces)
        raise UserError(
            f"norm '{name}' applies to {applies}, not to {input_space.inputs}; use "
            f"{' or '.join(others)}"
        )
    return cls(input_space)
