"""The work that `timing.in_subprocess` runs in a fresh interpreter, one function per
measurement, each returning its figures as a JSON-able dict.

No torch here: the subprocess imports this module, and its memory figures must count only the
measured work.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from geoguess.bench.data import dataset_frame, location_paths, naive_decode
from geoguess.bench.timing import cpu_seconds
from geoguess.data import cache as cache_mod
from geoguess.data import stats as stats_mod

CACHE_KEY = "b" * 64  # the key of every cache the bench builds


def timed_build(cache_root: str, root: str, image_size: int, workers: int | None) -> dict:
    """Build the cache of the dataset in `root` from scratch; {seconds, locations}."""
    shutil.rmtree(cache_root, ignore_errors=True)
    frame = dataset_frame(Path(root))
    cpu, start = cpu_seconds(), time.perf_counter()
    cache_mod.build_cache(Path(cache_root), CACHE_KEY, frame, image_size, workers, progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "locations": len(frame), "cpu_seconds": cpu_seconds() - cpu}


def timed_naive_decode(root: str, image_size: int, locations: int) -> dict:
    """The naive decode of the first `locations` locations in one process."""
    paths = location_paths(dataset_frame(Path(root)))[:locations]
    cpu, start = cpu_seconds(), time.perf_counter()
    for views in paths:
        naive_decode(views, image_size)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "locations": len(paths), "cpu_seconds": cpu_seconds() - cpu}


def timed_stats(cache_root: str, image_size: int, fraction: float = 0.8) -> dict:
    """The training-split statistics (`fraction` of the rows, as a split) from the cache."""
    cache = cache_mod.ImageCache.load(Path(cache_root), CACHE_KEY, image_size)
    n = len(cache.uuids)
    rows = np.random.default_rng(0).permutation(n)[: max(1, int(n * fraction))]
    start = time.perf_counter()
    mean, std = stats_mod.stats_from_memmap(cache.open(), rows)
    return {"seconds": time.perf_counter() - start, "mean": list(mean), "std": list(std)}
