#!/usr/bin/env bash
# The GPU run, one command from the repository root of a GPU machine (no network needed):
#
#   bash bench/gpu_run.sh [RESULTS_DIR]          # default RESULTS_DIR: $OUT, else gpu-results/
#   bash bench/gpu_run.sh --tiny [RESULTS_DIR]   # the same path on the CPU in a minute (CI runs this)
#
# Prepare it where there is network: `make gpu-bundle` (wheels + Fashion-MNIST in .gpu-bundle/), then
# carry .gpu-bundle to the machine. Phases, each with a time limit and its wall time recorded:
#   1. CUDA smoke of lenet5, vgg16, resnet50, densenet121 (side by side): baseline, 2 trials, report,
#      pick and ONNX export; any error stops the script with the failing model's last lines;
#   2. studies of vgg16, resnet50 and densenet121 at the budget gpu-quick, side by side on the one GPU,
#      each with its recovery and report;
#   3. the GPU benchmarks: training-loop throughput against a bare step (four models), and the share of
#      pruning + measuring + checkpointing in a DenseNet121 trial;
#   4. everything packed into RESULTS_DIR/gpu-results.tar.gz (re-packed after every phase, so a run cut
#      short leaves what it had), with timings.json and the log beside it.
set -uo pipefail
cd "$(dirname "$0")/.."

TINY=0
if [ "${1:-}" = "--tiny" ]; then TINY=1; shift; fi
RESULTS=${1:-${OUT:-gpu-results}}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
WORK=${GPU_RUN_WORK:-$(mktemp -d /tmp/gpu-run.XXXXXX)}
mkdir -p "$WORK"
LOG="$RESULTS/gpu-run.log"
PY=${PYTHON:-python3}
START=$(date +%s)
export PYTHONUNBUFFERED=1 AUTOML_PRUNE_YES=1
: > "$LOG"

say() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
fail() { say "FAILED: $*"; pack; exit 1; }

TIMINGS="$WORK/timings.json"
echo "{}" > "$TIMINGS"
record() {  # record PHASE SECONDS STATUS
  "$PY" - "$TIMINGS" "$1" "$2" "$3" <<'EOF'
import json, sys
path, phase, seconds, status = sys.argv[1:]
data = json.load(open(path))
data[phase] = {"seconds": int(seconds), "status": status}
json.dump(data, open(path, "w"), indent=1)
EOF
}

pack() {  # one archive of every report, plot, front and benchmark output so far
  cp "$TIMINGS" "$RESULTS/timings.json" 2>/dev/null
  (cd "$WORK" && find . -maxdepth 3 \( -name report.md -o -name report.json -o -name pareto.csv -o -name pareto.png \
      -o -name '*.bench.txt' -o -name '*.stderr' -o -name timings.json -o -name '*.sidecar.json' \) -print0 \
      | tar --null -czf "$RESULTS/gpu-results.tar.gz" -T - 2>/dev/null)
}

