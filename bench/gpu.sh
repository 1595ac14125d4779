#!/usr/bin/env bash
# The device checks, in one go, for a GPU machine (one H200: about 7 minutes; each step has its own time limit so
# the whole stays under 9). Results land in $OUT (when set) or bench/results/gpu/:
#   gpu.json              every model kind's parity on TensorRT and CUDA against the CPU provider, and the
#                         window-shift rollout with its state on the device against through the host (bench/gpu.py)
#   serve_forecast.json   bench/serve_forecast.py, servers on CUDA (short load phases)
#   serve_recommend.json  bench/serve_recommend.py on a PRORec model trained here for 2 minutes (no accuracy pass)
#   gpu.log               everything printed
#
#   bench/gpu.sh              # on the GPU machine, from the repository root
#   bench/gpu.sh --dry-run    # anywhere: the same steps on the CPU provider with tiny inputs (what the tests run)
#
# PYTHON: the interpreter with arcast installed (default .venv/bin/python, else python3); data from
# $ARCAST_DATA_DIR as everywhere. A step that fails is recorded and the next one still runs; the exit status is
# the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
PY="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
RESULTS="${OUT:-bench/results/gpu}"
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu.log"
: >"$LOG"
FAILED=0
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export HF_HUB_OFFLINE=1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log it, count a failure
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local started=$SECONDS
  timeout --signal=TERM --kill-after=20 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local status=${PIPESTATUS[0]}
  echo "== $name: exit $status after $((SECONDS - started)) s" | tee -a "$LOG"
  [[ $status -eq 0 ]] || FAILED=$((FAILED + 1))
}

if [[ $DRY -eq 1 ]]; then
  step parity 300 "$PY" bench/gpu.py --dry-run --kinds naive arnet --out "$RESULTS/gpu.json"
  # the serving benchmarks: their command lines parse (a dry run has no device to measure)
  step serve_forecast_args 60 "$PY" bench/serve_forecast.py --help
  step serve_recommend_args 60 "$PY" bench/serve_recommend.py --help
else
  "$PY" -c "import onnxruntime as o, torch; print(o.__version__, o.get_available_providers(), torch.cuda.is_available())" \
    2>&1 | tee -a "$LOG"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
  step parity 210 "$PY" bench/gpu.py --out "$RESULTS/gpu.json"
  step serve_forecast 170 "$PY" bench/serve_forecast.py --seconds 2 --providers CUDAExecutionProvider,CPUExecutionProvider \
    --out "$RESULTS/serve_forecast.json"
  step recommender_train 80 "$PY" -m recsys train --variant prorec --dataset beauty --sasrec-minutes 0.4 --minutes 0.6 \
    --d-model 64 --d-ff 256 --encoder-unit item --lr 2e-3 --eval-users 1000 --out "$WORK/beauty-prorec"
  step serve_recommend 60 "$PY" bench/serve_recommend.py --run "$WORK/beauty-prorec" --seconds 2 --repeats 10 \
    --skip-accuracy --providers CUDAExecutionProvider,CPUExecutionProvider --out "$RESULTS/serve_recommend.json"
fi
echo "failed steps: $FAILED; results in $RESULTS" | tee -a "$LOG"
exit "$FAILED"
