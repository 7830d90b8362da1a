"""Adversarial attacks: FGSM, FGSM-RS, PGD, APGD-CE, APGD-DLR (l-inf and l2), the gradient-free
Square attack (l-inf, images) for checking evaluations, and the training-only one-step methods
N-FGSM and GradAlign (:mod:`robustft.attacks.onestep`).

Each works on images in pixel space (``space="pixel"``, the default) and, except Square, on
packed text inputs in embedding space (``space="embedding"``, :mod:`robustft.attacks.space`),
where ``l2-token`` (an l2 ball per token) is a norm too and padding and special tokens are never
perturbed. Every attack is called as ``attack(model, x, y, eps, *, x_init=None, generator=None)``
and returns examples inside the eps-ball and the space's box (``[0, 1]`` for images); see
:class:`~robustft.attacks.base.Attack` for the full contract. ``attack.evaluate(...)`` also
judges each point, with early exit: an example is settled at its first fooling iterate.

The registry :data:`ATTACKS` (a :class:`~robustft.utils.registry.Registry`) holds them by name:
:func:`list_attacks` lists the names, :func:`is_attack` checks one and :func:`create` builds one,
validating the name, the norm and the hyperparameters.

Example:
    >>> from robustft import attacks
    >>> pgd = attacks.create("pgd", norm="linf", steps=10)
    >>> x_adv = pgd(model, x, y, eps=8 / 255)  # doctest: +SKIP
    >>> text_pgd = attacks.create("pgd", norm="l2-token", space="embedding", steps=3)
    >>> x_adv = text_pgd(text_model, packed, y, eps=0.5)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from robustft.attacks.apgd import APGD
from robustft.attacks.base import Attack, Verdict, crafting_mode
from robustft.attacks.geometry import GEOMETRIES, Geometry, get_geometry
from robustft.attacks.onestep import NFGSM, GradAlign
from robustft.attacks.pgd import PGD
from robustft.attacks.space import SPACES, InputSpace, get_space
from robustft.attacks.square import Square
from robustft.errors import UserError, did_you_mean
from robustft.utils.registry import Registry


@dataclass(frozen=True)
class AttackSpec:
    """A registry entry: the attack class and the hyperparameters its name fixes.

    Attributes:
        cls: the attack class.
        fixed: hyperparameters implied by the name (e.g. ``steps=1`` for ``fgsm``); a user may
            repeat them with the same value but not change them.
        defaults: defaults that differ from the class's own (the user may override them).
        summary: one line for help texts.
        norms: the threat models it supports in pixel space (``l2-token`` is added in
            embedding space).
        spaces: the input spaces it supports.
    """

    cls: type[Attack]
    summary: str
    fixed: Mapping[str, object] = field(default_factory=dict)
    defaults: Mapping[str, object] = field(default_factory=dict)
    norms: tuple[str, ...] = ("linf", "l2")
    spaces: tuple[str, ...] = ("pixel", "embedding")

    def norms_in(self, space: str) -> tuple[str, ...]:
        """The norms it supports in ``space``: its own, plus the space's own norms
        (``l2-token`` in embedding space) when it supports the space at all."""
        if space not in self.spaces:
            return ()
        extra = tuple(n for n, g in GEOMETRIES.items() if g.spaces == (space,))
        return self.norms + extra

    @property
    def takes_steps(self) -> bool:
        """Whether a step count applies (not to FGSM/FGSM-RS, fixed at one step, nor to
        Square, which counts queries)."""
        return "steps" not in self.fixed and any(f.name == "steps" for f in fields(self.cls))


ATTACKS: Registry[AttackSpec] = Registry(
    "attack",
    {
        "fgsm": AttackSpec(
            PGD,
            "one signed-gradient step of size eps from the clean input (Goodfellow et al. 2015)",
            fixed={"steps": 1, "random_init": False},
            defaults={"rel_step": 1.0},
        ),
        "fgsm-rs": AttackSpec(
            PGD,
            "one step of 1.25 * eps from a uniform random start (Wong et al. 2020)",
            fixed={"steps": 1, "random_init": True},
            defaults={"rel_step": 1.25},
        ),
        "n-fgsm": AttackSpec(
            NFGSM,
            "training only: uniform noise of 2 * eps, one step of eps, not projected back to the "
            "eps-ball (de Jorge et al. 2022)",
        ),
        "grad-align": AttackSpec(
            GradAlign,
            "training only: FGSM plus the gradient-alignment regulariser, lambda 0.2 "
            "(Andriushchenko & Flammarion 2020)",
            fixed={"steps": 1, "random_init": False},
        ),
        "pgd": AttackSpec(
            PGD, "projected gradient ascent, 10 steps of 0.25 * eps (Madry et al. 2018)"
        ),
        "apgd-ce": AttackSpec(
            APGD, "Auto-PGD on cross-entropy, 10 steps (Croce & Hein 2020)", fixed={"loss": "ce"}
        ),
        "apgd-dlr": AttackSpec(
            APGD,
            "Auto-PGD on the DLR loss, 10 steps, >= 3 classes (Croce & Hein 2020)",
            fixed={"loss": "dlr"},
        ),
        "square": AttackSpec(
            Square,
            "gradient-free random search, 300 queries, l-inf only (Andriushchenko et al. 2020)",
            norms=("linf",),
            spaces=("pixel",),
        ),
    },
)
"""The attacks by name (a read-only mapping to their :class:`AttackSpec`)."""


def list_attacks() -> tuple[str, ...]:
    """The attack names, in the order of :data:`ATTACKS`."""
    return ATTACKS.names()


def is_attack(name: object) -> bool:
    """Whether ``name`` is an attack :func:`create` builds."""
    return ATTACKS.is_known(name)


def create(
    name: str, norm: str = "linf", *, space: str = "pixel", **hyperparameters: object
) -> Attack:
    """Build an attack by registry name.

    Args:
        name: one of :data:`ATTACKS` (``fgsm``, ``fgsm-rs``, ``n-fgsm``, ``grad-align``, ``pgd``,
            ``apgd-ce``, ``apgd-dlr``, ``square``; ``n-fgsm`` and ``grad-align`` train only).
        norm: ``"linf"``, ``"l2"`` or (embedding space only) ``"l2-token"``; eps is measured
            in this norm, in the space's units ([0, 1] pixel units; for text, the model's unit
            scale).
        space: ``"pixel"`` (images in [0, 1], the default) or ``"embedding"`` (packed text
            inputs (B, L, D + 1) of a text model; every attack but ``square``).
        **hyperparameters: fields of the attack class (e.g. ``steps``, ``rel_step``,
            ``restarts``, ``eval_mode``, ``noise_factor``, ``grad_align_lambda``), overriding
            the name's defaults.

    Returns:
        The attack, an immutable object; ``create(**attack.describe())`` rebuilds an equal one.

    Raises:
        UserError: unknown name, a norm or space the attack does not support (``l2-token``
            with images), unknown hyperparameter, a change to a hyperparameter the name fixes,
            or an invalid value.
    """
    spec = ATTACKS.lookup(name)
    get_geometry(norm, space)  # an unknown norm or space, or a norm the space does not take
    if space not in spec.spaces:
        others = sorted(n for n, s in ATTACKS.items() if space in s.spaces)
        raise UserError(
            f"attack '{name}' supports only {get_space(spec.spaces[0]).inputs} (space "
            f"{', '.join(spec.spaces)}), got space '{space}'; attacks for {space}: "
            f"{', '.join(others)}"
        )
    if norm not in spec.norms_in(space):
        others = sorted(n for n, s in ATTACKS.items() if norm in s.norms_in(space))
        raise UserError(
            f"attack '{name}' supports only norm {', '.join(spec.norms_in(space))}, got "
            f"'{norm}'; attacks for {norm}: {', '.join(others)}"
        )
    settable = {f.name for f in fields(spec.cls)} - {"norm", "space"}
    for key, value in hyperparameters.items():
        if key in spec.fixed and value != spec.fixed[key]:
            raise UserError(
                f"attack '{name}' fixes {key}={spec.fixed[key]!r}, got {key}={value!r}; "
                f"choose another attack (valid: {', '.join(sorted(ATTACKS))})"
            )
        if key not in settable:
            raise UserError(
                f"unknown hyperparameter '{key}' for attack '{name}'"
                f"{did_you_mean(key, settable)}; valid: {', '.join(sorted(settable))}"
            )
    arguments = {**spec.defaults, **hyperparameters, **spec.fixed}
    return spec.cls(norm=norm, space=space, **arguments)  # type: ignore[arg-type]


__all__ = [
    "APGD",
    "ATTACKS",
    "NFGSM",
    "PGD",
    "SPACES",
    "Attack",
    "AttackSpec",
    "Geometry",
    "GradAlign",
    "InputSpace",
    "Square",
    "Verdict",
    "crafting_mode",
    "create",
    "get_geometry",
    "get_space",
    "is_attack",
    "list_attacks",
]
