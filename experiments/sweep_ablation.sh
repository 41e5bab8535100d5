#!/usr/bin/env bash
# Fusion x unfreezing on real data and a GPU (9 runs): which way of combining the four views,
# and when to let the pretrained backbone train.
#
#   experiments/sweep_ablation.sh data.root=/path/to/dataset
#   experiments/sweep_ablation.sh data.root=/path hydra/launcher=joblib hydra.launcher.n_jobs=4  # 4 GPUs
#   python -m geoguess.report sweeps=outputs/train-multirun/<time>
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec "$PY" -m geoguess.train -m data=folder backbone=resnext50 trainer=gpu image=224px \
  model.fusion=concat,mean,attention unfreeze=never,at_epoch,gradual \
  trainer.max_epochs=12 "$@"
