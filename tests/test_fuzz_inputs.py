"""Input fuzzing: malformed eps strings, schedule specs, configs, YAML files, sweep files and CLI
arguments give a :class:`UserError` (one line, exit code 2), never a traceback.

Property tests use a fixed, database-less, derandomized profile, so CI sees the same examples
every run. Nothing here trains or downloads: ``robustft.training.fit.fit`` is replaced by a sentinel
that counts as "input accepted" when reached, and sweeps only run with ``--dry-run``/``--status``.
The plain tests at the end pin the bugs the fuzzers found.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import robustft.training.build
import robustft.training.fit
from robustft import cli
from robustft.config import RunConfig, build_config, load_config, parse_override, read_yaml
from robustft.errors import UserError
from robustft.schedules import KINDS, EpsSchedule, Schedule, parse_schedule
from robustft.sweep.spec import expand, load_sweep, parse_sweep
from robustft.units import eps_grid, parse_eps

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)

# ROBUSTFT_FUZZ_SCALE=20 runs 20x the examples (a deeper, slower hunt; CI runs the default 1)
SCALE = float(os.environ.get("ROBUSTFT_FUZZ_SCALE", "1"))
RANDOM = os.environ.get("ROBUSTFT_FUZZ_RANDOM") == "1"  # fresh examples every run (local hunt)
if RANDOM:
    FUZZ = settings(FUZZ, derandomize=False)


def scaled(n: int) -> int:
    return max(1, round(n * SCALE))


# --------------------------------------------------------------------------- value pools

HUGE_INTS = [2**63, -(2**63), 10**20, 10**400, -(10**400), 10**4000]
HUGE_DIGITS = ["9" * 20, "9" * 400, "9" * 5000]
WEIRD_TEXT = [
    "",
    " ",
    "\t",
    "\n",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "+inf",
    "infinity",
    "1e999",
    "-1e999",
    "1e-999",
    "5e-324",
    "0x10",
    "1_000",
    "٣",
    "１２",
    "8/255",
    "-8/255",
    "8/0",
    "0/0",
    "x/255",
    "8//255",
    "8/255/3",
    "1/2e3",
    "1.5/2",
    "/",
    "(",
    ")",
    "()",
    "=",
    ":",
    ",",
    "null",
    "~",
    "true",
    "[1, 2]",
    "{a: 1}",
    "\x00",
    "é",
    "\u2028",
    "💥",
    *(d + "/1" for d in HUGE_DIGITS),
    *("1/" + d for d in HUGE_DIGITS),
    *HUGE_DIGITS,
    "n" * 300,  # a file name too long for the OS
    "8\n",
    " 8/255\t",
]

weird_text = st.sampled_from(WEIRD_TEXT)
small_text = st.text(max_size=12)
number_text = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.fractions().map(str),
    st.builds(lambda a, b: f"{a}/{b}", st.integers(-300, 10**6), st.integers(-3, 10**6)),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(HUGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True),
    small_text,
    weird_text,
    number_text,
    st.dates(),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(small_text, inner, max_size=3)
    ),
    max_leaves=6,
)


def _finite_or_none(value: object) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


# ---------------------------------------------------------------------------------- eps


@settings(FUZZ, max_examples=scaled(400))
@given(
    value=st.one_of(junk, weird_text, number_text, st.fractions(), st.decimals()),
    upper=st.sampled_from([1.0, 1e6]),
)
def test_parse_eps_is_a_finite_float_in_range_or_a_user_error(value: object, upper: float) -> None:
    try:
        eps = parse_eps(value, upper=upper)
    except UserError as err:
        assert "\n" not in str(err)
        return
    assert isinstance(eps, float) and math.isfinite(eps) and 0.0 <= eps <= upper


# ---------------------------------------------------------------------------- schedules

SCHEDULE_NAMES = [*KINDS, "HINGE", "Hinge", "hinge-auto", "hinje", "lin ear", "_x", "9hinge", ""]
PARAM_NAMES = ["t1", "t2", "seed", "patience", "tolerance", "probe", "reach", "knots", "T1", "x"]

position_text = st.one_of(
    st.integers(-5, 60).map(str),
    st.floats(0, 1).map(repr),
    st.floats(-1e3, 1e3).map(lambda f: f"{f:.3g}"),
    weird_text,
    number_text,
)
schedule_item = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(PARAM_NAMES), position_text),
    st.builds(lambda e, a: f"{e}:{a}", position_text, position_text),
    st.sampled_from(["auto", "t1=auto", " auto ", "=", ":", "a=b=c", "1:2:3", "", " "]),
    small_text,
)


position_ok = st.one_of(
    st.integers(0, 60).map(str), st.floats(0, 1).map(lambda f: f"{f:.2f}"), st.just("1.0")
)
SANE_PARAMS: dict[str, dict[str, st.SearchStrategy[str]]] = {
    "hinge": {"t1": position_ok, "t2": position_ok},
    "cosine": {"t1": position_ok, "t2": position_ok},
    "linear": {"t2": position_ok},
    "uniform": {"seed": st.integers(0, 2**64).map(str)},
    "auto": {"patience": st.integers(0, 9).map(str), "tolerance": st.floats(0, 1.2).map(repr)},
}


@st.composite
def sane_schedule(draw: st.DrawFn) -> str:
    """Grammar-aware: a registered name with its own parameters and plausible values."""
    name = draw(st.sampled_from(KINDS))
    if name == "piecewise":
        epochs = sorted(set(draw(st.lists(st.integers(0, 60), min_size=1, max_size=4))))
        knots = [f"{e}:{draw(st.floats(0, 1).map(lambda f: f'{f:.3g}'))}" for e in epochs]
        if draw(st.integers(0, 4)) == 0:
            knots.append(draw(st.builds(lambda e, a: f"{e}:{a}", position_ok, position_ok)))
        return f"piecewise({','.join(knots)})"
    if name == "hinge-auto" or (name == "hinge" and draw(st.integers(0, 3)) == 0):
        extra = draw(
            st.lists(
                st.sampled_from(
                    ["t2=0.75", "t2=30", "probe=0.5", "reach=0.9", "probe=0", "reach=1.5"]
                ),
                max_size=2,
                unique=True,
            )
        )
        return f"hinge({','.join(['auto', *extra])})"
    params = SANE_PARAMS.get(name, {})
    chosen = draw(st.lists(st.sampled_from(sorted(params)), unique=True)) if params else []
    if not chosen:
        return name
    return f"{name}({','.join(f'{k}={draw(params[k])}' for k in chosen)})"


@st.composite
def schedule_specs(draw: st.DrawFn) -> str:
    """Schedule text: random, grammar-aware, or a name with random arguments; maybe mangled."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(st.one_of(st.text(max_size=30), weird_text))
    if choice <= 4:
        text = draw(sane_schedule())
    else:
        name = draw(st.sampled_from(SCHEDULE_NAMES))
        items = draw(st.lists(schedule_item, max_size=4))
        if not items and draw(st.booleans()):
            text = name
        else:
            text = f"{name}({draw(st.sampled_from([',', ', ', ' ,'])).join(items)})"
    mangle = draw(st.integers(0, 16))
    if mangle == 1:
        text = text.replace(")", "", 1)
    elif mangle == 2:
        text = text.replace("(", "((", 1)
    elif mangle == 3:
        text = text + ")"
    elif mangle == 4:
        text = text.replace("(", " (", 1)
    elif mangle == 5:
        text = text + draw(small_text)
    elif mangle == 6:
        text = f" {text.upper()} "
    elif mangle == 7:
        cut = draw(st.integers(0, len(text)))
        text = (
            text[:cut] + draw(st.sampled_from(["(", ")", ",", "=", ":", "\n", "\x00"])) + text[cut:]
        )
    return text