phase() {  # phase NAME LIMIT_SECONDS COMMAND...: run with a time limit, record its wall time
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  say "phase $name (limit ${limit}s)"
  timeout --signal=TERM --kill-after=10 "$limit" "$@"
  local rc=$? t=$(( $(date +%s) - t0 ))
  local status=ok; [ $rc -eq 124 ] && status=timeout; [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="exit $rc"
  record "$name" "$t" "$status"
  say "phase $name: $status after ${t}s"
  pack
  return $rc
}

# --- set-up: the bundle, offline ---------------------------------------------------------------------
if ! "$PY" -c "import optuna, torch_pruning, optuna_dashboard" 2>/dev/null; then
  [ -d .gpu-bundle/wheels ] || fail "optuna / torch-pruning are missing and there is no .gpu-bundle: run make gpu-bundle where there is network, then carry .gpu-bundle"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .gpu-bundle/wheels/*.whl \
    || fail "installing .gpu-bundle/wheels"
  export PYTHONPATH="$WORK/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
DATA=data; [ -d .gpu-bundle/data ] && DATA=.gpu-bundle/data
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG" "$WORK/device.bench.txt"
import torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device: the CPU"
print(f"device: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}; {torch.get_num_threads()} CPU threads")
EOF

if [ $TINY = 1 ]; then
  DEVICE=cpu; SMOKE_MODELS="lenet5"; STUDY_MODELS="lenet5"; STUDY_BUDGET=smoke; STUDY_TRIALS=--trials=4
  BENCH_MODELS="lenet5"; BENCH_ARGS="--steps 3 --repeats 1"; COST_ARGS="--models lenet5 --repeats 1 --bn-batches 2 --finetune-steps 2"
  LIMITS=(300 300 300)
else
  DEVICE=cuda; SMOKE_MODELS="lenet5 vgg16 resnet50 densenet121"; STUDY_MODELS="vgg16 resnet50 densenet121"
  STUDY_BUDGET=gpu-quick; STUDY_TRIALS=; BENCH_MODELS="lenet5 vgg16 resnet50 densenet121"; BENCH_ARGS="--repeats 3"
  COST_ARGS="--models densenet121 --repeats 2"
  LIMITS=(90 330 110)
fi

config_for() {  # a study's config: the model's YAML with the report sized for a short lease
  "$PY" - "$1" "$2" <<'EOF'
import sys, yaml
model, path = sys.argv[1:]
cfg = yaml.safe_load(open(f"configs/{model}.yaml"))
cfg["report"] = {**cfg.get("report", {}), "recover_points": 3, "latency": "recovered"}
yaml.safe_dump(cfg, open(path, "w"))
EOF
}

# --- 1. CUDA smoke -------------------------------------------------------------------------------------
smoke_one() {
  local m=$1 out="$WORK/smoke/$1"
  mkdir -p "$out"
  config_for "$m" "$out.yaml"
  "$PY" -m search.run --model "$m" --config "$out.yaml" --budget smoke --trials 2 --device "$DEVICE" --out "$out" \
      --data-dir "$DATA" --quiet 2> "$out.stderr" \
  && "$PY" -m search.pick --model "$m" --budget smoke --out "$out" --device "$DEVICE" --data-dir "$DATA" \
      --max-drop 100 --save "$out/picked.pt" --export onnx > "$out/pick.json" 2>> "$out.stderr" \
  && cp "$out/picked.json" "$WORK/smoke/$m.sidecar.json"
}
smoke() {
  local pids=() m
  for m in $SMOKE_MODELS; do smoke_one "$m" & pids+=($!); done
  local rc=0 i=0
  for m in $SMOKE_MODELS; do
    if ! wait "${pids[$i]}"; then rc=1; say "smoke of $m failed: $(tail -n 3 "$WORK/smoke/$m.stderr" | tr '\n' ' ')"; fi
    i=$((i + 1))
  done
  return $rc
}
export START LOG WORK PY DEVICE DATA SMOKE_MODELS STUDY_MODELS STUDY_BUDGET STUDY_TRIALS
export -f say config_for smoke smoke_one
phase smoke "${LIMITS[0]}" bash -c smoke || fail "the smoke run (see smoke/*.stderr in $RESULTS/gpu-results.tar.gz)"

# --- 2. the studies, side by side on the one GPU --------------------------------------------------------
study_one() {  # one study; its wall time is the last line of its .stderr
  local m=$1 t0=$SECONDS
  "$PY" -m search.run --model "$m" --config "$WORK/studies/$m.yaml" --budget "$STUDY_BUDGET" $STUDY_TRIALS \
      --device "$DEVICE" --out "$WORK/studies/$m" --data-dir "$DATA" --quiet 2> "$WORK/studies/$m.stderr"
  local rc=$?
  echo "$m study: exit $rc, wall $((SECONDS - t0)) s" >> "$WORK/studies/$m.stderr"
  return $rc
}
studies() {
  local pids=() m rc=0
  mkdir -p "$WORK/studies"
  for m in $STUDY_MODELS; do
    config_for "$m" "$WORK/studies/$m.yaml"
    study_one "$m" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  for m in $STUDY_MODELS; do tail -n 1 "$WORK/studies/$m.stderr" | tee -a "$LOG"; done
  return $rc
}
export -f study_one studies
phase studies "${LIMITS[1]}" bash -c studies || say "the studies did not all finish (see studies/*.stderr in the archive)"

# --- 3. the GPU benchmarks --------------------------------------------------------------------------------
phase benchmarks "${LIMITS[2]}" bash -c "'$PY' bench/throughput.py --models $BENCH_MODELS $BENCH_ARGS \
  > '$WORK/throughput.bench.txt' 2>&1; '$PY' bench/prune_cost.py $COST_ARGS > '$WORK/prune_cost.bench.txt' 2>&1" \
  || say "the benchmarks did not finish"
cat "$WORK"/*.bench.txt >> "$LOG" 2>/dev/null

# --- 4. the results ---------------------------------------------------------------------------------------
"$PY" - "$WORK" <<'EOF' 2>&1 | tee -a "$LOG" "$WORK/results.bench.txt"
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
print("| model | original size | pruned size | pruned % | accuracy drop (test) | budget |")
print("|---|---|---|---|---|---|")
for report in sorted((work / "studies").glob("*/report.json")):
    r = json.loads(report.read_text())
    h = r["headline"]
    if h is None:
        print(f"| {r['model']} | {r['baseline']['size_mb']:.3f} MB | no point within the drop | | | {r['budget']} |")
    else:
        print(f"| {r['model']} | {r['baseline']['size_mb']:.3f} MB | {h['size_mb']:.3f} MB | {h['pruned_pct']:.1f} % | "
              f"{h['accuracy_drop']:.2f} pts | {r['budget']} |")
EOF
pack
say "done in $(( $(date +%s) - START ))s; results: $RESULTS/gpu-results.tar.gz"
