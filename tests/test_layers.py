"""The layers contract (pyproject.toml, [tool.importlinter]) holds, and it has teeth: a copy of
the package with one deliberate upward import, or a torch import where none may be, fails it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the package under ``tree/src`` with the project's contracts."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    return subprocess.run(
        [LINT, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "src" / "robustft", tmp_path / "src" / "robustft")
    return tmp_path


def add_line(module: Path, line: str) -> None:
    """Append a function whose body is ``line`` (an import inside a function counts too)."""
    module.write_text(module.read_text() + f"\n\ndef _deliberate() -> None:\n    {line}\n")


def test_the_package_keeps_its_contracts() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Contracts: 2 kept, 0 broken." in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # L2 (run) reaching up into L4 (training)
        ("run/rundir.py", "from robustft.training import fit", "robustft.run is not allowed"),
        # L0 (utils) reaching up into L1 (data)
        ("utils/seeding.py", "import robustft.data.splits", "robustft.utils is not allowed"),
        # the light path importing torch
        ("config.py", "import torch", "robustft.config is not allowed to import torch"),
    ],
)
def test_an_upward_import_breaks_them(tmp_path: Path, module: str, line: str, broken: str) -> None:
    tree = copy_package(tmp_path)
    add_line(tree / "src" / "robustft" / module, line)
    done = lint(tree)
    assert done.returncode != 0
    assert broken in done.stdout, done.stdout[-3000:]
