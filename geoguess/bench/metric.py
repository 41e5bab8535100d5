"""Section `metric`: haversine pairs per second on the device, and the haversine's error
against the WGS84 geodesic in float32 and under bf16 autocast."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
from pyproj import Geod

from geoguess.bench.config import BenchConfig, BenchSettings
from geoguess.bench.timing import median_rate, sync
from geoguess.geo import haversine_km_torch


def run(cfg: BenchConfig) -> dict:
    """{haversine_pairs_per_s, max_rel_error_vs_geod: {float32, bf16_autocast}}."""
    cfg.progress("metric")
    return bench_metric(cfg.settings, cfg.device)


def bench_metric(settings: BenchSettings, device) -> dict:
    """Haversine pairs/s on the device, and its largest relative error against the WGS84
    geodesic (pyproj.Geod) for pairs of points in and around Croatia, 1-600 km apart."""
    rng = np.random.default_rng(0)
    n = settings.metric_pairs
    lat1, lat2 = rng.uniform(42.0, 46.6, (2, n))
    lon1, lon2 = rng.uniform(13.3, 19.5, (2, n))
    tensors = [
        torch.tensor(a, dtype=torch.float32, device=device) for a in (lat1, lon1, lat2, lon2)
    ]

    def rate() -> float:
        haversine_km_torch(*tensors, check=False)
        sync(device)
        start = time.perf_counter()
        haversine_km_torch(*tensors, check=False)
        sync(device)
        return n / (time.perf_counter() - start)

    sample = slice(0, min(n, 100_000))
    # The reference from the float32 coordinates the model would see.
    coords = [t[sample].double().cpu().numpy() for t in tensors]
    _, _, metres = Geod(ellps="WGS84").inv(coords[1], coords[0], coords[3], coords[2])
    reference = metres / 1000.0
    far = reference >= 1.0
    errors = {}
    for name, context in (
        ("float32", contextlib.nullcontext()),
        ("bf16_autocast", torch.autocast(device.type, dtype=torch.bfloat16)),
    ):
        with context:
            km = haversine_km_torch(*(t[sample] for t in tensors), check=False)
        km = km.double().cpu().numpy()
        errors[name] = float(np.max(np.abs(km[far] - reference[far]) / reference[far]))
    return {
        "haversine_pairs_per_s": median_rate(rate, settings.repeats),
        "max_rel_error_vs_geod": errors,
    }
