#!/usr/bin/env bash
# GPU readiness in one command, on a fresh machine with a CUDA GPU and Python 3.10+:
#   bash benchmarks/gpu_check.sh [OUT_JSON]
# 1. a virtualenv (.venv-gpu) with torch 2.14.1 / torchvision 0.29.1 and robustft[test];
# 2. the GPU-marked tests (pytest -m gpu);
# 3. attacks and a PGD-7 training step of timm:vit_small_patch16_224 at 224 px (random init)
#    in fp32, bf16 autocast and bf16 + torch.compile (benchmarks/gpu_bench.py);
# one JSON file (default benchmarks/gpu_results.json) with the tests' outcome and the timings.
# Budget: under 5 minutes on one GPU (install about 2, tests under 1, benchmark about 1).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/gpu_results.json}"
PY="${PYTHON:-python3}"
VENV=".venv-gpu"
started=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/python" -m pip install -q -e ".[test]"
"$VENV/bin/python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))"

tests_json="$(mktemp)"
set +e
"$VENV/bin/python" -m pytest -q -m gpu -p no:cacheprovider --junitxml="$tests_json.xml" tests
tests_rc=$?
set -e
"$VENV/bin/python" - "$tests_json.xml" "$tests_rc" > "$tests_json" <<'PYEOF'
import json, sys
import xml.etree.ElementTree as ET
suite = ET.parse(sys.argv[1]).getroot()
suite = suite if suite.tag == "testsuite" else suite[0]
print(json.dumps({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
                 | {"exit_code": int(sys.argv[2]), "seconds": float(suite.get("time", 0))}))
PYEOF

bench_json="$(mktemp)"
"$VENV/bin/python" benchmarks/gpu_bench.py --device cuda --out "$bench_json"

"$VENV/bin/python" - "$tests_json" "$bench_json" "$OUT" "$started" <<'PYEOF'
import json, sys, time
tests, bench, out, started = sys.argv[1:]
result = {"gpu_tests": json.load(open(tests)), "benchmark": json.load(open(bench)),
          "total_seconds": round(time.time() - int(started), 1)}
open(out, "w").write(json.dumps(result, indent=1) + "\n")
print(f"wrote {out} in {result['total_seconds']} s")
PYEOF
exit "$tests_rc"
