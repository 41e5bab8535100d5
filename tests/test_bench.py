"""`python -m geoguess.bench bench.quick=true`: every key of the issue, every figure a positive,
finite number (never a speed: these machines are shared)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from geoguess import benchmarks
from tests.cli import run_module

SIZES = ("32", "16")  # bench.quick's image sizes


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    done = run_module(
        "geoguess.bench",
        "bench.quick=true",
        f"bench.work_dir={out / 'work'}",
        f"hydra.run.dir={out / 'run'}",
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "run" / "bench.json").read_text()), done.stdout


def test_quick_bench_writes_every_key(quick_run):
    result, stdout = quick_run
    flat = benchmarks.flatten(result)
    expected = ["stats.seconds", "stats.peak_rss_mb", "train_step.lightning_overhead"]
    for size in SIZES:
        expected += [
            f"loader.{size}.{k}" for k in ("naive_samples_per_s", "default_samples_per_s", "ratio")
        ]
        expected += [
            f"cache.{size}.{k}"
            for k in (
                "naive_locations_per_s",
                "build_locations_per_s",
                "ratio",
                "peak_rss_mb",
                "build_cpu_ms_per_location",
            )
        ]
    expected += ["loader.cold.random_samples_per_s", "loader.cold.block_samples_per_s"]
    expected += ["train_step.tiny.32.samples_per_s", "metric.haversine_pairs_per_s"]
    expected += [f"feature_cache.{k}" for k in ("speedup", "epoch_seconds_with", "val_km_with")]
    expected += [f"metric.max_rel_error_vs_geod.{k}" for k in ("float32", "bf16_autocast")]
    for n in benchmarks.EXTRAPOLATE_TO:
        expected += [f"extrapolated.{n}.cache_32_disk_gb", f"extrapolated.{n}.stats_seconds"]
    missing = [key for key in expected if key not in flat]
    assert not missing, missing
    assert benchmarks.finite_numbers(result) == []
    for key in expected:
        assert isinstance(flat[key], float | int) and math.isfinite(flat[key]) and flat[key] > 0
    # The same frozen run with and without cached features: the same validation error.
    cache = result["feature_cache"]
    assert cache["val_km_with"] == pytest.approx(cache["val_km_without"], abs=1e-3)
    assert result["device"]["type"] == "cpu" and result["device"]["cores"] >= 1
    # The table shows the same figures.
    assert "loader.32.ratio" in stdout and "bench.json" in stdout


def test_quick_bench_figures_are_consistent(quick_run):
    result, _ = quick_run
    for size in SIZES:
        loader, cache = result["loader"][size], result["cache"][size]
        assert loader["ratio"] == pytest.approx(
            loader["default_samples_per_s"] / loader["naive_samples_per_s"]
        )
        assert cache["ratio"] == pytest.approx(
            cache["build_locations_per_s"] / cache["naive_locations_per_s"]
        )
    # Disk of the cache at n locations is exact: n rows of 4 x 3 x S x S bytes.
    assert result["extrapolated"]["16000"]["cache_32_disk_gb"] == pytest.approx(
        16000 * 4 * 3 * 32 * 32 / 1e9
    )
    # The metric's error is haversine (a sphere) against the WGS84 ellipsoid: under 0.5 %.
    errors = result["metric"]["max_rel_error_vs_geod"]
    assert 1e-4 < errors["float32"] < 5e-3 and errors["bf16_autocast"] < 5e-3


def test_generated_stand_in_images(tmp_path):
    benchmarks.generate_views(tmp_path / "src", 2)
    root, description = benchmarks.prepare_data(tmp_path, 5, tmp_path / "src")
    frame = benchmarks.dataset_frame(root)
    assert len(frame) == 5 and frame["uuid"].is_unique
    views = benchmarks.naive_decode(benchmarks.location_paths(frame)[4], 64)
    assert views.shape == (4, 3, 64, 64) and views.dtype == np.uint8
    # Photograph-like: structure at several scales, not flat noise or a constant.
    assert 20 < views.std() < 100
    assert "5 locations" in description


def test_flatten_and_table():
    tree = {"a": {"b": 1.5, "c": {"d": 2}}, "e": None}
    assert benchmarks.flatten(tree) == {"a.b": 1.5, "a.c.d": 2, "e": None}
    assert benchmarks.finite_numbers({"x": 0.0, "y": float("nan"), "z": 3}) == ["x", "y"]
    assert "a.c.d  2" in benchmarks.table(tree)
