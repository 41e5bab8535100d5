#!/usr/bin/env bash
# Grid spacing x head: 3 x 2 = 6 runs, one after the other, on the embedded synthetic dataset
# with the quickstart settings (about 5 minutes each on 2 CPU cores).
#
#   experiments/sweep_spacing.sh                       # as below
#   experiments/sweep_spacing.sh trainer.max_epochs=5  # extra overrides are passed on
#
# Each job writes outputs/train-multirun/<time>/<num>/results.json; the W&B runs of the sweep
# share one group. Compare them with python -m geoguess.report sweeps=outputs/train-multirun/<time>.
# Two jobs at a time: experiments/sweep_spacing.sh hydra/launcher=joblib hydra.launcher.n_jobs=2
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec "$PY" -m geoguess.train -m experiment=quickstart \
  grid.spacing=0.3,0.5,0.8 head=classification,regression "$@"
