"""Section `cache`: the image cache's build on every core vs the original's naive decode in one
process, at each of `bench.image_sizes`, with the build's peak memory."""

from __future__ import annotations

import statistics

from geoguess.bench.config import BenchConfig
from geoguess.bench.measured import timed_build, timed_naive_decode
from geoguess.bench.timing import cores, cpu_ms, in_subprocess, location_rate


def run(cfg: BenchConfig) -> dict:
    """`{"<size>": {...}}` for each image size."""
    result = {}
    for size in cfg.settings.image_sizes:
        cfg.progress(f"cache build at {size} px")
        result[str(size)] = bench_cache(cfg, size)
    return result


def bench_cache(cfg: BenchConfig, size: int) -> dict:
    """The cache build on every core vs a naive decode in one process, repeats interleaved
    so that both see the same neighbours on a shared machine."""
    root = cfg.data_root()
    naive, naive_runs, builds = [], [], []
    for _ in range(max(1, cfg.settings.repeats)):
        naive_runs.append(
            in_subprocess(
                timed_naive_decode,
                root=str(root),
                image_size=size,
                locations=cfg.settings.naive_locations,
            )
        )
        naive.append(location_rate(naive_runs[-1]))
        build = in_subprocess(
            timed_build,
            cache_root=str(cfg.cache_root(size)),
            root=str(root),
            image_size=size,
            workers=None,
        )
        builds.append(build)
    naive_rate = float(statistics.median(naive))
    build_rate = float(statistics.median(location_rate(r) for r in builds))
    return {
        "naive_locations_per_s": naive_rate,
        "build_locations_per_s": build_rate,
        "ratio": build_rate / naive_rate,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in builds),
        "peak_anon_mb": max(r["peak_anon_mb"] for r in builds),
        "peak_worker_rss_mb": max(r["peak_children_rss_mb"] for r in builds),
        "workers": cores(),
        "naive_cpu_ms_per_location": cpu_ms(naive_runs),
        "build_cpu_ms_per_location": cpu_ms(builds),
    }
