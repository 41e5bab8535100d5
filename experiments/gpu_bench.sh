#!/usr/bin/env bash
# Training-step and loader speed on a GPU: ResNeXt-50 and EfficientNet-B0 at 224 px, random
# weights (no download), bf16 autocast and channels_last, plus the loader delivering augmented
# 224 px batches to the GPU. Under 5 minutes; the short table is printed last, the full figures
# are in <run dir>/bench.json. Without a CUDA device it runs the same sections on tiny settings
# (a check of this script, not a GPU figure).
#
#   experiments/gpu_bench.sh                      # make install, then the bench
#   PY=/path/to/python experiments/gpu_bench.sh   # an existing environment
#   BATCH=128 experiments/gpu_bench.sh bench.repeats=5
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  make install
  PY=.venv/bin/python
fi
OUT=${OUT:-outputs/gpu_bench/$(date +%Y-%m-%d_%H-%M-%S)}
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  SETTINGS=(
    "bench.train_backbones=[resnext50,efficientnet_b0]" bench.train_image_size=224
    "bench.train_batch_size=${BATCH:-64}" bench.train_steps=20 bench.warmup_steps=5
    bench.precision=bf16 bench.channels_last=true "bench.image_sizes=[224]"
  )
else
  echo "gpu_bench: no CUDA device; running the CPU path on tiny settings"
  SETTINGS=(bench.quick=true)
fi
timeout 290 "$PY" -m geoguess.bench "bench.sections=[train_step,loader]" "${SETTINGS[@]}" \
  "$@" "hydra.run.dir=$OUT" > "$OUT.log" 2>&1 || { tail -40 "$OUT.log"; exit 1; }
"$PY" - "$OUT/bench.json" <<'PYTHON'
import json, sys

result = json.load(open(sys.argv[1]))
device = result["device"]
print(f"\ndevice: {device.get('gpu', device['cpu'])} ({device['cores']} CPU cores)")
print(f"{'backbone':<16} {'px':>4} {'locations/s':>12} {'images/s':>10}")
for backbone, sizes in result["train_step"].items():
    if isinstance(sizes, dict):
        for size, figures in sizes.items():
            print(f"{backbone:<16} {size:>4} {figures['samples_per_s']:>12,.0f}"
                  f" {figures['images_per_s']:>10,.0f}")
print(f"lightning step / plain loop: {result['train_step']['lightning_overhead']:.3f}")
for size, figures in result.get("loader", {}).items():
    print(f"loader {size} px: {figures['default_samples_per_s']:,.0f} augmented locations/s "
          f"on the device ({figures['ratio']:.1f}x the naive {figures['naive_samples_per_s']:,.0f}/s)")
PYTHON
