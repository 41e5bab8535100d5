"""`python -m geoguess.data.validate [training overrides] data.root=PATH`: check a dataset.

Prints a summary (locations, valid ones, each problem with file, row and reason), writes
`invalid_locations.csv` into its run folder and exits 1 when anything is invalid. With
`data.cache=true` the same pass builds the image cache at `image.size`. Its config is the
training config (`conf/validate.yaml`, data=folder by default), so the training run's own
overrides (`experiment=best_cpu`) give the image size that training will read and the cache it
will find. Never imports torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from geoguess import runs
from geoguess.utils.cli import CONFIG_PATH, instantiate, user_errors
from geoguess.utils.io import write_csv_atomic

# data=synthetic: its own set, found (or made) in the cache. Told by the target, not by a
# `generator` key, which an experiment written for the generated set adds to data=folder too.
SYNTHETIC_TARGET = "geoguess.data.SyntheticDataModule"


@hydra.main(version_base="1.3", config_path="../" + CONFIG_PATH, config_name="validate")
@user_errors
def main(cfg: DictConfig) -> int:
    # pandas, PIL and shapely load here, not at the top: `--help` answers without them.
    from geoguess.data.io import as_roots
    from geoguess.data.validation import SKIP_HINT, validate_dataset
    from geoguess.synthetic.cache import resolve_synthetic

    out = runs.claim(cfg)
    country = instantiate(cfg.country)
    data = cfg.data
    if data.get("_target_") == SYNTHETIC_TARGET:
        roots = [resolve_synthetic(data.root, country, data.generator, data.num_workers)]
    else:
        roots = as_roots(data.root)
    report = validate_dataset(
        roots,
        country,
        float(data.outside_tolerance_km),
        image_size=int(cfg.image.size) if data.cache else None,
        cache_root=Path(data.cache_dir).expanduser() if data.cache_dir else None,
        workers=None,  # every core
    )
    print(report.summary())
    if not report.problems:
        return 0
    listed = write_csv_atomic(out / "invalid_locations.csv", report.invalid_frame())
    print(f"wrote {listed}")
    print(f"error: {report.n_invalid_rows} invalid location(s); {SKIP_HINT}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
