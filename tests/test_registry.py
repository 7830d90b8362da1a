"""The one registry idiom (robustft.utils.registry): list / is / create, the name validated in
the factory with a one-line error and the closest valid name; and every registry of the library
built on it."""

from __future__ import annotations

import pytest

from robustft.errors import UserError
from robustft.utils.registry import Registry


def shapes() -> Registry[object]:
    registry: Registry[object] = Registry("shape")

    @registry.register("square")
    def square(side: float) -> float:
        return side * side

    registry.register("circle", lambda radius: 3 * radius * radius)
    registry.register("polygon", lambda sides, side: (sides, side), argument="sides")
    return registry


def test_list_is_create() -> None:
    registry = shapes()
    assert registry.names() == ("square", "circle", "polygon")  # registration order
    assert registry.choices() == ("square", "circle", "polygon:<sides>")
    assert registry.is_known("square") and registry.is_known("polygon:6")
    assert not registry.is_known("polygon")  # a prefix needs its argument
    assert not registry.is_known("squar") and not registry.is_known(None)
    assert registry.create("square", 3) == 9
    assert registry.create("polygon:6", 2) == ("6", 2)  # the text after the colon comes first
    assert registry.resolve("polygon:6")[1] == "6" and registry.resolve("square")[1] is None
    assert "square" in registry and dict(registry)["circle"] is registry.lookup("circle")


def test_unknown_names_are_one_line_user_errors_with_a_suggestion() -> None:
    registry = shapes()
    with pytest.raises(UserError) as excinfo:
        registry.create("sqare", 3)
    assert str(excinfo.value) == (
        "unknown shape 'sqare' (did you mean 'square'?); valid: circle, polygon:<sides>, square"
    )
    with pytest.raises(UserError, match="unknown shape 'polygon'"):
        registry.check("polygon")
    with pytest.raises(UserError, match="unknown shape '3'"):
        registry.lookup(3)  # type: ignore[arg-type]


def test_custom_message_and_bad_names() -> None:
    registry: Registry[int] = Registry("model", {"a": 1}, unknown=lambda n: UserError(f"no {n}"))
    with pytest.raises(UserError, match=r"^no b$"):
        registry.check("b")
    with pytest.raises(ValueError, match="without ':'"):
        registry.register("x:y", 2)


def test_the_library_registries_share_the_idiom() -> None:
    from robustft import attacks, config, schedules
    from robustft.attacks.geometry import GEOMETRIES
    from robustft.attacks.losses import LOSSES
    from robustft.data import DATASETS
    from robustft.launchers import LAUNCHERS
    from robustft.models import MODES, SOURCES
    from robustft.tracking import BACKENDS

    for registry in (attacks.ATTACKS, GEOMETRIES, LOSSES, DATASETS, LAUNCHERS, MODES, SOURCES):
        assert isinstance(registry, Registry)
    assert isinstance(schedules.SCHEDULES, Registry) and isinstance(BACKENDS, Registry)
    # the config's own name lists (validated when a config is built) are the registries' names
    assert GEOMETRIES.names() == config.NORMS
    assert BACKENDS.names() == config.LOG_BACKENDS
    assert attacks.list_attacks() == tuple(attacks.ATTACKS)
    assert attacks.is_attack("pgd") and not attacks.is_attack("pgf")