def _check_bound(bound: EpsSchedule, steps: int) -> None:
    epochs = bound.epochs
    picks = {1, 2, epochs // 2, epochs - 1, epochs}
    for epoch in (
        sorted(e for e in picks if 1 <= e <= epochs) if epochs > 200 else range(1, epochs + 1)
    ):
        for step in (0, steps - 1):
            alpha = bound.alpha_at(epoch, step, steps)
            eps = bound.eps_at(epoch, step, steps)
            assert math.isfinite(alpha) and 0.0 <= alpha <= 1.0, (str(bound.schedule), alpha)
            assert math.isfinite(eps) and 0.0 <= eps <= bound.eps + 1e-12
    if epochs <= 200:
        assert len(bound.per_epoch()) == epochs
    again = EpsSchedule.from_dict(json.loads(json.dumps(bound.to_dict())))
    assert again.schedule == bound.schedule and again.eps == bound.eps


@settings(FUZZ, max_examples=scaled(1000))
@given(
    spec=schedule_specs(),
    epochs=st.one_of(st.integers(1, 120), st.sampled_from([0, -1, 10**7, 10**400, True, 2.0])),
    eps=st.one_of(st.sampled_from(["8/255", 0, "0", 1, "1e-9"]), junk),
    granularity=st.sampled_from(["epoch", "step", "Epoch", "", None]),
    seed=st.one_of(st.integers(0, 2**70), st.sampled_from([-1, True, "3", None, 1.5])),
    steps=st.integers(1, 1000),
)
def test_schedule_specs_parse_or_fail_with_one_line(
    spec: str, epochs: Any, eps: Any, granularity: Any, seed: Any, steps: int
) -> None:
    try:
        schedule = parse_schedule(spec)
    except UserError as err:
        assert "\n" not in str(err) or "\n" in spec or "\u2028" in spec
        return
    assert isinstance(schedule, Schedule)
    text = str(schedule)
    assert parse_schedule(text) == schedule, (spec, text)
    assert str(parse_schedule(text)) == text
    try:
        bound = EpsSchedule(schedule, eps=eps, epochs=epochs, granularity=granularity, seed=seed)
    except UserError:
        return
    _check_bound(bound, steps)


@settings(FUZZ, max_examples=scaled(150))
@given(spec=schedule_specs(), epochs=st.integers(1, 80), seed=st.integers(0, 10))
def test_eps_schedule_accepts_text_specs(spec: str, epochs: int, seed: int) -> None:
    try:
        bound = EpsSchedule(spec, eps="8/255", epochs=epochs, seed=seed)  # type: ignore[arg-type]
    except UserError:
        return
    _check_bound(bound, 7)


# ------------------------------------------------------------------------------ configs


def _leaf_hints(cls: type = RunConfig, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf key -> type hint of every RunConfig field (read at import, so new fields
    are fuzzed too)."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out.update(_leaf_hints(hint, f"{prefix}{f.name}."))  # type: ignore[arg-type]
        else:
            out[f"{prefix}{f.name}"] = hint
    return out


LEAVES = _leaf_hints()
SECTIONS = sorted({key.split(".")[0] for key in LEAVES if "." in key})
EPS_KEYS = {"attack.eps", "eval.eps_max", "eval.eps_step"}


def _base_types(hint: Any) -> set[Any]:
    args = typing.get_args(hint)
    return set(args) if args else {hint}


def _default(key: str) -> Any:
    node: Any = RunConfig().to_dict()
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None  # fingerprints: left out
    return node


def typed_value(key: str) -> st.SearchStrategy[Any]:
    """Mostly plausible values of a field's type (often its default), some out of range."""
    types = _base_types(LEAVES[key])
    options: list[st.SearchStrategy[Any]] = [st.just(_default(key))]
    if key in EPS_KEYS:
        options.append(st.sampled_from(["8/255", "4/255", "1/255", 0, 0.5, "0.25", 1e-7, 10.125]))
    if key.endswith("schedule"):
        options.append(schedule_specs())
    if int in types:
        options.append(st.integers(-2, 70))
    if float in types:
        options.append(st.floats(-1, 60, allow_nan=False))
        options.append(st.sampled_from([0.001, 0.15, 0.5, "1e-3", "nan", "inf", 1e300]))
    if bool in types:
        options.append(st.booleans())
    if str in types:
        options.append(st.sampled_from(["linf", "l2", "epoch", "adamw", "cosine", "apgd-ce"]))
        options.append(small_text)
    if type(None) in types:
        options.append(st.none())
    return st.one_of(*options)


def field_value(key: str, sane: bool = False) -> st.SearchStrategy[Any]:
    return typed_value(key) if sane else st.one_of(typed_value(key), typed_value(key), junk)


@st.composite
def config_trees(draw: st.DrawFn) -> dict[Any, Any]:
    """YAML-like config trees: known sections with random subsets of fields; unless sane, also
    wrong types, unknown keys and junk sections."""
    sane = draw(st.booleans())
    tree: dict[Any, Any] = {}
    for key in draw(st.lists(st.sampled_from(sorted(LEAVES)), max_size=6, unique=True)):
        value = draw(field_value(key, sane))
        if "." in key:
            section, leaf = key.split(".", 1)
            node = tree.setdefault(section, {})
            if isinstance(node, dict):
                node[leaf] = value
        else:
            tree[key] = value
    if sane:
        return tree
    if draw(st.integers(0, 5)) == 0:
        tree[draw(st.sampled_from([*SECTIONS, "tain", "x"]))] = draw(junk)
    if draw(st.integers(0, 5)) == 0:
        section = draw(st.sampled_from(SECTIONS))
        node = tree.setdefault(section, {})
        if isinstance(node, dict):
            node[draw(small_text)] = draw(junk)
    return tree


override_values = st.one_of(
    small_text,
    weird_text,
    number_text,
    st.sampled_from(
        [
            "&a [*a]",
            "[" * 300,
            "!!python/object/apply:os.system ['echo pwned']",
            "!!binary aGVsbG8=",
            "2020-01-01",
            "!!set {a, b}",
            "*undefined",
            "{a: {b: {c: 1}}}",
            "'quoted'",
            "a: b",
            "- 1",
            "|\n  block",
            "! tagged",
        ]
    ),
)


@st.composite
def overrides(draw: st.DrawFn) -> list[str]:
    out = []
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.integers(0, 6)) == 0:
            out.append(draw(st.one_of(small_text, weird_text)))
            continue
        key = draw(
            st.one_of(
                st.sampled_from(sorted(LEAVES)),
                st.sampled_from(SECTIONS),
                st.sampled_from(["", ".", "train.", ".epochs", "train..lr", "train.epochs.x"]),
                small_text,
            )
        )
        if key in LEAVES and draw(st.booleans()):
            value = yaml.safe_dump(draw(typed_value(key)), default_flow_style=True)
            value = value.removesuffix("\n...\n").strip()
        else:
            value = draw(override_values)
        out.append(f"{key}={value}")
    return out


def _assert_valid_config(config: RunConfig) -> None:
    assert isinstance(config, RunConfig)
    data = config.to_dict()
    run_id = config.run_id()
    assert len(run_id) == 10
    stack: list[Any] = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        else:
            assert _finite_or_none(node), data
    again = build_config(yaml.safe_load(config.to_yaml()))
    assert again == config
    assert again.run_id() == run_id


@settings(FUZZ, max_examples=scaled(700))
@given(tree=st.one_of(config_trees(), junk), sets=overrides())
def test_build_config_is_valid_or_a_user_error(tree: Any, sets: list[str]) -> None:
    try:
        config = build_config(tree, sets)
    except UserError:
        return
    _assert_valid_config(config)


@settings(FUZZ, max_examples=scaled(150))
@given(text=st.one_of(st.text(max_size=40), weird_text, override_values))
def test_parse_override_never_crashes(text: str) -> None:
    try:
        path, _ = parse_override(text)
    except UserError:
        return
    assert path and all(path)


# --------------------------------------------------------------------------- YAML files

YAML_SNIPPETS = [
    b"train:\n\tepochs: 3\n",
    b"train: {epochs: 3}\n\t\n",
    b"a: &a [1, 2]\nb: *a\n",
    b"train: &t {epochs: 3}\nval: *t\n",
    b"name: &n [*n]\n",
    b"train: &t {x: *t}\n",
    b"train: {epochs: *nope}\n",
    b"<<: {name: x}\n",
    b"? [a, b]\n: 1\n",
    b"name: !!binary aGVsbG8=\n",
    b"name: !!set {a, b}\n",
    b"train: {epochs: 2020-01-01}\n",
    b"train: {epochs: 0x10}\n",
    b"train: {lr: .nan}\n",
    b"train: {lr: .inf}\n",
    b"train: {lr: 1" + b"0" * 400 + b"}\n",
    b"train: {epochs: " + b"9" * 5000 + b"}\n",
    b"train: {seed: " + b"9" * 40 + b"}\n",
    b"[" * 1100 + b"]" * 1100,
    b"{a: " * 1100 + b"1" + b"}" * 1100,
    b"- " * 300 + b"x\n",
    b"\xff\xfe\x00garbage",
    b"name: \xe9t\xe9\n",
    b"\xef\xbb\xbfname: bom\n",
    b'name: "\\ud800"\n',
    b'name: "a\\nb"\n',
    b"%YAML 1.1\n---\nname: x\n...\n---\nname: y\n",
    b"--- !!python/object/apply:os.getcwd []\n",
    b"name: !!python/name:os.system\n",
    b"name: !custom x\n",
    b"",
    b"~",
    b"- 1\n- 2\n",
    b"just text",
    b"name: 'unterminated\n",
    # "billion laughs": 6 levels of 8 aliases, 8**6 strings from a few hundred bytes
    b"a0: &a0 [x, x, x, x, x, x, x, x]\n"
    + b"".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 8)}]\n".encode() for i in range(1, 6))
    + b"name: *a5\n",
]


