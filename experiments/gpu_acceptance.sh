#!/usr/bin/env bash
# GPU acceptance: what the CPU tests cannot show, in one bounded run (about 8 minutes on one
# H200; every step has its own timeout). No downloads: random weights, the embedded synthetic
# data (generated on first use), W&B offline. Refuses at once, in one line and exit 1, without
# a usable CUDA GPU. Results are written as it goes into $OUT (default
# outputs/gpu_acceptance/<time>/): results.md (the table, one row per figure), steps.tsv (each
# step's status and seconds), <step>.log, env.json, the runs' folders; the table is printed
# last. Exit 0 when every step passed.
#
#   experiments/gpu_acceptance.sh                     # uses .venv (make install when missing)
#   PY=/path/to/python experiments/gpu_acceptance.sh  # an existing environment
#
# Steps: the machine (driver, CUDA, cuDNN, GPU); the bench's GPU sections (train_step, loader);
# backbone=resnext50 trainer=gpu for two epochs (images/s, step time, host syncs listed); the
# feature cache's build; one compiled epoch (model.compile=true, recompiles logged); a run
# stopped after one epoch and resumed with ckpt_path=last (model.refine=knn); predict with
# refine=knn and tta=mirror from the resumed run's best checkpoint.
set -uo pipefail
cd "$(dirname "$0")/.."
NAME=gpu_acceptance
source experiments/gpu_preflight.sh

OUT=${OUT:-outputs/gpu_acceptance/$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$PWD/experiments${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=offline HF_HUB_OFFLINE=1
RESULTS="$OUT/results.md"
printf '| step | figure |\n|---|---|\n' > "$RESULTS"
printf 'step\tstatus\tseconds\n' > "$OUT/steps.tsv"
FAILED=0

# [EXPECT=RC] step NAME TIMEOUT_S COMMAND...: runs it into $OUT/NAME.log and records its status;
# it passes when it exits with EXPECT (default 0).
step() {
  local name=$1 limit=$2 expect=${EXPECT:-0} start rc status
  shift 2
  echo "[gpu_acceptance] $name (at most ${limit} s)"
  start=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  case $rc in
    "$expect") status=ok ;;
    124 | 137) status=timeout ;;
    *) status="failed (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - start))" >> "$OUT/steps.tsv"
  if [ "$status" != ok ]; then
    FAILED=1
    echo "| $name | $status after $(($(date +%s) - start)) s, see $name.log |" >> "$RESULTS"
    tail -5 "$OUT/$name.log" | sed 's/^/    /'
    return 1
  fi
}
# rows COMMAND...: table rows from gpu_probes.py into results.md (a failure costs one row).
rows() { "$PY" experiments/gpu_probes.py "$@" >> "$RESULTS" 2>> "$OUT/rows.log" || true; }

TRAIN=(
  "$PY" -m geoguess.train data=synthetic backbone=resnext50 backbone.pretrained=false
  trainer=gpu image=224px data.batch_size=64 logger=csv trainer.limit_val_batches=4
  trainer.limit_test_batches=4 trainer.num_sanity_val_steps=0
)
probe() { echo "+callbacks.probe={_target_: gpu_probes.GpuProbe, out: $OUT/$1.probe.json}"; }

step env 60 "$PY" experiments/gpu_probes.py env "$OUT" && cat "$OUT/env.log" >> "$RESULTS"

step bench 180 "$PY" -m geoguess.bench "bench.sections=[train_step,loader]" \
  "bench.train_backbones=[resnext50]" bench.train_image_size=224 bench.train_batch_size=64 \
  bench.train_steps=20 bench.warmup_steps=5 bench.precision=bf16 bench.channels_last=true \
  "bench.image_sizes=[224]" bench.repeats=2 bench.locations=1000 bench.loader_locations=512 \
  "hydra.run.dir=$OUT/bench" \
  && rows bench-rows "$OUT/bench"

step train 240 "${TRAIN[@]}" trainer.max_epochs=2 unfreeze=never "$(probe train)" \
  "hydra.run.dir=$OUT/train"
[ -f "$OUT/train.probe.json" ] && rows train-rows "resnext50 bf16, trainer=gpu" "$OUT/train.probe.json"

step feature_cache 240 "${TRAIN[@]}" trainer.max_epochs=1 unfreeze=frozen data.augment=false \
  model.feature_cache=true "hydra.run.dir=$OUT/feature_cache"
[ -f "$OUT/feature_cache/train.log" ] && rows feature-cache-row "$OUT/feature_cache/train.log"

TORCH_LOGS=recompiles step compile 300 "${TRAIN[@]}" trainer.max_epochs=1 unfreeze=never \
  model.compile=true "$(probe compile)" "hydra.run.dir=$OUT/compile"
[ -f "$OUT/compile.probe.json" ] && rows train-rows "compiled (model.compile=true)" "$OUT/compile.probe.json"
rows recompiles-row "$OUT/compile.log"

RESUMED=(
  "${TRAIN[@]}" trainer.max_epochs=2 unfreeze=at_epoch model.refine=knn
  "hydra.run.dir=$OUT/resume"
)
# Stopped by a KeyboardInterrupt at epoch 1: exit 130, interrupted and resumable.
EXPECT=130 step stop 240 "${RESUMED[@]}" \
  "+callbacks.stop={_target_: gpu_probes.StopAtEpoch, epoch: 1}" \
  && echo "| stop at epoch 1 | interrupted (exit 130); last.ckpt: $(test -f "$OUT/resume/checkpoints/last.ckpt" && echo written || echo MISSING) |" >> "$RESULTS"
step resume 240 "${RESUMED[@]}" ckpt_path=last \
  && echo "| resume (ckpt_path=last) | $("$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"epochs {r['epochs']}, test {r['test_haversine_km']:.1f} km\")" "$OUT/resume/results.json") |" >> "$RESULTS"

BEST=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['best_checkpoint'])" "$OUT/resume/results.json" 2>/dev/null)
ROOT=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['info']['roots'][0])" "$OUT/resume/fitted.json" 2>/dev/null)
step predict 180 "$PY" -m geoguess.predict "checkpoint=$BEST" "data.root=$ROOT" refine=knn \
  tta=mirror device=cuda "output=$OUT/predictions.csv" "hydra.run.dir=$OUT/predict" \
  && echo "| predict (refine=knn, tta=mirror) | $(($(wc -l < "$OUT/predictions.csv") - 1)) locations; $(tail -1 "$OUT/predict.log" | tr '|' '/') |" >> "$RESULTS"

echo
echo "gpu_acceptance: $OUT"
cat "$RESULTS"
exit $FAILED
