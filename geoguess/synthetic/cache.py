"""Where the generated dataset lives, and generating it there on first use.

Light (no torch): `geoguess.data.validate` uses it as well as the data module. The set goes
into the cache folder (`GEOGUESS_CACHE_DIR`, default `~/.cache/geoguess`), one folder per
generator version, setting and country, so a set made for one country or generator is never
taken for another's. A `data.root` given by the user must already hold a dataset: generating
into a mistyped path would train on something the user never asked for.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from geoguess.data.io import CSV_NAME, DataError
from geoguess.geo import Country
from geoguess.synthetic.errors import SynthesizeError
from geoguess.synthetic.version import dataset_key

log = logging.getLogger(__name__)

CACHE_ENV = "GEOGUESS_CACHE_DIR"


def cache_dir() -> Path:
    """`GEOGUESS_CACHE_DIR`, else `$XDG_CACHE_HOME/geoguess`, else `~/.cache/geoguess`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "geoguess"


def synthetic_root(country: Country, num_locations: int, seed: int, image_size: int) -> Path:
    return cache_dir() / dataset_key(country, num_locations, seed, image_size)


def resolve_synthetic(
    root: str | Path | None,
    country: Country,
    generator: dict,
    workers: int = 2,
    progress: bool = True,
) -> Path:
    """The dataset folder of `data=synthetic`: `root` when it holds a dataset, else (root
    null) the cache folder of these settings, generated there when missing."""
    if root is not None:
        root = Path(root).expanduser()
        if (root / CSV_NAME).is_file():
            return root
        raise DataError(
            f"data.root={root} holds no dataset (no {CSV_NAME}). data=synthetic makes its set "
            f"in the cache when data.root is left out; to generate one at {root}, run "
            f"`python -m geoguess.synthesize data.root={root}`; for your own data, use "
            f"data=folder data.root=PATH"
        )
    num_locations, seed, size = (int(generator[k]) for k in ("num_locations", "seed", "image_size"))
    root = synthetic_root(country, num_locations, seed, size)
    if not (root / CSV_NAME).is_file():
        # Only a missing set needs the generator (shapely rasters, the renderer, PIL): a cached
        # one is found without loading it.
        from geoguess.synthetic.generator import generate

        log.info("generating a synthetic dataset of %d locations in %s", num_locations, root)
        try:
            generate(
                root,
                num_locations=num_locations,
                seed=seed,
                country=country,
                image_size=size,
                workers=max(1, int(workers)),
                progress=progress,
            )
        except SynthesizeError:
            # Parallel sweep jobs on a fresh cache generate the same set at once; the first
            # to finish renames it into place. Same settings, same bytes: use that one.
            if not (root / CSV_NAME).is_file():
                raise
            log.info("%s was generated meanwhile by another process; using it", root)
    return root
