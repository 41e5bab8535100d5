"""`python -m geoguess.bench bench.quick=true`: every key of the issue and the machine block,
every figure a positive, finite number (never a speed: these machines are shared); the section
registry."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import PIL
import pytest
import timm
import torch
import torchvision
from omegaconf import OmegaConf

from geoguess.bench import cold, data, machine, report, sections, timing
from geoguess.bench import serve as serve_section
from geoguess.bench.__main__ import settings_from
from geoguess.bench.config import BenchConfig, BenchSettings
from geoguess.bench.sections import SECTIONS
from geoguess.errors import GeoguessError
from tests.cli import command_env, run_module
from tests.conftest import REPO_ROOT

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
    flat = report.flatten(result)
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
    for n in report.EXTRAPOLATE_TO:
        expected += [f"extrapolated.{n}.cache_32_disk_gb", f"extrapolated.{n}.stats_seconds"]
    missing = [key for key in expected if key not in flat]
    assert not missing, missing
    assert report.finite_numbers(result) == []
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


def _cpuinfo(name: str) -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.split(":")[0].strip() == name:
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in /proc/cpuinfo")


def _fresh_torch_threads(env: dict) -> list[int]:
    """torch's intra- and inter-op thread counts in a fresh interpreter under `env`."""
    code = "import torch; print(torch.get_num_threads(), torch.get_num_interop_threads())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return [int(n) for n in done.stdout.split()]


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads /proc (Linux)")
def test_machine_block_describes_this_machine(quick_run):
    result, stdout = quick_run
    info = result["machine"]
    assert info["logical_cores"] == os.cpu_count()
    assert info["affinity"] == sorted(os.sched_getaffinity(0))
    assert info["affinity_cores"] == len(os.sched_getaffinity(0))
    assert info["cpu"] == _cpuinfo("model name")
    flags = set(_cpuinfo("flags").split())
    assert {"avx2", "avx512f", "avx512_bf16", "fma"} <= set(info["cpu_flags"])
    assert {f for f in flags if f.startswith("amx_")} <= set(info["cpu_flags"])
    assert info["cpu_flags"] == {flag: flag in flags for flag in info["cpu_flags"]}
    memory_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    assert info["memory_total_mb"] == pytest.approx(memory_kb / 1024)
    assert info["python"] == platform.python_version()
    assert info["versions"] == {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "pillow": PIL.__version__,
    }
    env = command_env()  # the quick run's environment
    assert info["env"] == {name: env.get(name) for name in machine.THREAD_ENV}
    assert [info["torch_threads"], info["torch_interop_threads"]] == _fresh_torch_threads(env)
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    assert info["cuda_device"] == cuda
    assert "machine.logical_cores" in stdout


