"""mkdocs hook: the reference pages' generated parts, made from the code at build time.

A page asks for a part with an HTML comment on a line of its own, ``<!-- generated: NAME -->``;
the hook replaces it with the markdown of ``PARTS[NAME]``:

* ``cli``: every command of ``robustft.cli.build_parser()`` with its usage, description and
  arguments;
* ``config``: every key of ``robustft.config.RunConfig`` with its type, default, the values its
  validation accepts (found by asking it) and its meaning (the clauses of its section's docstring
  that name the key);
* ``benchmarks``: the tables of ``benchmarks/results.json``, rendered by ``benchmarks/table.py``
  (the code that writes ``benchmarks/RESULTS.md``).

Only the ``config`` part imports torch (through ``check_config``, which knows the registries'
names). ``tests/test_docs.py`` imports this file to check that the parts
cover every command and key.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", flags=re.M)


def _use_checkout() -> None:
    """Import robustft from this checkout's ``src``, whatever is installed."""
    src = str(ROOT / "src")
    if sys.path[0] != src:
        sys.path.insert(0, src)


def _escape(text: str) -> str:
    """Plain text for a markdown table cell or paragraph."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = re.sub(r"([\\`*_\[\]|])", r"\\\1", text)
    return " ".join(text.split())


def _rst(text: str) -> str:
    """A docstring's reST inline markup as markdown: ``code`` and :role:`~a.b` references."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return " ".join(text.replace("``", "`").split())


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, Any]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def _argument(action: argparse.Action, parser: argparse.ArgumentParser) -> list[str]:
    if action.option_strings:
        name = ", ".join(f"`{o}`" for o in action.option_strings)
        takes = action.nargs != 0
        value = action.metavar or (action.dest.upper() if takes else "")
    else:
        name, value = f"`{action.metavar or action.dest}`", ""
    if action.choices is not None:
        value = "{" + ",".join(str(c) for c in action.choices) + "}"
    if action.nargs in ("?", "*", "+"):
        value = f"{value} ({action.nargs})" if value else str(action.nargs)
    default = action.default
    shown = "" if default in (None, False, [], argparse.SUPPRESS) else f"`{default}`"
    helptext = parser._get_formatter()._expand_help(action) if action.help else ""
    return [name, f"`{value}`" if value else "", shown, _escape(helptext)]


