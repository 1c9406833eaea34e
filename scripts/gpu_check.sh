#!/usr/bin/env bash
# The GPU check: sst's GPU-marked tests and the three GPU benchmarks, in one run
# that writes everything into OUT_DIR and ends with a summary table.
#
# Usage, from the repository root (on the device machine, which gets a copy of the working
# tree; $OUT is the folder whose files come back):
#
#     bash scripts/gpu_check.sh "$OUT"
#
# Parts, each under its own `timeout` and all within a 330 s budget (under 6 minutes on one
# GPU, the install step aside):
#   env      versions of Python, torch, CUDA and the card (env.txt, nvidia-smi.txt)
#   tests    python -m pytest -m gpu -q  (gpu-tests.xml: junit, gpu-tests.log)
#   bench:*  python scripts/bench_gpu.py --only <name>, one process per benchmark
#            (bench-<name>.md: the tables, bench-<name>.log: progress and errors)
# summary.md holds the table printed at the end. Without a GPU every part still runs and
# reports its GPU work as skipped (a CPU machine is where this script is checked).
#
# Python: $PYTHON if set, else .venv/bin/python if present, else python3. The script
# installs nothing, except `pip install -e .[dev]` when sst or its test dependencies do not
# import (install.log). Exit status: 0 when no part failed (passed or skipped), 1 otherwise.
#
# Budget knobs (seconds): GPU_CHECK_BUDGET (330), GPU_CHECK_TESTS_S (160),
# GPU_CHECK_TRAINING_S (75), GPU_CHECK_CONDENSED_S (45), GPU_CHECK_SEMI_S (45).
# GPU_CHECK_QUICK=1 runs the benchmarks with --quick.

set -u -o pipefail

if [ $# -ne 1 ]; then
    echo "usage: bash scripts/gpu_check.sh OUT_DIR   (from the repository root)" >&2
    exit 2
fi
OUT=$1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)

START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-330}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # scripts/ import sst from the checkout
export WANDB_SILENT=true WANDB_MODE=offline

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
else
    PY=python3
fi

ROWS=()   # "part|status|passed|failed|skipped|seconds|output"
FAILED=0

add_row() {
    ROWS+=("$1|$2|$3|$4|$5|$6|$7")
    case $2 in passed | skipped) ;; *) FAILED=1 ;; esac
    echo "[gpu_check] $1: $2 ($6 s)"
}

