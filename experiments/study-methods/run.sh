#!/usr/bin/env bash
# The methods study (README.md beside this file): every sweep, then one report per question.
#   bash experiments/study-methods/run.sh [frozen|finetune|best|real|report]...   (default: all)
# Sweeps go to outputs/study-methods/<question>/ (ignored by git); the reports are written
# beside this script, in reports/<question>/ (report.md, report.png).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=outputs/study-methods
SEEDS=seed=1,2,3
export WANDB_MODE=${WANDB_MODE:-offline}

sweep() {  # sweep NAME OVERRIDES...
  local name=$1
  shift
  if [ -e "$OUT/$name" ]; then echo "skip $name: $OUT/$name exists"; return; fi
  "$PY" -m geoguess.train -m logger=none "$SEEDS" "$@" hydra.sweep.dir="$OUT/$name"
}

frozen() {  # fixed budget: frozen pretrained Lite0 at 128 px on cached features, 15 epochs
  local base=experiment=study_frozen
  sweep heads $base head=classification,regression,hybrid
  sweep cells $base grid.spacing=0.3,0.5,0.8
  sweep cells-adaptive $base grid=adaptive
  sweep smoothing $base head.smoothing_km=null,30
  sweep fusion $base model.fusion=concat,mean,attention
  sweep tta $base tta=none,mirror
  sweep refine $base model.refine=none,knn
  sweep neck $base model.hidden=0,512,1024
  sweep pool $base backbone.global_pool=avg,max,catavgmax
}

finetune() {  # fixed budget: the quickstart's CPU time (about 4 minutes a run on 2 cores)
  sweep quickstart experiment=quickstart
  # best_cpu reads the 288 px rendering of the same locations (until stop 22: 224 px); the
  # quickstart on them, to compare the methods on the same images too:
  sweep quickstart-224 experiment=quickstart data.generator.image_size=224
  sweep quickstart-288 experiment=quickstart data.generator.image_size=288
  sweep lite0-pretrained experiment=study_finetune
  sweep lite0-scratch experiment=study_finetune backbone.pretrained=false unfreeze=never
}

best() {
  sweep best-cpu experiment=best_cpu
  # The same on the 224 px rendering (best_cpu in stop 21), there also in float32 and
  # contiguous (until stop 21), and on the 128 px set:
  local at224=(data.generator.image_size=224 image=224px)
  sweep best-cpu-224 experiment=best_cpu "${at224[@]}"
  sweep best-cpu-224-fp32 experiment=best_cpu "${at224[@]}" model.frozen_precision=32 \
    model.channels_last=null
  sweep best-cpu-128 experiment=best_cpu_128
  # best-cpu-128 decodes by the spatial median; the weighted mean (the default) and the top cell:
  sweep decode experiment=best_cpu_128 head.decode=weighted,top
}

real() {  # a sanity check of the real-data path on the 100 real locations (not an accuracy claim)
  local sample=${REAL_SAMPLE:-../shared/data/real-sample}
  [ -d "$sample" ] || { echo "skip real: no $sample"; return; }
  sweep real-sample data=folder data.root="$sample" data.split_by=hash "data.split=[0.6,0.2,0.2]" \
    backbone=efficientnet_lite0 unfreeze=frozen image=224px optimizer=adamw data.augment=false \
    trainer.max_epochs=30 head=classification,regression
}

report() {
  local name
  # The reports are this script's own output: regenerated whole (a report never writes into
  # an existing run folder).
  rm -rf experiments/study-methods/reports
  for name in heads smoothing fusion tta refine neck pool; do
    "$PY" -m geoguess.report "sweeps=[$OUT/$name]" \
      hydra.run.dir=experiments/study-methods/reports/$name
  done
  "$PY" -m geoguess.report "sweeps=[$OUT/cells,$OUT/cells-adaptive]" \
    hydra.run.dir=experiments/study-methods/reports/cells
  "$PY" -m geoguess.report \
    "sweeps=[$OUT/quickstart,$OUT/quickstart-224,$OUT/quickstart-288,$OUT/lite0-pretrained,$OUT/lite0-scratch,$OUT/best-cpu-128,$OUT/best-cpu-224,$OUT/best-cpu-224-fp32,$OUT/best-cpu]" \
    hydra.run.dir=experiments/study-methods/reports/backbones
  "$PY" -m geoguess.report "sweeps=[$OUT/best-cpu-128,$OUT/decode]" \
    hydra.run.dir=experiments/study-methods/reports/decode
  [ -d "$OUT/real-sample" ] && "$PY" -m geoguess.report "sweeps=[$OUT/real-sample]" \
    hydra.run.dir=experiments/study-methods/reports/real-sample
  # The report's own run records are not part of the study's results.
  rm -rf experiments/study-methods/reports/*/.hydra experiments/study-methods/reports/*/report.log
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(frozen finetune best real report)
for step in "${steps[@]}"; do "$step"; done
