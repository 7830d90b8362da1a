"""Threat-model geometry: everything an attack needs to know about its norm.

A :class:`Geometry` is a stateless strategy object, one per norm. Attacks never branch on the
norm name inside their loops; they ask the geometry for a random start, an ascent direction and a
projection. All tensors are image batches ``(B, C, H, W)`` (any ``(B, ...)`` shape works) in
``[0, 1]`` pixel units; ``eps`` is a ``(B,)`` tensor of per-example budgets in the same units.

The feasible set is the eps-ball around the clean input intersected with the box ``[0, 1]``.
:meth:`Geometry.project` first projects onto the ball, then clamps to the box. Because the clean
input lies in the box, clamping moves each coordinate towards it and never increases the
distance, so the result lies in both sets (up to float rounding of about 1e-7 for l2).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

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


class Geometry(ABC):
    """Operations of one threat model (an ``l_p`` ball in pixel space, intersected with [0, 1])."""

    name: ClassVar[str]

    @abstractmethod
    def norm(self, delta: Tensor) -> Tensor:
        """Per-example norm of a perturbation.

        Args:
            delta: (B, ...) perturbations.

        Returns:
            (B,) float32 norms.
        """

    @abstractmethod
    def ascent_direction(self, grad: Tensor) -> Tensor:
        """The steepest-ascent direction of unit norm for a gradient (zero where grad is zero).

        Args:
            grad: (B, ...) input gradients of the loss.

        Returns:
            (B, ...) directions, same dtype as ``grad``.
        """

    @abstractmethod
    def _random_delta(
        self,
        shape: tuple[int, ...],
        eps: Tensor,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> Tensor:
        """A float32 random perturbation inside the eps-ball (before clamping to [0, 1])."""

    @abstractmethod
    def _project_ball(self, x_adv: Tensor, x: Tensor, eps: Tensor) -> Tensor:
        """Project onto the eps-ball around ``x`` (ignoring the [0, 1] box)."""

    def random_init(
        self, x: Tensor, eps: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """A random starting point in the eps-ball around ``x``, clamped to [0, 1].

        l-inf: uniform in the cube. l2: uniform direction, radius uniform in ``[0, eps]``.

        Args:
            x: clean inputs (B, ...) in [0, 1].
            eps: (B,) budgets in pixel units.
            generator: source of randomness (the global one when ``None``).

        Returns:
            (B, ...) points in the eps-ball around ``x`` and in [0, 1], dtype of ``x``.
        """
        delta = self._random_delta(tuple(x.shape), eps, generator, x.device)
        return self.project(x + delta.to(x.dtype), x, eps)

    def random_init_rows(
        self, x: Tensor, eps_all: Tensor, generator: torch.Generator | None, *, first: int
    ) -> Tensor:
        """Rows ``first .. first + len(x)`` of the start :meth:`random_init` would draw for a
        batch of ``len(eps_all)`` examples: the same values, and the generator advanced the
        same way (a rank of a data-parallel run starts its shard as one process would).

        Args:
            x: this shard's clean inputs (b, ...) in [0, 1].
            eps_all: (B,) budgets of the whole batch, B >= first + b.
        """
        rows = slice(first, first + len(x))
        shape = (len(eps_all), *x.shape[1:])
        delta = self._random_delta(shape, eps_all, generator, x.device)[rows]
        return self.project(x + delta.to(x.dtype), x, eps_all[rows])

    def project(self, x_adv: Tensor, x: Tensor, eps: Tensor) -> Tensor:
        """Project ``x_adv`` into the eps-ball around ``x`` intersected with [0, 1].

        Points already feasible are returned unchanged (bit for bit); ``eps == 0`` gives ``x``.

        Args:
            x_adv: (B, ...) candidate points.
            x: (B, ...) clean inputs in [0, 1].
            eps: (B,) budgets in pixel units.

        Returns:
            (B, ...) feasible points, dtype of ``x_adv``.
        """
        return self._project_ball(x_adv, x, eps).clamp(0.0, 1.0)


class LinfGeometry(Geometry):
    """The l-infinity ball: every pixel moves by at most eps."""

    name: ClassVar[str] = "linf"

    def norm(self, delta: Tensor) -> Tensor:
        return delta.detach().flatten(1).abs().amax(dim=1).float()

    def ascent_direction(self, grad: Tensor) -> Tensor:
        return grad.sign()

    def _random_delta(
        self,
        shape: tuple[int, ...],
        eps: Tensor,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> Tensor:
        unit = 2.0 * _draw("rand", shape, generator, device) - 1.0
        return unit * _per_example(eps, unit)

    def _project_ball(self, x_adv: Tensor, x: Tensor, eps: Tensor) -> Tensor:
        radius = _per_example(eps, x)
        return torch.minimum(torch.maximum(x_adv, x - radius), x + radius)


class L2Geometry(Geometry):
    """The l2 ball: the perturbation's Euclidean norm (over all pixels and channels) is <= eps."""

    name: ClassVar[str] = "l2"

    def norm(self, delta: Tensor) -> Tensor:
        lengths: Tensor = torch.linalg.vector_norm(delta.detach().flatten(1).float(), dim=1)
        return lengths

    def ascent_direction(self, grad: Tensor) -> Tensor:
        length = grad.flatten(1).float().norm(dim=1).clamp_min(_TINY)
        return grad / _per_example(length, grad)

    def _random_delta(
        self,
        shape: tuple[int, ...],
        eps: Tensor,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> Tensor:
        # A uniform random direction (normalised Gaussian) times a radius uniform in [0, eps].
        # Not uniform in volume: that would need radius eps * U^(1/d), which puts nearly every
        # start on the sphere in high dimension; starting closer to x makes a 10-step PGD of
        # 0.25 * eps stronger (digits TinyCNN, l2 eps 1.0: 27% robust accuracy vs 29% from the
        # sphere). torchattacks' PGDL2 draws its start the same way.
        direction = _draw("randn", shape, generator, device)
        direction = direction / _per_example(
            direction.flatten(1).norm(dim=1).clamp_min(_TINY), direction
        )
        radius = eps.float() * _draw("rand", (shape[0],), generator, device)
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


GEOMETRIES: Registry[Geometry] = Registry(
    "norm", {g.name: g for g in (LinfGeometry(), L2Geometry())}
)
"""The threat models by norm name (``linf``, ``l2``: :data:`robustft.config.NORMS`)."""


def get_geometry(name: str) -> Geometry:
    """Return the geometry of a norm: ``"linf"`` or ``"l2"``.

    Raises:
        UserError: the name is not a known norm (the message suggests the closest one).
    """
    return GEOMETRIES.lookup(name)