@st.composite
def yaml_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.binary(max_size=120))
    if kind == 1:
        return draw(st.sampled_from(YAML_SNIPPETS))
    text = yaml.safe_dump(draw(config_trees()), allow_unicode=draw(st.booleans())).encode()
    if kind == 2:
        return text
    # mangle valid YAML: cut, tab-indent, insert a byte or an alias/tag
    cut = draw(st.integers(0, len(text)))
    insert = draw(
        st.one_of(
            st.binary(min_size=1, max_size=3),
            st.sampled_from([b"\t", b": ", b"&a ", b"*a ", b"!!python/tuple ", b"{", b"- "]),
        )
    )
    return text[:cut] + insert + text[cut + draw(st.integers(0, 2)) :]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(FUZZ, max_examples=scaled(300))
@given(data=yaml_bytes(), sets=overrides())
def test_yaml_files_load_or_fail_with_a_user_error(
    data: bytes, sets: list[str], scratch: Path
) -> None:
    path = scratch / "config.yaml"
    path.write_bytes(data)
    try:
        read_yaml(path)
    except UserError as err:
        assert "\n" not in str(err)
    try:
        config = load_config(path, sets)
    except UserError:
        return
    _assert_valid_config(config)


def test_python_tags_are_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for tag in ("python/object/apply:os.mkdir", "python/object/new:os.mkdir"):
        path = tmp_path / "evil.yaml"
        path.write_text(f"name: !!{tag} [{str(marker)!r}]\n")
        with pytest.raises(UserError, match="invalid YAML"):
            load_config(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------- sweeps

sane_keys = st.sampled_from(sorted(k for k in LEAVES if k != "name"))
dotted_keys = st.one_of(
    sane_keys, st.sampled_from(["name", "train", "train.epoch", "x.y", "", "train.epochs.x"])
)


@st.composite
def dotted_settings(draw: st.DrawFn, sane: bool, max_size: int = 3) -> Any:
    if not sane and draw(st.integers(0, 8)) == 0:
        return draw(junk)
    out: dict[Any, Any] = {}
    for key in draw(st.lists(sane_keys if sane else dotted_keys, max_size=max_size, unique=True)):
        out[key] = draw(field_value(key, sane) if key in LEAVES else junk)
    if draw(st.integers(0, 6)) == 0:  # nested form: {attack: {eps: 0}}
        key = draw(st.sampled_from(sorted(k for k in LEAVES if "." in k)))
        section, leaf = key.split(".", 1)
        out[section] = {leaf: draw(field_value(key, sane))}
    return out


@st.composite
def sweep_dicts(draw: st.DrawFn) -> Any:
    """Sweep-file mappings; ``sane`` ones use known keys and plausible values only."""
    sane = draw(st.booleans())
    if not sane and draw(st.integers(0, 12)) == 0:
        return draw(junk)
    data: dict[Any, Any] = {}
    if draw(st.booleans()):
        names = st.sampled_from(["demo", "a.b-c+1", "-x", "a b"])
        data["name"] = draw(names if sane else st.one_of(names, junk))
    base_kind = draw(st.integers(2, 5) if sane else st.integers(0, 5))
    if base_kind == 0:
        data["base"] = draw(st.sampled_from(["missing.yaml", "", "../nope", "\x00"]))
    elif base_kind == 1:
        data["base"] = draw(junk)
    else:
        data["base"] = draw(config_trees())
    if draw(st.booleans()):
        data["set"] = draw(dotted_settings(sane))
    if draw(st.booleans()):
        labels = st.sampled_from(["std", "fix", "sched", "a b", ""])
        methods = st.dictionaries(labels, dotted_settings(sane, 2), max_size=3)
        data["methods"] = draw(methods if sane else st.one_of(methods, junk))
    if draw(st.booleans()):
        grid: dict[Any, Any] = {}
        for key in draw(st.lists(sane_keys if sane else dotted_keys, max_size=2, unique=True)):
            values = st.lists(field_value(key, sane) if key in LEAVES else junk, max_size=3)
            grid[key] = draw(values if sane else st.one_of(values, junk))
        data["grid"] = grid
    if not sane and draw(st.integers(0, 10)) == 0:
        data[draw(st.sampled_from(["bases", "grids", "Set", "x"]))] = draw(junk)
    return data


@settings(FUZZ, max_examples=scaled(300))
@given(data=sweep_dicts())
def test_sweep_dicts_expand_or_fail_with_a_user_error(data: Any, scratch: Path) -> None:
    try:
        spec = parse_sweep(data, source="fuzz.yaml", root=scratch)
        runs = expand(spec)
    except UserError:
        return
    points = 1
    for values in spec.grid.values():
        points *= len(values)
    assert 1 <= len(runs) <= points * len(spec.method_settings())
    assert len({run.run_id for run in runs}) == len(runs)
    for index, run in enumerate(runs):
        assert run.index == index
        assert run.run_id == run.config.run_id()
        assert run.config.name == run.method
        assert set(run.grid) == set(spec.grid)


@settings(FUZZ, max_examples=scaled(80))
@given(data=sweep_dicts())
def test_sweep_files_round_trip_through_yaml(data: Any, scratch: Path) -> None:
    path = scratch / "sweep.yaml"
    try:
        path.write_text(yaml.safe_dump(data))
    except yaml.YAMLError:
        return
    try:
        spec = load_sweep(path)
    except UserError:
        return
    assert spec.source == str(path)


# ---------------------------------------------------------------------------------- CLI


class ReachedFit(Exception):
    """Raised instead of training: the arguments were accepted."""


FLAGS = [
    "--epochs",
    "--eps",
    "--granularity",
    "--steps-per-epoch",
    "--seed",
    "--json",
    "--set",
    "--run-dir",
    "--resume",
    "--force",
    "--device",
    "--eps-max",
    "--eps-step",
    "--attack",
    "--steps",
    "--norm",
    "--mode",
    "--max-examples",
    "--batch-size",
    "--out",
    "--no-plots",
    "--jobs",
    "-j",
    "--dry-run",
    "--status",
    "--bogus",
    "-x",
    "-v",
    "--verbose",
    "-h",
    "--version",
    "--",
    "-",
]

# real argv cannot hold NUL; text otherwise arbitrary
arg_text = st.one_of(
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=15),
    weird_text.filter(lambda s: "\x00" not in s),
    number_text,
)
int_text = st.one_of(
    st.integers(-3, 40).map(str), st.sampled_from(["x", "1.5", "", "0x3", "99999999", "9" * 400])
)