def _parser_section(title: str, summary: str, parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"## {title}", ""]
    if summary:
        lines += [_escape(summary[0].upper() + summary[1:]) + ".", ""]
    lines += ["```text", parser.format_usage().strip(), "```", ""]
    if parser.description:
        lines += ["```text", parser.description.strip("\n"), "```", ""]
    rows = [
        _argument(a, parser)
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
    ]
    if rows:
        lines += ["| argument | value | default | meaning |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    return lines


def cli_reference() -> str:
    """Markdown of the whole command line: global options, then one section per command."""
    _use_checkout()
    from robustft.cli import build_parser, main

    parser = build_parser()
    lines = _parser_section("robustft", "", parser)
    lines += [_rst(main.__doc__ or ""), ""]
    for name, summary, sub in _subcommands(parser):
        lines += _parser_section(f"robustft {name}", summary, sub)
    return "\n".join(lines)


_PROBES: tuple[Any, ...] = (-1_000_000, 0, 1_000_000, "robustft-doc-probe", ["robustft-doc-probe"])
_TYPE_ONLY = {  # what a value of the wrong type is told: the type column says it already
    "true or false",
    "an integer",
    "a number",
    "a string",
    "a finite number",
    "a number such as 8/255",
}


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is tuple:
        return "list of text"
    names = {int: "integer", float: "number", str: "text", bool: "boolean", type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return str(value)


def _accepts(section: str | None, key: str) -> str:
    """What the config's own validation says about bad values of ``section.key``."""
    from robustft.config import build_config
    from robustft.errors import UserError
    from robustft.training.build import check_config

    found: list[str] = []
    for probe in _PROBES:
        data = {section: {key: probe}} if section else {key: probe}
        try:  # the config's own checks, then the named choices (modes, attacks, ...) as a run does
            check_config(build_config(data))
        except UserError as err:
            message = str(err)
        else:
            continue
        choices = re.search(r"valid: (.+)$", message)
        bound = re.search(r"(?:expected|must be) (.+?), got ", message)
        limit = re.search(r" exceeds (.+)$", message)
        if choices:
            text = "one of " + ", ".join(f"`{c.strip()}`" for c in choices[1].split(","))
        elif bound and bound[1] not in _TYPE_ONLY and not bound[1].startswith("a list of"):
            text = _escape(bound[1])
        elif limit:
            text = "at most " + _escape(limit[1])
        else:
            continue
        if text not in found:
            found.append(text)
    return "; ".join(found)


def _split(text: str, separator: str) -> list[str]:
    """``text`` cut at ``separator`` outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == separator and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [p.strip() for p in [*parts, text[start:]] if p.strip()]


def _clauses(doc: str) -> list[str]:
    """A docstring cut into sentences and their ``;``-separated parts (outside parentheses)."""
    text = " ".join((doc or "").split())
    sentences = re.split(r"(?<=\.)\s+(?=[A-Z`])", text)
    return [clause for sentence in sentences for clause in _split(sentence, ";")]


def _keys_named(text: str) -> set[str]:
    return set(re.findall(r"``([a-z_0-9]+)``", text))


def _meaning(doc: str, key: str, keys: set[str]) -> str:
    """The clauses of a section's docstring that name ``key``; a clause that names more than two
    keys (a list such as "``a`` (...), ``b`` (...)") gives only its comma-separated part, unless
    it is the key's own list ("``key``: ...")."""
    found = []
    for clause in _clauses(doc):
        if f"``{key}``" not in clause:
            continue
        if len(_keys_named(clause) & keys) > 2 and not clause.startswith(f"``{key}``:"):
            found += [part for part in _split(clause, ",") if f"``{key}``" in part]
        else:
            found.append(clause)
    return " … ".join(_rst(c).replace("|", "\\|") for c in found)


def _intro(doc: str, keys: set[str]) -> str:
    """The sentences of a section's docstring that name no key (the table has the others)."""
    text = " ".join((doc or "").split())
    sentences = re.split(r"(?<=\.)\s+(?=[A-Z`])", text)
    return " ".join(_rst(s) for s in sentences if not _keys_named(s) & keys)


def config_keys() -> list[dict[str, str]]:
    """One row per config key, in the order of the dataclasses: ``key``, ``type``, ``default``,
    ``accepts``, ``meaning`` (empty when the docstrings say nothing of it) and ``section_doc``."""
    _use_checkout()
    from robustft.config import RunConfig, flatten

    config = RunConfig()
    defaults = flatten(config.to_dict())
    rows: list[dict[str, str]] = []
    top_hints = typing.get_type_hints(RunConfig)
    for top in dataclasses.fields(RunConfig):
        cls = top_hints[top.name]
        if dataclasses.is_dataclass(cls):
            section: str | None = top.name
            hints, names = typing.get_type_hints(cls), [f.name for f in dataclasses.fields(cls)]
            doc = cls.__doc__ or ""
        else:
            section, hints, names, doc = None, {top.name: cls}, [top.name], RunConfig.__doc__ or ""
        for name in names:
            key = f"{section}.{name}" if section else name
            rows.append(
                {
                    "key": key,
                    "type": _type_name(hints[name]),
                    "default": _yaml(
                        defaults[key]
                        if key in defaults  # to_dict() leaves an unset fingerprints section out
                        else getattr(getattr(config, top.name), name)
                    ),
                    "accepts": _accepts(section, name),
                    "meaning": _meaning(doc, name, set(names)),
                    "section": section or "",
                    "section_doc": _intro(doc, set(names)),
                }
            )
    return rows


def config_reference() -> str:
    """Markdown of every config key, one table per section."""
    lines: list[str] = []
    section: str | None = None
    for row in config_keys():
        if row["section"] != section:
            section = row["section"]
            title = f"`{section}`" if section else "top level"
            lines += ["", f"## {title}", ""]
            lines += [row["section_doc"], ""] if row["section_doc"] else []
            lines += ["| key | type | default | accepts | meaning |", "|---|---|---|---|---|"]
        cells = [f"`{row['key']}`", row["type"], f"`{row['default']}`", row["accepts"]]
        lines.append("| " + " | ".join([*cells, row["meaning"] or "—"]) + " |")
    return "\n".join(lines).strip() + "\n"


def benchmark_tables() -> str:
    """The tables of ``benchmarks/results.json``, as ``benchmarks/RESULTS.md`` has them."""
    _use_checkout()  # table.py takes its markdown table from robustft.utils.text
    bench = ROOT / "benchmarks"
    spec = importlib.util.spec_from_file_location("robustft_benchmark_table", bench / "table.py")
    assert spec is not None and spec.loader is not None
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    results = json.loads((bench / "results.json").read_text())
    text: str = table.render(results, title=None, level=2)
    return text


PARTS: dict[str, Callable[[], str]] = {
    "cli": cli_reference,
    "config": config_reference,
    "benchmarks": benchmark_tables,
}


def expand(markdown: str, where: str = "page") -> str:
    """``markdown`` with every ``<!-- generated: NAME -->`` line replaced by its part."""

    def part(match: re.Match[str]) -> str:
        name = match[1]
        if name not in PARTS:
            raise ValueError(f"{where}: unknown generated part {name!r}; known: {sorted(PARTS)}")
        return PARTS[name]()

    return MARKER.sub(part, markdown)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """mkdocs event: expand the page's generated parts."""
    return expand(markdown, page.file.src_uri)
