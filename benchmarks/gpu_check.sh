#!/usr/bin/env bash
# One-shot GPU check for a machine lent for 15 minutes; finishes in at most 8 minutes.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--out DIR]
#
# Steps (each under its own time limit; a step that fails or times out is reported, the next
# one still runs):
#   1. gpu_tests   pytest -m gpu: the tests that need a CUDA device                      (90 s)
#   2. latency     oai models --latency at the paper's shapes, bf16, batch 1             (120 s)
#   3. throughput  training volumes/s of 2d_trf and 3d_shufflenet at paper size, bf16,
#                  channels_last, volumes resident on the device, with GPU utilisation
#                  sampled by nvidia-smi every 200 ms                                    (120 s)
#   4. precision   bf16 vs fp32 training of 3d_shufflenet on full-size synthetic volumes
#                  (same initialisation and batches): losses, max probability difference  (150 s)
# At the end it prints one table: step, status, seconds, result. Logs and JSON go to --out
# (default: a new folder under /tmp). --dry-run lists the steps and their commands only.
set -uo pipefail

DRY_RUN=0
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1; shift ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (use --dry-run, --out DIR)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python}"
OAI="${OAI:-oai}"

STEPS=(gpu_tests latency throughput precision)
declare -A LIMIT=([gpu_tests]=90 [latency]=120 [throughput]=120 [precision]=150)
declare -A CMD=(
    [gpu_tests]="$PY -m pytest -q -m gpu -p no:cacheprovider tests"
    [latency]="$OAI models --latency --device cuda --precision bf16 --batch 1 --repeats 20 --json"
    [throughput]="$PY benchmarks/train.py --size paper --device cuda --models 2d_trf,3d_shufflenet --steps 10 --skip-loading --json"
    [precision]="$PY benchmarks/precision_compare.py --device cuda --size full --model 3d_shufflenet --steps 40 --knees 16 --batch 8 --json"
)

if [[ $DRY_RUN -eq 1 ]]; then
    total=0
    printf '%-11s %6s  %s\n' step limit command
    for step in "${STEPS[@]}"; do
        printf '%-11s %5ss  %s\n' "$step" "${LIMIT[$step]}" "${CMD[$step]}"
        total=$((total + LIMIT[$step]))
    done
    echo "worst case ${total} s (budget 480 s); logs would go to ${OUT:-a new folder under /tmp}"
    exit 0
fi
OUT="${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}"

command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: not a GPU machine" >&2; exit 1; }
mkdir -p "$OUT"
declare -A STATUS SECONDS_TAKEN RESULT

run_step() {  # run_step NAME: the step's command under its limit, output to $OUT/NAME.log
    local step="$1" start rc
    start=$SECONDS
    timeout "${LIMIT[$step]}" bash -c "${CMD[$step]}" >"$OUT/$step.log" 2>&1
    rc=$?
    SECONDS_TAKEN[$step]=$((SECONDS - start))
    if [[ $rc -eq 0 ]]; then STATUS[$step]=ok
    elif [[ $rc -eq 124 ]]; then STATUS[$step]=timeout
    else STATUS[$step]="failed($rc)"; fi
}

# 1. GPU tests
run_step gpu_tests
RESULT[gpu_tests]=$(grep -E "passed|failed|error|no tests ran" "$OUT/gpu_tests.log" | tail -1)

# 2. latency (JSON list on stdout)
run_step latency
RESULT[latency]=$("$PY" - "$OUT/latency.log" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
try:
    rows = json.loads(text[text.index("["):])
    print("; ".join(f"{r['name']}{'/' + r['view'] if r.get('view') else ''} {r['latency_ms']:.1f} ms (paper {r['paper_latency_ms']:g})" for r in rows))
except Exception as exc:
    print(f"no result ({type(exc).__name__})")
EOF
)

# 3. throughput with GPU utilisation sampled meanwhile
nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200 >"$OUT/utilisation.csv" 2>/dev/null &
SMI=$!
run_step throughput
kill "$SMI" 2>/dev/null; wait "$SMI" 2>/dev/null
RESULT[throughput]=$("$PY" - "$OUT/throughput.log" "$OUT/utilisation.csv" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
util = [float(v) for v in open(sys.argv[2]).read().split() if v.strip().replace(".", "").isdigit()]
busy = [u for u in util if u > 0]
share = f"GPU util mean {sum(busy) / len(busy):.0f}% over {len(busy)} busy samples" if busy else "no GPU samples"
try:
    data = json.loads(text[text.index("{\n"):])
    models = "; ".join(f"{m['name']} b{m['batch']} {m['pipeline_vol_s']:.0f} vol/s (model alone {m['model_vol_s']:.0f})" for m in data["models"])
    print(f"{models}; {share}")
except Exception as exc:
    print(f"no result ({type(exc).__name__}); {share}")
EOF
)

# 4. bf16 vs fp32
run_step precision
RESULT[precision]=$("$PY" - "$OUT/precision.log" <<'EOF'
import json, sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.startswith("{")]
try:
    d = json.loads(lines[-1])
    runs = {r["precision"]: r for r in d["runs"]}
    print(f"loss last fp32 {runs['fp32']['loss_last']:.3f} / bf16 {runs['bf16']['loss_last']:.3f}; "
          f"max |dp| {d['max_prob_diff']:.3f}; bf16 x{d['speedup']:.2f}")
except Exception as exc:
    print(f"no result ({type(exc).__name__})")
EOF
)

echo
printf '%-11s %-11s %5s  %s\n' step status s result
for step in "${STEPS[@]}"; do
    printf '%-11s %-11s %5s  %s\n' "$step" "${STATUS[$step]}" "${SECONDS_TAKEN[$step]}" "${RESULT[$step]}"
done
echo "logs: $OUT"