@st.composite
def schedule_argv(draw: st.DrawFn) -> list[str]:
    argv = ["schedule"]
    if draw(st.integers(0, 8)):
        argv.append(draw(schedule_specs().filter(lambda s: "\x00" not in s)))
    for _ in range(draw(st.integers(0, 3))):
        flag = draw(
            st.sampled_from(
                [
                    "--epochs",
                    "--eps",
                    "--granularity",
                    "--steps-per-epoch",
                    "--seed",
                    "--json",
                    "--bogus",
                ]
            )
        )
        argv.append(flag)
        if flag in ("--epochs", "--steps-per-epoch", "--seed"):
            argv.append(draw(int_text))
        elif flag == "--eps":
            argv.append(draw(st.one_of(arg_text, st.sampled_from(["8/255", "0", "2/255"]))))
        elif flag == "--granularity":
            argv.append(draw(st.sampled_from(["epoch", "step", "steps", ""])))
    return argv


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


@st.composite
def file_arg(draw: st.DrawFn, where: Path, name: str) -> str:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return str(where / "does-not-exist" / name)
    if kind == 5:
        return str(where / ("n" * draw(st.integers(250, 300))) / name)
    if kind == 1:
        return str(where)  # a directory
    if kind == 2:
        return _write(where / name, draw(st.binary(max_size=64)))
    if kind == 3:
        return _write(where / name, draw(yaml_bytes()))
    return draw(arg_text)