# seconds this part may take: its cap, or what is left of the budget
part_limit() {
    local left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

# ------------------------------------------------------------------ install (only if needed)
IMPORTS="import sst.launch.build, sst.condensed, hydra, omegaconf, pytest"
if ! "$PY" -c "$IMPORTS" >/dev/null 2>&1; then
    t0=$(date +%s)
    echo "[gpu_check] sst or its dependencies do not import: pip install -e .[dev]"
    if timeout -k 10 300 "$PY" -m pip install -e ".[dev]" >"$OUT/install.log" 2>&1 \
        && "$PY" -c "$IMPORTS" >>"$OUT/install.log" 2>&1; then
        add_row install passed 1 0 0 $(($(date +%s) - t0)) install.log
    else
        add_row install failed 0 1 0 $(($(date +%s) - t0)) install.log
    fi
    START=$(date +%s)  # the budget covers the check itself
fi

# ------------------------------------------------------------------ env
t0=$(date +%s)
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(hostname)"
    echo "python: $PY"
    timeout -k 5 "$(part_limit 30)" "$PY" - <<'EOF'
import platform
import torch
print(f"Python {platform.python_version()}, torch {torch.__version__}, built for CUDA "
      f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
print(f"CUDA available: {torch.cuda.is_available()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"GPU {i}: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB")
try:
    import triton
    print(f"Triton {triton.__version__}")
except ImportError:
    print("Triton: not installed")
EOF
} >"$OUT/env.txt" 2>&1
env_rc=$?
if command -v nvidia-smi >/dev/null 2>&1; then
    timeout -k 5 20 nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
else
    echo "nvidia-smi: not found" >"$OUT/nvidia-smi.txt"
fi
cat "$OUT/env.txt"
HAS_CUDA=$(grep -c "^CUDA available: True" "$OUT/env.txt")
if [ "$env_rc" -ne 0 ]; then
    add_row env failed 0 1 0 $(($(date +%s) - t0)) env.txt
elif [ "$HAS_CUDA" -eq 0 ]; then
    add_row env skipped 0 0 1 $(($(date +%s) - t0)) "env.txt (no CUDA device)"
else
    add_row env passed 1 0 0 $(($(date +%s) - t0)) env.txt
fi

# ------------------------------------------------------------------ tests
t0=$(date +%s)
limit=$(part_limit "${GPU_CHECK_TESTS_S:-160}")
timeout -k 10 "$limit" "$PY" -m pytest -m gpu -q -rs --durations=15 -p no:cacheprovider \
    --junitxml="$OUT/gpu-tests.xml" >"$OUT/gpu-tests.log" 2>&1
rc=$?
seconds=$(($(date +%s) - t0))
tail -n 25 "$OUT/gpu-tests.log"
# counts from the junit XML: passed failed skipped
counts=$("$PY" - "$OUT/gpu-tests.xml" <<'EOF' 2>/dev/null
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
bad = n["failures"] + n["errors"]
print(n["tests"] - bad - n["skipped"], bad, n["skipped"])
EOF
) || counts="0 0 0"
read -r passed failed skipped <<<"$counts"
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status="timeout (${limit} s)"
elif [ "$rc" -ne 0 ] || [ "$failed" -gt 0 ]; then
    status=failed
elif [ "$passed" -eq 0 ] && [ "$skipped" -gt 0 ]; then
    status=skipped
elif [ "$passed" -gt 0 ]; then
    status=passed
else
    status="failed (no test ran)"
fi
add_row tests "$status" "$passed" "$failed" "$skipped" "$seconds" "gpu-tests.log, gpu-tests.xml"

# ------------------------------------------------------------------ benchmarks
QUICK=()
if [ "${GPU_CHECK_QUICK:-0}" = 1 ]; then QUICK=(--quick); fi
for part in training:"${GPU_CHECK_TRAINING_S:-75}" condensed:"${GPU_CHECK_CONDENSED_S:-45}" \
    semi_structured:"${GPU_CHECK_SEMI_S:-45}"; do
    name=${part%%:*}
    limit=$(part_limit "${part##*:}")
    t0=$(date +%s)
    if [ "$limit" -lt 5 ]; then
        add_row "bench:$name" "not run (budget spent)" 0 1 0 0 -
        continue
    fi
    rm -f "$OUT/bench-$name.json"
    timeout -k 10 "$limit" "$PY" scripts/bench_gpu.py --only "$name" ${QUICK[@]+"${QUICK[@]}"} \
        --status "$OUT/bench-$name.json" >"$OUT/bench-$name.md" 2>"$OUT/bench-$name.log"
    rc=$?
    seconds=$(($(date +%s) - t0))
    state=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["status"])' \
        "$OUT/bench-$name.json" "$name" 2>/dev/null) || state=""
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        add_row "bench:$name" "timeout (${limit} s)" 0 1 0 "$seconds" "bench-$name.log"
    elif [ "$rc" -eq 0 ] && [ "$state" = ran ]; then
        add_row "bench:$name" passed 1 0 0 "$seconds" "bench-$name.md"
    elif [ "$rc" -eq 0 ] && [ "$state" = skipped ]; then
        why=$(grep -m1 "^skipped: " "$OUT/bench-$name.md" | cut -c10-)
        add_row "bench:$name" skipped 0 0 1 "$seconds" "bench-$name.md ($why)"
    else
        add_row "bench:$name" failed 0 1 0 "$seconds" "bench-$name.log (exit $rc)"
    fi
done

# ------------------------------------------------------------------ summary
{
    echo "## GPU check summary"
    echo
    echo "$(grep -m1 '^Python ' "$OUT/env.txt" 2>/dev/null)"
    grep '^GPU [0-9]' "$OUT/env.txt" 2>/dev/null || echo "GPU: none (no CUDA device)"
    echo
    echo "| part | status | passed | failed | skipped | seconds | output |"
    echo "|---|---|---|---|---|---|---|"
    for row in "${ROWS[@]}"; do
        echo "| ${row//|/ | } |"
    done
    echo
    echo "Total: $(($(date +%s) - START)) s; exit status $FAILED"
} >"$OUT/summary.md"
echo
cat "$OUT/summary.md"
exit "$FAILED"
