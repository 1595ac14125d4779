#!/usr/bin/env bash
# The device checks and the paper-recipe trainings, for a GPU machine (one H200; every step time-limited, the whole
# under 9 minutes). Results land in $GPU_RESULTS, else $OUT, else bench/results/gpu/:
#   gpu.json              every model kind's parity on TensorRT and CUDA against the CPU provider, and the
#                         window-shift rollout with its state on the device against through the host (bench/gpu.py)
#   serve_forecast.json   bench/serve_forecast.py, servers on CUDA (short load phases)
#   serve_recommend.json  bench/serve_recommend.py on a PRORec model trained here for a minute (no accuracy pass)
#   informer.json         Informer with the paper's configuration on ETTh1 M and S, ETTh2 M, ETTm1 M (issue 14,
#                         bench/informer.py), resuming bench/results/gpu/informer.json
#   autotimes-mlp.json    AutoTimes on ETTh1 with the paper's schedule (10 epochs, batches of 256 series: 37 windows)
#                         and MLP segment maps (issue 15; autotimes.json holds the LLaMA script's linear maps, run
#                         2026-12-04 with batches of 256 windows, 7 times the paper's)
#   recsys-tiger.json     a TIGER-sized PRORec generator on Beauty, codes from $RECSYS_WORK (issue 16)
#   gpu.log, train-*.log  everything printed; gpu-memory.csv: the device's memory and load every 2 s of the checks
#
#   bench/gpu.sh                  # on the GPU machine: the trainings in the background, parity meanwhile, the
#                                 # serving benchmarks once the trainings have ended (quiet device)
#   bench/gpu.sh train NAME...    # start only these trainings in the background (informer autotimes tiger
#                                 # recommender); for a machine whose packages arrive in stages
#   bench/gpu.sh checks           # parity, then the serving benchmarks once the started trainings have ended
#   bench/gpu.sh --dry-run        # anywhere: parity on the CPU provider with tiny inputs, every other step's
#                                 # command line parsed (what the tests run)
#
# GPU_DEADLINE: epoch seconds by which every training ends (default: TRAIN_SECONDS, 420, from the first start);
# the TIGER generator's budget is what is left of it less four minutes for its codes (rebuilt where the carried
# ones do not match) and test pass. RECSYS_WORK: a bench/recsys.py work folder with Beauty's stage-1 embeddings,
# kept semantic side and semantic IDs (default runs/bench-recsys).
# PYTHON: the interpreter with arcast importable (default .venv/bin/python, else python3); data from
# $ARCAST_DATA_DIR as everywhere. A step that fails is recorded and the next one still runs; the exit status is
# the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=all
case "${1:-}" in
  --dry-run) MODE=dry ;;
  train | checks) MODE=$1 ;;
  "") ;;
  *) echo "usage: bench/gpu.sh [--dry-run | train NAME... | checks]" >&2 && exit 2 ;;
esac
[[ $# -gt 0 ]] && shift
PY="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
RESULTS="${GPU_RESULTS:-${OUT:-bench/results/gpu}}"
RECSYS_WORK="${RECSYS_WORK:-runs/bench-recsys}"
mkdir -p "$RESULTS/work"
LOG="$RESULTS/gpu.log"
FAILED=0
export HF_HUB_OFFLINE=1
[[ $MODE == all || $MODE == dry ]] && rm -f "$RESULTS/deadline"  # a fresh run; `train` keeps the first start's
if [[ ! -f "$RESULTS/deadline" ]]; then
  echo "${GPU_DEADLINE:-$(($(date +%s) + ${TRAIN_SECONDS:-420}))}" >"$RESULTS/deadline"
fi
DEADLINE=$(cat "$RESULTS/deadline")

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

quoted() { printf '%q ' "$@"; }  # a command line that bash -c reads back word for word

left() { echo $((DEADLINE - $(date +%s))); }  # seconds to the trainings' deadline

training_command() {  # the command line of one training, its time limit taken from the deadline
  local name=$1
  case "$name" in
    informer)  # the paper's configuration (InformerConfig defaults, 6 epochs, batch 32), every test window: ETTh1 M
      # and S, ETTh2 M, ETTm1 M, resuming after the configurations earlier GPU runs finished (start_training)
      quoted "$PY" bench/informer.py --only accuracy --datasets ETTh1 ETTh2 ETTm1 --threads 2 --resume \
        --out "$RESULTS/informer.json" ;;
    autotimes)  # the paper's schedule (every window, 10 epochs, lr 5e-4 cosine, batches of 256 single-channel series:
      # 37 windows of 7 channels, as --batch-size counts windows) with the MLP segment maps of our CPU row; the
      # rollout chosen on validation
      quoted "$PY" bench/autotimes.py --variants plain --epochs 10 --batch-size 37 --eval-batch-size 256 --threads 4 \
        --mlp-hidden-layers 2 --mlp-hidden-dim 512 --rollouts growing sliding --val-stride 1 --progress \
        --work-dir "$RESULTS/work/autotimes" --out "$RESULTS/autotimes-mlp.json" ;;
    tiger)  # TIGER's generator size (4+4 layers, width 128, MLP 1024), Beauty's recipe otherwise
      local minutes
      minutes=$(awk -v s="$(($(left) - 240))" 'BEGIN { printf "%.1f", (s < 60 ? 60 : s) / 60 }')
      quoted "$PY" bench/recsys.py --only prorec --label "prorec (TIGER-sized generator, GPU, $minutes min)" \
        --generator-minutes "$minutes" --budget-clock wall --rqvae-steps 20000 --vq-reduction sum \
        --lr-schedule inverse_sqrt --warmup-steps 2000 --eval-steps 3000 --patience-steps 15000 --max-steps 200000 \
        --eval-users 5000 --test-only --text-fields title attributes --encoder-unit item --d-model 128 --d-ff 1024 \
        --heads 4 --encoder-layers 4 --decoder-layers 4 --threads 2 --work-dir "$RECSYS_WORK" \
        --out "$RESULTS/recsys-tiger.json" ;;
    recommender)  # the model serve_recommend serves: a PRORec generator trained for a minute; residual k-means
      # codes, since the RQ-VAE's 20,000 CPU steps outlasted the whole lease there (3 minutes in all on this CPU)
      quoted "$PY" -m recsys train --variant prorec --dataset beauty --sasrec-minutes 0.4 --minutes 0.6 --d-model 64 \
        --d-ff 256 --encoder-unit item --lr 2e-3 --eval-users 1000 --quantizer rkmeans \
        --out "$RESULTS/work/beauty-prorec" ;;
    *) echo "unknown training '$name' (informer autotimes tiger recommender)" >&2 && return 1 ;;
  esac
}