@st.composite
def train_argv(draw: st.DrawFn, where: Path) -> list[str]:
    if draw(st.booleans()):
        tree = draw(config_trees())
        config = _write(where / "train.yaml", yaml.safe_dump(tree).encode())
    else:
        config = draw(file_arg(where, "train.yaml"))
    argv = ["train", config]
    for text in draw(overrides()):
        argv += ["--set", text]
    for flag in draw(
        st.lists(
            st.sampled_from(["--resume", "--force", "--run-dir", "--device", "--set", "--bogus"]),
            max_size=2,
        )
    ):
        argv.append(flag)
        if flag in ("--run-dir", "--device", "--set") and draw(st.integers(0, 5)):
            argv.append(draw(arg_text))
    return argv


@st.composite
def eval_argv(draw: st.DrawFn, where: Path) -> list[str]:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        target = draw(file_arg(where, "last.pt"))
    else:  # a run directory with a garbage checkpoint
        run = where / "evalrun"
        _write(run / "checkpoints" / "last.pt", draw(st.binary(max_size=64)))
        if kind == 2:
            _write(run / "checkpoints" / "last.pt.prev", b"PK\x03\x04garbage")
        target = str(run)
    argv = ["eval", target]
    for flag in draw(
        st.lists(
            st.sampled_from(
                [
                    "--eps-max",
                    "--eps-step",
                    "--attack",
                    "--steps",
                    "--norm",
                    "--mode",
                    "--max-examples",
                    "--batch-size",
                    "--seed",
                    "--json",
                ]
            ),
            max_size=3,
        )
    ):
        argv += [flag, draw(st.one_of(int_text, arg_text))]
    return argv


