"""Section `stats`: the training-split statistics from the cache at the largest image size,
time and peak memory, each run in its own process."""

from __future__ import annotations

import statistics

from geoguess.bench.config import BenchConfig
from geoguess.bench.measured import timed_stats
from geoguess.bench.timing import in_subprocess


def run(cfg: BenchConfig) -> dict:
    """{seconds, peak_rss_mb, peak_anon_mb, image_size}."""
    size = max(cfg.settings.image_sizes)
    cfg.cached_dataset(size)  # the cache the statistics read, built if no section built it
    cfg.progress(f"statistics at {size} px")
    runs = [
        in_subprocess(timed_stats, cache_root=str(cfg.cache_root(size)), image_size=size)
        for _ in range(cfg.settings.repeats)
    ]
    return {
        "seconds": float(statistics.median(r["seconds"] for r in runs)),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "peak_anon_mb": max(r["peak_anon_mb"] for r in runs),
        "image_size": size,
    }