start_training() {  # in the background, in its own session; a .done file marks its end
  local name=$1 cmd
  cmd=$(training_command "$name") || return 1
  if [[ $name == informer && ! -f "$RESULTS/informer.json" && -f bench/results/gpu/informer.json ]]; then
    cp bench/results/gpu/informer.json "$RESULTS/"  # what earlier runs finished is skipped (--resume)
  fi
  : >"$RESULTS/$name.started"
  echo "== train $name (until the deadline, $(left) s): $cmd" | tee -a "$LOG"
  setsid bash -c "timeout --signal=TERM --kill-after=20 $(left) $cmd; echo \"exit \$? at \$(date +%s)\" >'$RESULTS/$name.done'" \
    >"$RESULTS/train-$name.log" 2>&1 </dev/null &
}

wait_for_trainings() {  # until every started training has its .done, or the deadline (and their kill margin) passed
  local name
  for started in "$RESULTS"/*.started; do
    [[ -e "$started" ]] || continue
    name=$(basename "$started" .started)
    while [[ ! -f "$RESULTS/$name.done" && $(left) -gt -40 ]]; do sleep 2; done
    echo "== train $name: $(cat "$RESULTS/$name.done" 2>/dev/null || echo 'no end recorded')" | tee -a "$LOG"
    # cut at the deadline (124) is how a long training ends here: its rows are written as they finish
    grep -qE "^exit (0|124) " "$RESULTS/$name.done" 2>/dev/null || FAILED=$((FAILED + 1))
  done
}

checks() {
  "$PY" -c "import onnxruntime as o, torch; print(o.__version__, o.get_available_providers(), torch.cuda.is_available())" \
    2>&1 | tee -a "$LOG"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
  # the device's memory every 2 s, beside the steps: one serving run failed creating a cuBLAS handle (2026-12-04)
  nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -l 2 >"$RESULTS/gpu-memory.csv" 2>&1 &
  local sampler=$!
  step parity 210 "$PY" bench/gpu.py --out "$RESULTS/gpu.json"
  wait_for_trainings
  step serve_forecast 170 "$PY" bench/serve_forecast.py --seconds 2 --providers CUDAExecutionProvider,CPUExecutionProvider \
    --out "$RESULTS/serve_forecast.json"
  if [[ -d "$RESULTS/work/beauty-prorec" ]]; then
    step serve_recommend 60 "$PY" bench/serve_recommend.py --run "$RESULTS/work/beauty-prorec" --seconds 2 --repeats 10 \
      --skip-accuracy --providers CUDAExecutionProvider,CPUExecutionProvider --out "$RESULTS/serve_recommend.json"
  fi
  kill "$sampler" 2>/dev/null
}

case "$MODE" in
  dry)
    : >"$LOG"
    step parity 300 "$PY" bench/gpu.py --dry-run --kinds naive arnet --out "$RESULTS/gpu.json"
    # every other step: its command line parses (a dry run has no device to measure or time to train)
    step serve_forecast_args 60 "$PY" bench/serve_forecast.py --help
    step serve_recommend_args 60 "$PY" bench/serve_recommend.py --help
    for name in informer autotimes tiger recommender; do
      step "${name}_args" 60 bash -c "$(training_command "$name") --help >/dev/null"
    done
    rm -f "$RESULTS/deadline" ;;
  train)
    for name in "$@"; do start_training "$name" || FAILED=$((FAILED + 1)); done ;;
  checks) checks ;;
  all)
    : >"$LOG"
    for name in informer autotimes tiger recommender; do start_training "$name"; done
    checks ;;
esac
echo "failed steps: $FAILED; results in $RESULTS" | tee -a "$LOG"
exit "$FAILED"