@st.composite
def report_argv(draw: st.DrawFn, where: Path) -> list[str]:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        target = draw(file_arg(where, "report.txt"))
    else:
        run = where / "reportroot" / "run1"
        result = draw(
            st.one_of(
                st.binary(max_size=40),
                junk.map(lambda v: json.dumps(v, default=str).encode()),
                st.fixed_dictionaries(
                    {"eps_g": junk, "clean_accuracy": junk},
                    optional={"robust_accuracy": junk, "expected_robustness": junk},
                ).map(lambda v: json.dumps(v, default=str).encode()),
            )
        )
        _write(run / "result.json", result)
        if kind == 2:
            _write(run / "metrics.jsonl", draw(st.binary(max_size=40)))
        if kind == 3:
            _write(run / "config.yaml", draw(yaml_bytes()))
        target = str(where / "reportroot")
    argv = ["report", target, "--no-plots"]
    if draw(st.booleans()):
        argv += ["--out", str(where / "reportout")]
    return argv


@st.composite
def sweep_argv(draw: st.DrawFn, where: Path) -> list[str]:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        target = draw(file_arg(where, "sweep.yaml"))
    elif kind == 1:
        target = str(where / "sweepdir")
        _write(where / "sweepdir" / "sweep.db", draw(st.binary(max_size=64)))
    else:
        try:
            text = yaml.safe_dump(draw(sweep_dicts())).encode()
        except yaml.YAMLError:
            text = b"name: x\n"
        target = _write(where / "sweep.yaml", text)
    argv = ["sweep", target, draw(st.sampled_from(["--dry-run", "--status"]))]
    for flag in draw(
        st.lists(st.sampled_from(["--jobs", "--out", "--device", "--dry-run"]), max_size=2)
    ):
        argv.append(flag)
        if flag == "--jobs":
            argv.append(draw(int_text))
        elif flag == "--out":
            argv.append(str(where / draw(st.sampled_from(["out", "sweepdir", "sweep.yaml"]))))
        elif flag == "--device":
            argv.append(draw(arg_text))
    return argv


@st.composite
def demo_argv(draw: st.DrawFn, where: Path) -> list[str]:
    argv = ["demo", "--out", str(where / "demo")]
    for flag in draw(st.lists(st.sampled_from(["--epochs", "--eps", "--device"]), max_size=2)):
        argv += [flag, draw(st.one_of(int_text, arg_text))]
    return argv


@st.composite
def random_argv(draw: st.DrawFn) -> list[str]:
    words = st.one_of(st.sampled_from(FLAGS), st.sampled_from(cli.command_names()), arg_text)
    argv = draw(st.lists(words, max_size=5))
    # keep random argv on fast paths: no bare `demo` or `sweep` that would start training
    if any(w in argv for w in ("demo", "sweep", "train")):
        argv = [*argv, "--bogus-flag"]
    return argv


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int | None, str]:
    """Run the CLI in-process with training replaced by a sentinel.

    Returns:
        (exit code, or None when the arguments were accepted and training would start; stderr)
    """
    capsys.readouterr()
    code: int | None
    with mock.patch.object(robustft.training.fit, "fit", side_effect=ReachedFit):
        try:
            code = cli.main(argv)
        except SystemExit as stop:  # --help, --version
            code = stop.code if isinstance(stop.code, int) else 0
        except ReachedFit:
            code = None
    _, err = capsys.readouterr()
    assert "Traceback" not in err, (argv, err)
    assert code in (0, 2, None), (argv, code, err)
    if code == 2:
        assert err.startswith("robustft: error: ") and err.count("\n") == 1, (argv, err)
    return code, err


