#!/usr/bin/env bash
# Training-step and loader speed on a GPU: ResNeXt-50 and EfficientNet-B0 at 224 px, random
# weights (no download), bf16 autocast and channels_last, plus the loader delivering augmented
# 224 px batches to the GPU. Under 5 minutes. Refuses at once, in one line and exit 1, without
# a usable CUDA GPU (no CPU fallback: its figures would not be GPU figures). Each section is its
# own bench run, so its bench.json is written as soon as it ends (a timeout keeps the sections
# done): <out>/<section>/bench.json, the log beside it, and <out>/results.md (the table, printed
# last).
#
#   experiments/gpu_bench.sh                      # uses .venv (make install when missing)
#   PY=/path/to/python experiments/gpu_bench.sh   # an existing environment
#   BATCH=128 experiments/gpu_bench.sh bench.repeats=5
set -uo pipefail
cd "$(dirname "$0")/.."
NAME=gpu_bench
source experiments/gpu_preflight.sh

OUT=${OUT:-outputs/gpu_bench/$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$OUT"
RESULTS="$OUT/results.md"
printf '| section | figure |\n|---|---|\n' > "$RESULTS"
"$PY" experiments/gpu_probes.py env "$OUT" >> "$RESULTS" 2> "$OUT/env.log"
SETTINGS=(
  bench.train_image_size=224 "bench.train_batch_size=${BATCH:-64}" bench.train_steps=20
  bench.warmup_steps=5 bench.precision=bf16 bench.channels_last=true "bench.image_sizes=[224]"
)
FAILED=0
# section NAME TIMEOUT_S OVERRIDES...: one bench run into $OUT/NAME, its rows into results.md.
section() {
  local name=$1 limit=$2
  shift 2
  echo "[gpu_bench] $name (at most ${limit} s)"
  if timeout "$limit" "$PY" -m geoguess.bench "${SETTINGS[@]}" "$@" "${EXTRA[@]}" \
    "hydra.run.dir=$OUT/$name" > "$OUT/$name.log" 2>&1; then
    "$PY" experiments/gpu_probes.py bench-rows "$OUT/$name" >> "$RESULTS"
  else
    FAILED=1
    echo "| $name | failed or timed out, see $name.log |" >> "$RESULTS"
    tail -20 "$OUT/$name.log"
  fi
}
EXTRA=("$@")
section train_step-resnext50 110 "bench.sections=[train_step]" "bench.train_backbones=[resnext50]"
section train_step-efficientnet_b0 90 "bench.sections=[train_step]" \
  "bench.train_backbones=[efficientnet_b0]"
section loader 90 "bench.sections=[loader]"
echo
cat "$RESULTS"
exit $FAILED
