"""Sweep files: a base config, methods and a grid, parsed, checked and expanded into runs.

A sweep file::

    # what it runs, how long, the command
    name: demo                      # optional; default: the file name; default dir sweeps/<name>/
    base: ../digits_sched.yaml      # a run config file (relative to this file) or a mapping
    set: {train.epochs: 15}         # optional: dotted overrides applied to every run
    methods:                        # optional: named override sets; a run's name = its method
      standard: {attack.eps: 0, attack.schedule: constant}
      fix: {attack.schedule: constant}
      sched: {attack.schedule: "hinge(t1=0.24,t2=0.74)"}
    grid:                           # optional: dotted key -> list of values (Cartesian product)
      train.seed: [0, 1, 2]

Keys are dotted config keys (``attack.eps``); nested mappings (``attack: {eps: 0}``) are read
the same way. A run's config is the base, then ``set``, then its grid point, then its method. A
method may not set a key the grid varies (``standard: {attack.eps: 0}`` with ``grid:
{attack.eps: [4/255, 8/255]}`` is refused: its value would override every grid value and
silently make those grid points one run), nor may a grid list a value twice. Runs are ordered
grid point by grid point (first grid key slowest), every method inside a point, so a partial
sweep holds whole comparisons. A run's id is the hash of its resolved config
(:meth:`RunConfig.run_id`); configs that resolve to the same id (two methods alike, ``8/255``
and its float) collapse into one run. Everything is validated (configs built, schedules and
attacks checked) before anything runs.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import os
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustft.config import (
    EXTENSION_HINT,
    NAME_PATTERN,
    RunConfig,
    build_config,
    is_extension_key,
    load_yaml,
    read_yaml,
)
from robustft.errors import UserError, did_you_mean

_logger = logging.getLogger(__name__)

SPEC_KEYS = ("name", "base", "set", "methods", "grid")


def config_keys() -> tuple[str, ...]:
    """Every dotted leaf key of :class:`RunConfig` (``name``, ``model.name``, ...)."""

    def walk(cls: type, prefix: str) -> Iterator[str]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint):
                yield from walk(hint, f"{prefix}{f.name}.")  # type: ignore[arg-type]
            else:
                yield f"{prefix}{f.name}"

    return tuple(walk(RunConfig, ""))


def _flatten(where: str, data: object) -> dict[str, Any]:
    """``{"attack": {"eps": 0}, "train.seed": 1}`` -> ``{"attack.eps": 0, "train.seed": 1}``."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: expected a mapping of config keys to values, got {data!r}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not key:
            raise UserError(f"{where}: keys must be dotted config keys, got {key!r}")
        if isinstance(value, Mapping):
            for sub, inner in _flatten(where, value).items():
                out[f"{key}.{sub}"] = inner
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_keys(where: str, keys: Sequence[str]) -> None:
    valid = config_keys()
    for key in keys:
        if key == "name":
            raise UserError(f"{where}: 'name' is set from the method label; name a method instead")
        if key not in valid:
            raise UserError(f"{where}: unknown config key '{key}'{did_you_mean(key, valid)}")


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: base config, common overrides, methods and grid.

    Attributes:
        name: the sweep's name (letters, digits, ``_.+-``); names its default directory.
        base: the base run config as a (nested) mapping, as in a run config file.
        overrides: dotted key -> value applied to every run (the file's ``set``).
        methods: method label -> dotted key -> value; empty means one method named after the
            base config's ``name``.
        grid: dotted key -> non-empty list of values; empty means a single grid point.
        source: where the spec came from, for messages (a path or ``<inline>``).
    """

    name: str
    base: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    methods: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    source: str = "<inline>"

    def __post_init__(self) -> None:
        where = f"sweep {self.source}"
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            raise UserError(
                f"{where}: name {self.name!r} must be letters, digits and _.+- (it names a "
                "directory)"
            )
        _check_keys(f"{where}: set", list(self.overrides))
        for label, settings in self.methods.items():
            if not isinstance(label, str) or not NAME_PATTERN.match(label):
                raise UserError(f"{where}: method name {label!r} must be letters, digits, _.+-")
            _check_keys(f"{where}: methods.{label}", list(settings))
        _check_keys(f"{where}: grid", list(self.grid))
        for key, values in self.grid.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise UserError(
                    f"{where}: grid '{key}': expected a non-empty list of values, got {values!r}"
                )
            for i, value in enumerate(values):
                if any(type(v) is type(value) and v == value for v in values[:i]):
                    raise UserError(
                        f"{where}: grid '{key}' lists {show_value(value)} twice; list each value "
                        "once"
                    )
        for label, settings in self.methods.items():
            for key in settings:
                if key in self.grid:
                    shown = ", ".join(show_value(v) for v in self.grid[key])
                    raise UserError(
                        f"{where}: method '{label}' sets {key}={show_value(settings[key])}, which "
                        f"would override the grid's {key} values ({shown}) and make those grid "
                        f"points one run; drop {key} from the grid or from method '{label}'"
                    )

    def method_settings(self) -> dict[str, Mapping[str, Any]]:
        """The methods, or the single implicit one (named after the base config)."""
        if self.methods:
            return dict(self.methods)
        return {str(self.base.get("name") or self.name): {}}

    def grid_points(self) -> int:
        """The points of the grid (the product of its value counts; 1 without a grid)."""
        n = 1
        for values in self.grid.values():
            n *= len(values)
        return n

    def planned_runs(self) -> int:
        """Methods times grid points: the runs before configs that coincide are collapsed
        (:func:`expand` returns each distinct config once)."""
        return len(self.method_settings()) * self.grid_points()

    def to_dict(self) -> dict[str, Any]:
        """The spec as a sweep-file mapping (base inlined)."""
        return {
            "name": self.name,
            "base": copy.deepcopy(dict(self.base)),
            "set": dict(self.overrides),
            "methods": {k: dict(v) for k, v in self.methods.items()},
            "grid": {k: list(v) for k, v in self.grid.items()},
        }


def parse_sweep(
    data: Mapping[str, Any], *, source: str = "<inline>", root: str | Path = "."
) -> SweepSpec:
    """Build a :class:`SweepSpec` from a sweep-file mapping.

    Args:
        data: the parsed YAML (keys ``name``, ``base``, ``set``, ``methods``, ``grid``).
        source: where it came from (used in messages and as the default name's stem).
        root: directory that a ``base`` path is relative to.

    Raises:
        UserError: unknown keys, a missing base file, bad values; the message names them.
    """
    where = f"sweep {source}"
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: expected a mapping at the top level")
    data = {key: value for key, value in data.items() if not is_extension_key(key)}
    for key in data:
        if key not in SPEC_KEYS:
            raise UserError(
                f"{where}: unknown key '{key}'{did_you_mean(str(key), SPEC_KEYS)}; "
                f"valid: {', '.join(SPEC_KEYS)}; {EXTENSION_HINT}"
            )
    base = data.get("base")
    if isinstance(base, str):
        path = Path(root) / base
        if not os.path.isfile(path):  # not Path.is_file(): that raises for a name too long
            raise UserError(f"{where}: base config file not found: {path}")
        base = load_yaml(path)
    elif base is None:
        base = {}
    elif not isinstance(base, Mapping):
        raise UserError(f"{where}: base must be a config file path or a mapping, got {base!r}")
    methods = data.get("methods") or {}
    if not isinstance(methods, Mapping):
        raise UserError(f"{where}: methods must map method names to overrides, got {methods!r}")
    return SweepSpec(
        name=data.get("name") or (Path(source).stem if source != "<inline>" else "sweep"),
        base=copy.deepcopy(dict(base)),
        overrides=_flatten(f"{where}: set", data.get("set")),
        methods={m: _flatten(f"{where}: methods.{m}", s) for m, s in methods.items()},
        grid=_flatten(f"{where}: grid", data.get("grid")),
        source=source,
    )


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML file (a ``base`` path is relative to the file)."""
    p = Path(path)
    data = read_yaml(p, "sweep")
    if data is None:
        raise UserError(f"sweep file {p}: empty; it needs at least a base config")
    return parse_sweep(data, source=str(p), root=p.parent)


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Display names of dotted keys: the last part (``seed``) unless two keys share it."""
    lasts = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (last if lasts.count(last) == 1 else k) for k, last in zip(keys, lasts)}


def show_value(value: object) -> str:
    """A compact text form of a config value (``8/255``, ``0.001``, ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep.

    Attributes:
        run_id: hash of the resolved config (its run directory is ``runs/<run_id>``).
        method: the method label (also the config's ``name``).
        config: the resolved, validated config.
        grid: the grid keys' values in the resolved config (a method may override them).
        index: position in the sweep (0-based).
        aliases: other (method, grid point) labels that resolved to this same config.
    """

    run_id: str
    method: str
    config: RunConfig
    grid: Mapping[str, Any]
    index: int
    aliases: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``"sched seed=1"``: the method and the grid values."""
        names = short_keys(list(self.grid))
        parts = [f"{names[k]}={show_value(v)}" for k, v in self.grid.items()]
        return " ".join([self.method, *parts])


def _assign(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def _lookup(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None  # unset fingerprints
    return node


def _resolve(spec: SweepSpec, method: str, point: Mapping[str, Any]) -> RunConfig:
    """Build and check the config of one (method, grid point)."""
    from robustft.training.build import check_config

    data = copy.deepcopy(dict(spec.base))
    layers = (spec.overrides, point, spec.method_settings()[method])
    for layer in layers:
        for key, value in layer.items():
            _assign(data, key, value)
    data["name"] = method
    where = " ".join([method, *(f"{k}={show_value(v)}" for k, v in point.items())])
    try:
        config = build_config(data)
        check_config(config)
    except UserError as err:
        raise UserError(f"sweep {spec.source}: run '{where}': {err}") from None
    return config


def expand(spec: SweepSpec) -> list[RunSpec]:
    """All runs of ``spec``, validated, duplicates collapsed, in execution order.

    Raises:
        UserError: a run's config is invalid (the message names the run, key and value).
    """
    keys = list(spec.grid)
    runs: dict[str, RunSpec] = {}
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        point = dict(zip(keys, values))
        for method in spec.method_settings():
            config = _resolve(spec, method, point)
            run_id = config.run_id()
            resolved = config.to_dict()
            grid = {k: _lookup(resolved, k) for k in keys}
            if run_id in runs:
                kept = runs[run_id]
                # named by its grid point as written: two values that resolve alike (8/255 and
                # 0.0313725...) show which entries of the sweep file are one run
                alias = RunSpec(run_id, method, config, point, kept.index).label
                runs[run_id] = dataclasses.replace(kept, aliases=(*kept.aliases, alias))
                _logger.info("sweep %s: %s is the same run as %s", spec.name, alias, kept.label)
                continue
            runs[run_id] = RunSpec(run_id, method, config, grid, len(runs))
    return list(runs.values())
