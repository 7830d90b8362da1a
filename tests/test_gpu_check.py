"""benchmarks/gpu_check.sh without a GPU: its one JSON file, its time-boxed steps' records and
its arguments (the full rehearsal, ``--dry``, takes 90 to 130 s on 2 cores and is a documented
command: docs/results/performance.md, "GPU")."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_check

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    env.pop("OUT", None)
    cmd = ["bash", str(SCRIPT), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)


@needs_bash
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA it runs the whole GPU check")
def test_without_cuda_it_installs_offline_and_writes_one_json(tmp_path: Path) -> None:
    """No CUDA device and no --dry: the probe, the install from the source tree with no index
    (into a scratch target) and the import run; the GPU steps are one recorded error; exit 1;
    ``--out DIR`` names ``DIR/gpu_check.json``."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    done = check("--out", f"{tmp_path}/", "--wheels", str(wheels))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "gpu_check: error: no CUDA device" in done.stdout
    assert f"no wheels in {wheels}/" in done.stdout
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["dry"] is False and result["wheels"] == [] and result["skipped"] == []
    assert result["node"]["cuda_available"] is False
    assert result["node"]["torch"] == torch.__version__
    steps = result["steps"]
    assert list(steps) == ["probe", "cuda", "install", "robustft"]
    assert steps["cuda"]["status"] == "failed"
    assert steps["cuda"]["message"].startswith("no CUDA device")
    assert steps["probe"]["status"] == steps["robustft"]["status"] == "ok"
    where = Path(result["robustft"]["path"])
    if steps["install"]["status"] == "ok":  # built from a copy of the tree, not the tree's src/
        assert where.parent.parent.name == "site"
    else:
        assert where == ROOT / "src" / "robustft" / "__init__.py"
    assert result["tests"] == {} and result["benchmarks"] == {}
    assert 0 < result["total_seconds"] < 240


@needs_bash
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget-s", "5m"], "gpu_check: error: --budget-s '5m' is not whole seconds (e.g. 285)"),
        (["--gpu"], "gpu_check: error: unknown argument '--gpu' (use --out, --wheels, --budget-s,"),
    ],
)
def test_bad_arguments_are_one_line(args: list[str], message: str) -> None:
    done = check(*args)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1


def test_report_gathers_steps_tests_and_benchmarks(tmp_path: Path) -> None:
    """A failed step keeps its one line and its log's end; JUnit outcomes and messages, the
    benchmark files and the skip lines all land in the one JSON file."""
    work = tmp_path / "work"
    work.mkdir()
    log = work / "gpu-tests.log"
    log.write_text("\n".join(f"line {i}" for i in range(30)) + "\n")
    (work / "steps.tsv").write_text(
        f"probe\tok\t1.5\tPython 3.12\t\ngpu-tests\tfailed\t42.0\t1 failed, 1 passed\t{log}\n"
        "bench-vit\ttimed out\t90.0\ttimed out after 90 s; last line: x\t/nonexistent.log\n"
    )
    (work / "node.json").write_text('{"cuda_available": true}')
    (work / "skipped.txt").write_text("torchattacks' PGD cross-check needs torchattacks\n")
    junit = work / "gpu-tests.xml"
    junit.write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1" time="4.5">'
        '<testcase classname="tests.test_a" name="test_ok" time="1"/>'
        '<testcase classname="tests.test_a" name="test_bad" time="1">'
        '<failure message="AssertionError: 2 != 3&#10;more">trace</failure></testcase>'
        '<testcase classname="tests.test_b" name="test_gpu" time="0">'
        '<skipped message="needs CUDA"/></testcase>'
        "</testsuite></testsuites>"
    )
    bench = work / "bench.json"
    bench.write_text('{"results": {"pgd-10": {}}}')
    out = tmp_path / "out" / "check.json"
    args = ["report", "--work", str(work), "--out", str(out), "--started", "0"]
    args += ["--wheels", str(tmp_path), "--tests", f"gpu={junit}", "--bench", f"vit={bench}"]
    args += ["--bench", f"lite={work / 'absent.json'}"]
    assert gpu_check.main(args) == 0
    result = json.loads(out.read_text())
    assert result["node"] == {"cuda_available": True} and result["robustft"] is None
    assert result["skipped"] == ["torchattacks' PGD cross-check needs torchattacks"]
    steps = result["steps"]
    assert steps["probe"] == {"status": "ok", "seconds": 1.5, "message": "Python 3.12"}
    assert steps["gpu-tests"]["message"] == "1 failed, 1 passed"
    assert steps["gpu-tests"]["log_tail"] == [f"line {i}" for i in range(10, 30)]
    assert steps["bench-vit"]["status"] == "timed out" and "log_tail" not in steps["bench-vit"]
    tests = result["tests"]["gpu"]
    assert (tests["tests"], tests["failures"], tests["skipped"]) == (3, 1, 1)
    assert tests["cases"] == [
        {"test": "tests.test_a::test_ok", "outcome": "passed"},
        {
            "test": "tests.test_a::test_bad",
            "outcome": "failed",
            "message": "AssertionError: 2 != 3",
        },
        {"test": "tests.test_b::test_gpu", "outcome": "skipped", "message": "needs CUDA"},
    ]
    assert result["benchmarks"] == {"vit": {"results": {"pgd-10": {}}}}
