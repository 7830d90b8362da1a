"""Input spaces: where an attack's inputs live, and the box its points must stay in.

An :class:`InputSpace` is a stateless strategy object, one per kind of input, that a
:class:`~robustft.attacks.geometry.Geometry` is bound to. It says which inputs are valid
(:meth:`~InputSpace.check`), which coordinates an attack may move (:meth:`~InputSpace.movable`)
and how a point is brought back into the box of feasible values (:meth:`~InputSpace.clamp`). The
box is a function of the clean input ``x`` alone, so an attack that drops examples from its
batch (early exit's compaction) keeps the right box for the others by indexing ``x``.

* ``pixel``: images (B, C, H, W) in [0, 1]; every coordinate moves, the box is [0, 1].
* ``embedding``: packed text inputs (B, L, D + 1) (:mod:`robustft.models.text`): the first D
  channels of each row are a token's embedding (divided by the model's unit scale), the last
  is the token's kind: :data:`PADDING` (0), :data:`SPECIAL` (1, such as [CLS] and [SEP]:
  attended, never perturbed) or :data:`ORDINARY` (2). Padding and special rows, and the kind
  channel itself, are frozen (lower bound = upper bound = ``x``); the embedding coordinates of
  ordinary rows are unbounded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

from robustft.errors import UserError
from robustft.utils.packed import ORDINARY, PADDING, SPECIAL
from robustft.utils.registry import Registry

"""The token kinds of the last channel of a packed text input."""


def _check_shapes(x: Tensor, y: Tensor, x_init: Tensor | None, layout: str, ndim: int) -> None:
    """Refuse an ``x`` of the wrong rank, a ``y`` that is not (B,), an ``x_init`` not shaped
    as ``x``."""
    if x.ndim != ndim or y.shape != (x.shape[0],):
        raise UserError(f"expected x {layout} and y (B,), got {tuple(x.shape)}, {tuple(y.shape)}")
    if x_init is not None and x_init.shape != x.shape:
        raise UserError(
            f"x_init must have the shape of x {tuple(x.shape)}, got {tuple(x_init.shape)}"
        )


class InputSpace(ABC):
    """The inputs of one modality: their check, their movable coordinates, their box."""

    name: ClassVar[str]
    inputs: ClassVar[str]  # what the inputs are, for messages: "images"

    @abstractmethod
    def check(self, x: Tensor, y: Tensor, x_init: Tensor | None) -> None:
        """Check the inputs of an attack call (done once per call, at its entry).

        Raises:
            UserError: wrong shapes, or values outside the space.
        """

    @abstractmethod
    def movable(self, x: Tensor) -> Tensor | None:
        """The coordinates an attack may change around the clean input ``x``.

        Returns:
            A bool tensor broadcastable to ``x`` (true: movable), or None where every
            coordinate moves.
        """

    @abstractmethod
    def clamp(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Bring ``x_adv`` into the box of feasible values around ``x`` (coordinate-wise: each
        coordinate moves towards ``x``'s, so no distance to ``x`` grows); points inside are
        returned unchanged."""

    def restrict(self, values: Tensor, x: Tensor) -> Tensor:
        """``values`` (a gradient, a perturbation) set to zero on the frozen coordinates."""
        mask = self.movable(x)
        return values if mask is None else torch.where(mask, values, torch.zeros_like(values))

    def hold(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """``x_adv`` with the frozen coordinates set back to ``x``'s (unchanged when every
        coordinate moves). A geometry projects onto its ball after this, so that a frozen
        coordinate's displacement never counts against the budget of the movable ones."""
        mask = self.movable(x)
        return x_adv if mask is None else torch.where(mask, x_adv, x.to(x_adv.dtype))


class PixelSpace(InputSpace):
    """Images (B, C, H, W) with values in [0, 1]: the box is [0, 1], every pixel moves."""

    name: ClassVar[str] = "pixel"
    inputs: ClassVar[str] = "images"

    def check(self, x: Tensor, y: Tensor, x_init: Tensor | None) -> None:
        """Check shapes, and that images are in [0, 1] (a normalised batch is the classic
        mistake)."""
        _check_shapes(x, y, x_init, "(B,C,H,W)", 4)
        if x.numel() and bool(((x < 0) | (x > 1)).any()):
            raise UserError(
                f"attacks expect images in [0, 1] (got values in [{float(x.min()):.3g}, "
                f"{float(x.max()):.3g}]); put mean/std normalisation inside the model and clamp "
                "after resizing"
            )

    def movable(self, x: Tensor) -> Tensor | None:
        return None

    def clamp(self, x_adv: Tensor, x: Tensor) -> Tensor:
        return x_adv.clamp(0.0, 1.0)


class EmbeddingSpace(InputSpace):
    """Packed text inputs (B, L, D + 1): token embeddings and a kind channel (module docstring).

    Only the D embedding coordinates of ordinary tokens move, without bounds; padding and
    special tokens and the kind channel stay as they are in ``x``.
    """

    name: ClassVar[str] = "embedding"
    inputs: ClassVar[str] = "text (embedding) inputs"

    def check(self, x: Tensor, y: Tensor, x_init: Tensor | None) -> None:
        """Check shapes, and that the kind channel holds only 0, 1 and 2."""
        _check_shapes(x, y, x_init, "(B,L,D+1) (packed text: embeddings and a kind channel)", 3)
        if x.shape[-1] < 2:
            raise UserError(
                f"packed text inputs have D embedding channels and one kind channel, got "
                f"{x.shape[-1]} channel(s) in x {tuple(x.shape)}"
            )
        kind = x[..., -1]
        bad = (kind != PADDING) & (kind != SPECIAL) & (kind != ORDINARY)
        if bool(bad.any()):
            raise UserError(
                f"the last channel of packed text inputs is the token kind, 0 (padding), 1 "
                f"(special) or 2 (ordinary), got {float(kind[bad][0]):.6g}; build x with the "
                "model's TokenEmbedder"
            )

    def movable(self, x: Tensor) -> Tensor:
        ordinary = x[..., -1:] == ORDINARY  # (B, L, 1)
        embedding = torch.ones(x.shape[-1], dtype=torch.bool, device=x.device)
        embedding[-1] = False  # the kind channel never moves
        return ordinary & embedding

    def clamp(self, x_adv: Tensor, x: Tensor) -> Tensor:
        return self.hold(x_adv, x)  # the movable coordinates are unbounded


SPACES: Registry[InputSpace] = Registry(
    "input space", {s.name: s for s in (PixelSpace(), EmbeddingSpace())}
)
"""The input spaces by name (``pixel``, ``embedding``)."""


def get_space(name: str) -> InputSpace:
    """Return the input space ``"pixel"`` or ``"embedding"``.

    Raises:
        UserError: the name is not a known input space (the message suggests the closest).
    """
    return SPACES.lookup(name)
