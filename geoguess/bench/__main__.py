"""`python -m geoguess.bench` (`make bench`): measure, write bench.json, print a table.

The measurements live in the section modules of `geoguess.bench` (`sections.SECTIONS`); this is
only the command. `bench.quick=true` shrinks every size (a smoke run for the tests);
`bench.sections=[train_step,loader]` runs a part.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from geoguess import runs
from geoguess.bench.report import table
from geoguess.errors import GeoguessError
from geoguess.utils.cli import CONFIG_PATH, user_errors
from geoguess.utils.io import write_json_atomic

if TYPE_CHECKING:
    from geoguess.bench.config import BenchSettings

# bench.quick=true: the smallest run that still exercises every code path.
QUICK = {
    "locations": 64,
    "image_sizes": [32, 16],
    "repeats": 1,
    "batch_size": 8,
    "loader_locations": 16,
    "naive_locations": 8,
    "cold_image_size": 32,
    "train_batch_size": 4,
    "train_steps": 2,
    "warmup_steps": 1,
    "overhead_image_size": 32,
    "metric_pairs": 2000,
    "feature_cache_backbone": "tiny",
    "feature_cache_image_size": 32,
    "feature_cache_locations": 40,
    "feature_cache_epochs": 1,
}


def settings_from(cfg: DictConfig, cuda: bool) -> BenchSettings:
    """`BenchSettings` from the `bench` keys: nulls resolved for the device, quick applied."""
    # torch loads here, not at the top: `--help` and a bad override answer without it.
    from geoguess.bench.config import BenchSettings

    values = OmegaConf.to_container(cfg.bench, resolve=True)
    quick = values.pop("quick")
    if values["train_backbones"] is None:
        values["train_backbones"] = ["resnext50", "efficientnet_b0"] if cuda else ["tiny"]
    if values["train_image_size"] is None:
        values["train_image_size"] = 224 if cuda else 56
    if values["train_batch_size"] is None:
        values["train_batch_size"] = 64 if cuda else 32
    if quick:
        values.update(QUICK)
        values["train_backbones"] = ["tiny"]
        values["train_image_size"] = 32
    known = {f.name for f in dataclasses.fields(BenchSettings)}
    # conf/bench.yaml is the one list of the keys and their defaults: a key it lacks is a typo.
    unknown = sorted(set(values) - known)
    if unknown:
        raise GeoguessError(f"unknown bench keys {unknown} (conf/bench.yaml lists the keys)")
    missing = sorted(known - set(values))
    if missing:
        raise GeoguessError(f"bench keys {missing} are missing (conf/bench.yaml gives them)")
    return BenchSettings(**values)


# CONFIG_PATH is relative to a module of geoguess/; this one is a folder deeper.
@hydra.main(version_base="1.3", config_path=f"../{CONFIG_PATH}", config_name="bench")
@user_errors
def main(cfg: DictConfig) -> int:
    # torch and the sections load here, not at the top: `--help` and a bad override answer
    # without them.
    import torch

    from geoguess.bench.sections import run_benchmarks

    settings = settings_from(cfg, torch.cuda.is_available())  # a bad key claims no folder
    out = runs.claim(cfg)
    result = run_benchmarks(settings, progress=lambda text: print(f"[bench] {text}"))
    path = write_json_atomic(out / "bench.json", result)
    print(table(result))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    main()
