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
    expected += [
        f"loader.cold.{k}"
        for k in (
            "random_samples_per_s",
            "block_samples_per_s",
            "ratio",
            "memory_budget_mb",
            "in_memory_random_samples_per_s",
            "in_memory_block_samples_per_s",
            "in_memory_ratio",
            "disk.random_row_gb_per_s",
            "disk.sequential_row_gb_per_s",
            "disk.sequential_vs_random",
        )
    ]
    expected += ["train_step.tiny.32.samples_per_s", "metric.haversine_pairs_per_s"]
    expected += [f"feature_cache.{k}" for k in ("speedup", "epoch_seconds_with", "val_km_with")]
    expected += [
        f"feature_cache.frozen_pass.{k}"
        for k in ("float32_images_per_s", "speedup_bf16_channels_last", "bf16_relative_error")
    ]
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
    frozen = cache["frozen_pass"]
    assert frozen["speedup_bf16_channels_last"] == pytest.approx(
        frozen["bf16_channels_last_images_per_s"] / frozen["float32_images_per_s"]
    )
    assert 0 < frozen["bf16_relative_error"] < 0.05  # bf16 differs, and only a little
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
    cold = result["loader"]["cold"]
    assert cold["ratio"] == pytest.approx(
        cold["block_samples_per_s"] / cold["random_samples_per_s"]
    )
    assert cold["memory_budget_mb"] == pytest.approx(0.5 * (128 + 64 * 4 * 3 * 32 * 32) / 1e6)
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


class _MappedFile:
    """What `PageCacheBudget` needs of a dataset: the cache's path and the memory map."""

    def __init__(self, path):
        self.cache = type("Cache", (), {"data_path": path})()
        self._memmap = np.load(path, mmap_mode="r")


def _read_all(dataset: _MappedFile) -> int:
    """Bytes that reading the whole file through its memory map brought from disk."""
    before = benchmarks.process_read_bytes()
    if dataset._memmap is None:
        dataset._memmap = np.load(dataset.cache.data_path, mmap_mode="r")
    np.asarray(dataset._memmap).sum()
    return benchmarks.process_read_bytes() - before


def test_page_cache_budget_evicts_when_the_budget_has_been_read(tmp_path):
    path = tmp_path / "cache.npy"
    np.save(path, np.arange(4 << 20, dtype=np.uint8).reshape(64, -1))  # 4 MiB
    size = path.stat().st_size
    benchmarks.evict(path)
    dataset = _MappedFile(path)
    if _read_all(dataset) < size // 2:
        pytest.skip("no I/O accounting here (no /proc/self/io, or the file is in memory)")
    roomy = benchmarks.PageCacheBudget(dataset, 10 * size)
    roomy.after_batch()
    assert roomy.evictions == 0 and dataset._memmap is not None
    assert _read_all(dataset) == 0  # still cached
    tight = benchmarks.PageCacheBudget(dataset, size // 2)
    tight.after_batch()  # nothing read since it started
    assert tight.evictions == 0 and _read_all(dataset) == 0
    dataset._memmap = None
    benchmarks.evict(path)
    assert _read_all(dataset) >= size // 2  # more than the budget came from disk
    tight.after_batch()
    assert tight.evictions == 1 and dataset._memmap is None
    # Evicted for real: reading it again comes from disk.
    assert _read_all(dataset) >= size - 4096


def test_disk_row_reads_reports_both_orders(tmp_path):
    path = tmp_path / "rows.bin"
    row_bytes, rows = 3 * 4096 + 100, 40  # rows that do not start on a 4 KiB boundary
    path.write_bytes(bytes(64) + np.random.default_rng(0).bytes(rows * row_bytes))
    disk = benchmarks.disk_row_reads(path, 64, row_bytes, rows, repeats=2)
    assert disk["random_row_gb_per_s"] > 0 and disk["sequential_row_gb_per_s"] > 0
    assert disk["sequential_vs_random"] == pytest.approx(
        disk["sequential_row_gb_per_s"] / disk["random_row_gb_per_s"]
    )
    assert disk["reads"] in ("O_DIRECT", "buffered, evicted, POSIX_FADV_RANDOM")