@settings(FUZZ, max_examples=scaled(800))
@given(data=st.data())
def test_cli_exits_0_or_2_without_traceback(
    data: st.DataObject,
    cli_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(cli_dir)
    argv = data.draw(
        st.one_of(
            schedule_argv(),
            train_argv(cli_dir),
            eval_argv(cli_dir),
            report_argv(cli_dir),
            sweep_argv(cli_dir),
            demo_argv(cli_dir),
            random_argv(),
        ),
        label="argv",
    )
    run_main(argv, capsys)


# ------------------------------------------------------------- regressions (found above)


def _user_error(fn: Any, *words: str) -> str:
    with pytest.raises(UserError) as info:
        fn()
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    return message


def test_eps_too_large_for_a_float_is_refused() -> None:
    # was OverflowError from float(Fraction(...)) / float(int)
    _user_error(lambda: parse_eps("9" * 400 + "/1"), "finite")
    _user_error(lambda: parse_eps(10**400), "finite")
    _user_error(lambda: parse_eps("-" + "9" * 400 + "/7"), "finite")


def test_epoch_counts_are_bounded() -> None:
    # was OverflowError in Position.resolve (and a 10**8-row table for --epochs 99999999)
    _user_error(lambda: EpsSchedule("hinge", eps=0.1, epochs=10**400), "epochs", "1000000")  # type: ignore[arg-type]
    _user_error(lambda: EpsSchedule("constant", eps=0.1, epochs=10**8), "epochs")  # type: ignore[arg-type]
    assert EpsSchedule("hinge", eps=0.1, epochs=1_000_000).alpha_at(500_000) == pytest.approx(  # type: ignore[arg-type]
        (500_000 - 240_000) / 500_000
    )


def test_huge_or_missing_seeds_are_user_errors() -> None:
    # was ValueError (int() of 5000 digits) and AssertionError (seed=None)
    _user_error(lambda: parse_schedule("uniform(seed=" + "9" * 5000 + ")"), "seed", "2**64")
    _user_error(lambda: parse_schedule(f"uniform(seed={2**64})"), "seed")
    assert parse_schedule(f"uniform(seed={2**64 - 1})") == parse_schedule(
        f"uniform(seed={2**64 - 1})"
    )
    _user_error(lambda: EpsSchedule("uniform", eps=0.1, epochs=3, seed=None), "seed")  # type: ignore[arg-type]


def test_eps_grids_are_bounded() -> None:
    # was OverflowError (5e-324: round(inf)) and a 10**12-element list (1e-12)
    _user_error(lambda: eps_grid(1.0, 5e-324), "larger eps step")
    _user_error(lambda: eps_grid(1.0, 1e-12), "larger eps step", "1e+12 steps")
    config = build_config({"eval": {"eps_step": "5e-324", "eps_max": "8/255"}})
    _user_error(lambda: robustft.training.build.check_config(config), "larger eps step", "e-324")
    assert len(eps_grid(8 / 255, 1 / 255)) == 9


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lr", 10**400),
        ("lr", float("inf")),
        ("momentum", float("nan")),
        ("lr", "inf"),
        ("warmup_epochs", "-1e999"),
        ("grad_clip", float("inf")),
    ],
)
def test_non_finite_float_fields_are_refused(key: str, value: object) -> None:
    # was OverflowError (10**400) or a config holding nan/inf (nan != nan: no round trip)
    _user_error(lambda: build_config({"train": {key: value}}), f"train.{key}", "finite")


@pytest.mark.parametrize(
    "text",
    [
        "train: {epochs: 2020-01-01}\n",  # was TypeError (date not JSON serializable)
        "name: !!binary aGVsbG8=\n",  # was TypeError (bytes)
        "name: &n [*n]\n",  # was ValueError (circular reference)
        "train: {epochs: 2020-13-45}\n",  # was ValueError (month must be in 1..12)
        "train: {epochs: " + "9" * 5000 + "}\n",  # was ValueError (int digits limit)
        "[" * 1100 + "]" * 1100,  # was RecursionError
        "train: {lr: 1" + "0" * 400 + "}\n",  # was OverflowError
        '"a\\nb": 1\n',
    ],
)
def test_malformed_yaml_configs_are_user_errors(text: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    _user_error(lambda: load_config(path))


def test_yaml_alias_bombs_are_refused_quickly(tmp_path: Path) -> None:
    # "billion laughs": 9 levels of 9 aliases = 9**9 values; was an exponential json round trip
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join([*lines, "name: *a9"]) + "\n")
    _user_error(lambda: load_config(path), "too large")
    _user_error(lambda: build_config({}, ["name=[&a [1, 1], *a, *a]"]), "name")
    _user_error(lambda: build_config({}, ["name=&a [*a]"]), "too large")


@pytest.mark.parametrize("value", ["9" * 5000, "2020-13-45", "[" * 1100])
def test_overrides_yaml_cannot_convert_stay_text(value: str) -> None:
    # were ValueError / RecursionError from yaml.safe_load in parse_override
    assert parse_override(f"name={value}") == (["name"], value)
    assert build_config({}, [f"attack.schedule={value}"]).attack.schedule == value  # checked later
    _user_error(lambda: build_config({}, [f"train.epochs={value}"]), "train.epochs", "integer")


@pytest.mark.parametrize("data", [1, "0", [("train", {})], b"x"])
def test_build_config_refuses_non_mappings(data: Any) -> None:
    # were TypeError / ValueError from dict(data)
    _user_error(lambda: build_config(data), "mapping")


