"""Registries: names mapped to implementations, one idiom for every kind (attacks, fine-tuning
modes, backbone sources, datasets, schedules, tracking backends, launchers).

In the style of timm's ``list_models`` / ``is_model`` / ``create_model``, a :class:`Registry`
lists its names (:meth:`~Registry.names`), says whether a name is one of them
(:meth:`~Registry.is_known`; ``name in registry`` for registries without prefixes) and creates
by name (:meth:`~Registry.create`). The name is validated there, in the factory: an unknown one
is a one-line :class:`~robustft.errors.UserError` with the closest valid name
(:func:`robustft.errors.unknown_name`). Each layer keeps its registry beside what it registers
and exposes its own list / is / create functions (``attacks.list_attacks``,
``attacks.is_attack``, ``attacks.create``).

An entry registered with ``argument=`` is a prefix: it matches every name ``<entry>:<argument>``
(``imagefolder:/data/pets``, ``timm:resnet50``) and is created with the text after the colon as
its first argument.

Example:
    >>> shapes = Registry("shape")
    >>> @shapes.register("square")
    ... def square(side: float) -> float:
    ...     return side * side
    >>> shapes.create("square", 3.0)
    9.0
    >>> shapes.create("sqare", 3.0)
    Traceback (most recent call last):
    robustft.errors.UserError: unknown shape 'sqare' (did you mean 'square'?); valid: square
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar, overload

from robustft.errors import UserError, unknown_name

T = TypeVar("T")


class Registry(Mapping[str, T]):
    """Names of one kind (``"attack"``, ``"fine-tuning mode"``) mapped to their entries, in
    registration order; a read-only mapping once built (entries are added with
    :meth:`register`).

    Args:
        kind: what a name names, for messages (``unknown attack 'pgf' ...``).
        entries: entries to register at once (none of them a prefix).
        unknown: builds the error for an unknown name, when the standard one
            (:func:`robustft.errors.unknown_name` over :meth:`choices`) does not fit.
    """

    def __init__(
        self,
        kind: str,
        entries: Mapping[str, T] | None = None,
        *,
        unknown: Callable[[str], UserError] | None = None,
    ) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._arguments: dict[str, str] = {}  # prefix entry -> what follows its colon
        self._unknown = unknown
        for name, entry in (entries or {}).items():
            self.register(name, entry)

    @overload
    def register(self, name: str, *, argument: str | None = None) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T, *, argument: str | None = None) -> T: ...

    def register(self, name: str, entry: Any = None, *, argument: str | None = None) -> Any:
        """Register ``entry`` under ``name`` (a later registration of the name replaces it);
        without ``entry``, a decorator that registers what it decorates.

        Args:
            argument: makes the entry a prefix matching ``<name>:<anything>``; the word shown
                for what follows the colon (``path`` in ``imagefolder:<path>``).
        """
        if not name or ":" in name:
            raise ValueError(f"a {self.kind} name is non-empty text without ':', got {name!r}")

        def add(value: T) -> T:
            self._entries[name] = value
            self._arguments.pop(name, None)
            if argument is not None:
                self._arguments[name] = argument
            return value

        return add if entry is None else add(entry)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.choices())})"

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order ("list"); a prefix without its colon."""
        return tuple(self._entries)

    def choices(self) -> tuple[str, ...]:
        """The names as a user writes them: ``pgd``, and ``imagefolder:<path>`` for a prefix."""
        return tuple(
            f"{name}:<{self._arguments[name]}>" if name in self._arguments else name
            for name in self._entries
        )

    def is_known(self, name: object) -> bool:
        """Whether ``name`` is one this registry creates ("is"): a registered name, or
        ``<prefix>:<anything>`` for a prefix."""
        if not isinstance(name, str):
            return False
        prefix, colon, _ = name.partition(":")
        if colon:
            return prefix in self._arguments
        return name in self._entries and name not in self._arguments

    def check(self, name: object) -> None:
        """Validate ``name`` without creating anything.

        Raises:
            UserError: an unknown name (one line, with the closest valid name).
        """
        if self.is_known(name):
            return
        if self._unknown is not None:
            raise self._unknown(str(name))
        raise unknown_name(self.kind, str(name), self.choices())

    def resolve(self, name: str) -> tuple[T, str | None]:
        """The entry of ``name`` and, for a prefix, the text after its colon (else None).

        Raises:
            UserError: an unknown name.
        """
        self.check(name)
        prefix, colon, rest = name.partition(":")
        return (self._entries[prefix], rest) if colon else (self._entries[name], None)

    def lookup(self, name: str) -> T:
        """The entry of ``name`` (:meth:`resolve` without the argument).

        Raises:
            UserError: an unknown name.
        """
        return self.resolve(name)[0]

    def create(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the entry of ``name`` ("create"): ``entry(*args, **kwargs)``, or
        ``entry(argument, *args, **kwargs)`` for a prefix.

        Raises:
            UserError: an unknown name, before anything is called.
        """
        entry, argument = self.resolve(name)
        factory: Callable[..., Any] = entry  # type: ignore[assignment]
        return factory(*args, **kwargs) if argument is None else factory(argument, *args, **kwargs)