def test_machine_block_follows_the_thread_environment(tmp_path):
    """A run with no sections still describes its machine, under its own thread settings."""
    env = {k: v for k, v in command_env().items() if not k.startswith("OPENBLAS_")}
    env.update(OMP_NUM_THREADS="2", MKL_NUM_THREADS="3")
    done = subprocess.run(
        [sys.executable, "-m", "geoguess.bench", "bench.sections=[]", f"hydra.run.dir={tmp_path}"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert set(result) == {"machine", "device"}
    info = result["machine"]
    assert info["env"] == {
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "3",
        "OPENBLAS_CORETYPE": None,
        "OPENBLAS_L2_SIZE": None,
    }
    assert info["torch_threads"] == 2
    assert [info["torch_threads"], info["torch_interop_threads"]] == _fresh_torch_threads(env)


def test_a_section_is_one_registry_entry(tmp_path, monkeypatch):
    seen = []

    def serve(cfg) -> dict:
        seen.append(cfg)
        return {"requests_per_s": 12.5}

    monkeypatch.setitem(sections.SECTIONS, "serve", serve)
    settings = bench_settings(sections=["serve"], work_dir=str(tmp_path / "work"))
    result = sections.run_benchmarks(settings, progress=lambda text: None)
    assert result["serve"] == {"requests_per_s": 12.5}
    assert seen[0].settings is settings and seen[0].work == tmp_path / "work"
    assert "data" not in result and "cache" not in result  # nothing else ran
    with pytest.raises(ValueError, match="unknown bench sections \\['nope'\\]"):
        sections.run_benchmarks(bench_settings(sections=["nope"]))


def bench_settings(**overrides) -> BenchSettings:
    """conf/bench.yaml's settings (the one place of their defaults), `overrides` over them."""
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "bench.yaml")
    cfg.bench.update(overrides)
    return settings_from(cfg, cuda=False)


def test_bench_settings_come_from_the_yaml_and_a_stray_key_is_named():
    settings = bench_settings(serve_requests=7)
    yaml = OmegaConf.load(REPO_ROOT / "conf" / "bench.yaml").bench
    assert settings.locations == yaml.locations and settings.train_backbones == ["tiny"]
    assert settings.serve_requests == 7 and settings.serve_clients == list(yaml.serve_clients)
    with pytest.raises(GeoguessError, match="unknown bench keys \\['serve_request'\\]"):
        bench_settings(serve_request=7)


def test_the_serve_section_gets_every_serve_key(tmp_path, monkeypatch):
    got = {}
    monkeypatch.setattr(serve_section, "bench", lambda options, *args, **kw: got.update(options))
    cfg = BenchConfig(bench_settings(serve_max_batch=4), tmp_path, torch.device("cpu"))
    serve_section.run(cfg)
    yaml = OmegaConf.load(REPO_ROOT / "conf" / "bench.yaml").bench
    expected = {k.removeprefix("serve_"): v for k, v in yaml.items() if k.startswith("serve_")}
    assert got == {**OmegaConf.to_container(OmegaConf.create(expected)), "max_batch": 4}


def test_every_configured_section_is_registered():
    configured = OmegaConf.load(REPO_ROOT / "conf" / "bench.yaml").bench.sections
    # Every section but serve (asked for by name: it trains models and loads a server).
    assert list(configured) and set(configured) == set(SECTIONS) - {"serve"}
    for name, run in SECTIONS.items():
        assert run.__name__ == "run" and run.__module__ == f"geoguess.bench.{name}"


def test_generated_stand_in_images(tmp_path):
    data.generate_views(tmp_path / "src", 2)
    root, description = data.prepare_data(tmp_path, 5, tmp_path / "src")
    frame = data.dataset_frame(root)
    assert len(frame) == 5 and frame["uuid"].is_unique
    views = data.naive_decode(data.location_paths(frame)[4], 64)
    assert views.shape == (4, 3, 64, 64) and views.dtype == np.uint8
    # Photograph-like: structure at several scales, not flat noise or a constant.
    assert 20 < views.std() < 100
    assert "5 locations" in description


def test_flatten_and_table():
    tree = {"a": {"b": 1.5, "c": {"d": 2}}, "e": None}
    assert report.flatten(tree) == {"a.b": 1.5, "a.c.d": 2, "e": None}
    assert report.finite_numbers({"x": 0.0, "y": float("nan"), "z": 3}) == ["x", "y"]
    assert "a.c.d  2" in report.table(tree)


class _MappedFile:
    """What `PageCacheBudget` needs of a dataset: the cache's path and the memory map."""

    def __init__(self, path):
        self.cache = type("Cache", (), {"data_path": path})()
        self._memmap = np.load(path, mmap_mode="r")


def _read_all(dataset: _MappedFile) -> int:
    """Bytes that reading the whole file through its memory map brought from disk."""
    before = timing.process_read_bytes()
    if dataset._memmap is None:
        dataset._memmap = np.load(dataset.cache.data_path, mmap_mode="r")
    np.asarray(dataset._memmap).sum()
    return timing.process_read_bytes() - before


def test_page_cache_budget_evicts_when_the_budget_has_been_read(tmp_path):
    path = tmp_path / "cache.npy"
    np.save(path, np.arange(4 << 20, dtype=np.uint8).reshape(64, -1))  # 4 MiB
    size = path.stat().st_size
    timing.evict(path)
    dataset = _MappedFile(path)
    if _read_all(dataset) < size // 2:
        pytest.skip("no I/O accounting here (no /proc/self/io, or the file is in memory)")
    roomy = cold.PageCacheBudget(dataset, 10 * size)
    roomy.after_batch()
    assert roomy.evictions == 0 and dataset._memmap is not None
    assert _read_all(dataset) == 0  # still cached
    tight = cold.PageCacheBudget(dataset, size // 2)
    tight.after_batch()  # nothing read since it started
    assert tight.evictions == 0 and _read_all(dataset) == 0
    dataset._memmap = None
    timing.evict(path)
    assert _read_all(dataset) >= size // 2  # more than the budget came from disk
    tight.after_batch()
    assert tight.evictions == 1 and dataset._memmap is None
    # Evicted for real: reading it again comes from disk.
    assert _read_all(dataset) >= size - 4096


def test_disk_row_reads_reports_both_orders(tmp_path):
    path = tmp_path / "rows.bin"
    row_bytes, rows = 3 * 4096 + 100, 40  # rows that do not start on a 4 KiB boundary
    path.write_bytes(bytes(64) + np.random.default_rng(0).bytes(rows * row_bytes))
    disk = cold.disk_row_reads(path, 64, row_bytes, rows, repeats=2)
    assert disk["random_row_gb_per_s"] > 0 and disk["sequential_row_gb_per_s"] > 0
    assert disk["sequential_vs_random"] == pytest.approx(
        disk["sequential_row_gb_per_s"] / disk["random_row_gb_per_s"]
    )
    assert disk["reads"] in ("O_DIRECT", "buffered, evicted, POSIX_FADV_RANDOM")