@pytest.mark.parametrize(
    ("key", "value"),
    [("eval.eps_max", "10.125"), ("attack.eps", "0.012345"), ("eval.eps_step", 1e-7)],
)
def test_to_dict_keeps_eps_exactly(key: str, value: str) -> None:
    # format_eps's 4 digits were lossy: 10.125 came back as 10.12, and attack.eps 0.012345 and
    # 0.012346 shared one run id
    config = build_config({}, [f"{key}={value}"])
    assert build_config(yaml.safe_load(config.to_yaml())) == config
    other = build_config({}, [f"{key}={float(value) * (1 + 1e-4)}"])
    assert other.run_id() != config.run_id()
    assert build_config({}, ["attack.eps=8/255"]).to_dict()["attack"]["eps"] == "8/255"


def test_report_skips_run_dirs_with_unreadable_config_yaml(tmp_path: Path) -> None:
    # was RecursionError / UnicodeDecodeError / ValueError out of collect_runs
    from robustft.report.collect import collect_runs

    for i, data in enumerate([b"[" * 1100, b"\xff\xfe", b"a: 2020-13-45\n"]):
        run = tmp_path / f"run{i}"
        run.mkdir()
        (run / "result.json").write_text("{}")
        (run / "config.yaml").write_bytes(data)
    message = _user_error(lambda: collect_runs(tmp_path), "no finished runs")
    assert "cannot read" in message


def test_sweep_status_on_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    # was sqlite3.DatabaseError: file is not a database
    from robustft.sweep.store import SweepStore

    (tmp_path / "sweep.db").write_bytes(b"not a database at all, just some garbage bytes")
    _user_error(lambda: SweepStore.open_existing(tmp_path / "sweep.db"), "sweep.db", "move it away")


@pytest.mark.parametrize("data", [b"e", b"\x80\x02h\x00", b"\x80\x02(."])
def test_garbage_checkpoints_are_user_errors(data: bytes, tmp_path: Path) -> None:
    # torch's weights-only unpickler raised IndexError / KeyError on these
    from robustft.run.checkpoint import load_checkpoint

    path = tmp_path / "last.pt"
    path.write_bytes(data)
    _user_error(lambda: load_checkpoint(path), "corrupt")


def test_errors_with_line_breaks_in_user_input_stay_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a path or a YAML key holding a line break printed a multi-line error
    path = tmp_path / "c.yaml"
    path.write_text('"a\\nb\\rc": 1\n')
    for argv in (["train", "\n"], ["train", str(path)], ["eval", "a\r\nb"]):
        code, err = run_main(argv, capsys)
        assert code == 2 and "\\n" in err


def test_paths_too_long_for_the_os(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Path.is_file()/exists()/is_dir() raise OSError (File name too long) instead of False
    monkeypatch.chdir(tmp_path)
    long = str(tmp_path / ("n" * 300))
    _user_error(lambda: read_yaml(long), "not found")
    _user_error(lambda: parse_sweep({"base": "n" * 300}, root=tmp_path), "not found")
    (tmp_path / "s.yaml").write_text("base: {}\n")
    for argv in (
        ["train", long],
        ["eval", long],
        ["report", long],
        ["sweep", long, "--status"],
        ["sweep", str(tmp_path / "s.yaml"), "--dry-run", "--out", long],
        ["sweep", str(tmp_path / "s.yaml"), "--status", "--out", long],
    ):
        code, err = run_main(argv, capsys)
        assert code == 2 and ("File name too long" in err or "not found" in err), (argv, err)


# ------------------------------------------------------------------ real subprocess runs

SUBPROCESS_CASES = {  # each pays for a torch import: keep the list short
    "huge epochs": (["schedule", "hinge", "--epochs", "9" * 400], "epochs"),
    "bad date, newline in path": (["train", "<bad_date>"], "bad\\n.yaml"),
    "garbage db": (["sweep", "<sweep_dir>", "--status"], "sweep.db"),
    "garbage checkpoint": (["eval", "<checkpoint>"], "corrupt"),
}


def test_cli_subprocess_one_line_errors(tmp_path: Path) -> None:
    """The installed CLI, in a real process: exit 2, one stderr line, no traceback."""
    paths = {
        "<bad_date>": tmp_path / "bad\n.yaml",
        "<sweep_dir>": tmp_path / "sweep",
        "<checkpoint>": tmp_path / "last.pt",
    }
    paths["<bad_date>"].write_text("train: {epochs: 2020-13-45}\n")
    _write(paths["<sweep_dir>"] / "sweep.db", b"garbage" * 20)
    paths["<checkpoint>"].write_bytes(b"e")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "robustft.cli", *(str(paths.get(a, a)) for a in argv)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
            env=env,
        )
        for name, (argv, _) in SUBPROCESS_CASES.items()
    }
    for name, proc in procs.items():
        _, err_bytes = proc.communicate(timeout=300)
        err = err_bytes.decode()
        assert proc.returncode == 2, (name, err)
        assert "Traceback" not in err, (name, err)
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("robustft: error: "), (name, err)
        assert SUBPROCESS_CASES[name][1] in err, (name, err)
