"""The sections of `make bench` and the run that puts their dicts into bench.json.

A section is a module with `run(cfg: BenchConfig) -> dict`; adding one is one entry in
`SECTIONS`. They run in `SECTIONS`' order, whatever the order of `bench.sections`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from geoguess.bench import cache, cold, feature_cache, loader, metric, serve, stats, train_step
from geoguess.bench.config import BenchConfig, BenchSettings
from geoguess.bench.machine import describe_device, describe_machine
from geoguess.bench.report import extrapolate

SECTIONS: dict[str, Callable[[BenchConfig], dict]] = {
    "cache": cache.run,
    "loader": loader.run,
    "stats": stats.run,
    "cold": cold.run,
    "train_step": train_step.run,
    "feature_cache": feature_cache.run,
    "metric": metric.run,
    # Trains two models and loads a real server for minutes: asked for by name
    # (bench.sections=[serve]), not among conf/bench.yaml's default sections.
    "serve": serve.run,
}
# Where a section's dict goes in bench.json when not under its own name.
PLACES: dict[str, tuple[str, ...]] = {"cold": ("loader", "cold")}


def run_benchmarks(settings: BenchSettings, progress: Callable[[str], None] = print) -> dict:
    """Every section of `settings.sections`; the nested result (see `report.flatten`)."""
    unknown = set(settings.sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown bench sections {sorted(unknown)}; known: {list(SECTIONS)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    head = {"machine": describe_machine(), "device": describe_device(device)}
    made_work = settings.work_dir is None
    work = Path(settings.work_dir or tempfile.mkdtemp(prefix="geoguess-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = BenchConfig(settings, work, device, progress)
    measured: dict = {}
    try:
        for name, run in SECTIONS.items():
            if name in settings.sections:
                _place(measured, PLACES.get(name, (name,)), run(cfg))
    finally:
        if made_work and not settings.keep_work_dir:
            shutil.rmtree(work, ignore_errors=True)
    data = cfg.data_block()
    result = {**head, **({"data": data} if data else {}), **measured}
    if "cache" in result:
        result["extrapolated"] = extrapolate(result, settings.locations)
    return result


def _place(tree: dict, path: tuple[str, ...], value: dict) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
