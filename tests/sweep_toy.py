"""A Hydra app standing in for `geoguess.train` in sweeper tests: it returns `x` as its km, or
NaN with a failed `results.json` on odd job numbers (as a training job does when it fails).

python -m tests.sweep_toy --config-dir DIR --config-name NAME -m ...
"""

from __future__ import annotations

import json

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from geoguess.runs import run_dir


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg: DictConfig) -> float:
    if HydraConfig.get().job.num % 2:
        results = {"status": "failed", "error": "loss is NaN at epoch 2"}
        value = float("nan")
    else:
        value = float(cfg.x)
        results = {"status": "ok", "val_haversine_km": value, "test_haversine_km": value + 1}
    (run_dir() / "results.json").write_text(json.dumps({**results, "dataset": "toy"}))
    return value


if __name__ == "__main__":
    main()
