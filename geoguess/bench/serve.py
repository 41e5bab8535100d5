"""Section `serve`: a real server on loopback under headless locust at 1, 8 and 32 clients,
per backbone (the tiny CNN and EfficientNet-Lite0 at 224 px by default): latency percentiles,
requests/s and errors; RSS growth over 5,000 requests; the saturation ratio (requests/s at the
most clients over the model's offline locations/s, measured in the same run); and the
speed-up of cross-request batching. The measuring lives in `geoguess.serve.loadtest`.

Keys, `bench.serve_<key>` (defaults in `loadtest.BENCH_DEFAULTS`): backbones, image_size,
clients, requests, max_seconds, rss_requests, rss_clients, max_batch, max_wait_ms,
batching_backbone, train_locations.
"""

from __future__ import annotations

from pathlib import Path

from geoguess.bench.config import BenchConfig
from geoguess.bench.data import REAL_SAMPLE
from geoguess.serve.loadtest import BENCH_DEFAULTS, bench


def run(cfg: BenchConfig) -> dict:
    """{<backbone>: {<clients>: {...}, rss_growth, saturation_ratio, ...}, batching_speedup}."""
    settings = cfg.settings
    options = {key: getattr(settings, f"serve_{key}", None) for key in BENCH_DEFAULTS}
    source = Path(settings.source) if getattr(settings, "source", None) else None
    if source is None and (REAL_SAMPLE / "data.csv").exists():
        source = REAL_SAMPLE  # the views posted: a real location's, as the bench's other data
    return bench(options, cfg.work, source, progress=cfg.progress)
