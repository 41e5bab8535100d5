"""Section `serve`: a real server on loopback under headless locust at 1, 8 and 32 clients,
per backbone (the tiny CNN and EfficientNet-Lite0 at 224 px by default): latency percentiles,
requests/s and errors; RSS growth over 5,000 requests; the saturation ratio (requests/s at the
most clients over the model's offline locations/s, measured in the same run); and the
speed-up of cross-request batching. The measuring lives in `geoguess.serve.loadtest`.

Keys, `bench.serve_<key>` (described, with their defaults, in conf/bench.yaml): backbones,
image_size, clients, requests, max_seconds, rss_requests, rss_clients, max_batch, max_wait_ms,
batching_backbone, train_locations.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from geoguess.bench.config import BenchConfig
from geoguess.bench.data import REAL_SAMPLE
from geoguess.serve.loadtest import bench

PREFIX = "serve_"


def run(cfg: BenchConfig) -> dict:
    """{<backbone>: {<clients>: {...}, rss_growth, saturation_ratio, ...}, batching_speedup}."""
    settings = cfg.settings
    options = {
        field.name.removeprefix(PREFIX): getattr(settings, field.name)
        for field in dataclasses.fields(settings)
        if field.name.startswith(PREFIX)
    }
    source = Path(settings.source) if settings.source else None
    if source is None and (REAL_SAMPLE / "data.csv").exists():
        source = REAL_SAMPLE  # the views posted: a real location's, as the bench's other data
    return bench(options, cfg.work, source, progress=cfg.progress)
