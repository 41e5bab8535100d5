"""The measurements behind `make bench` (`python -m geoguess.bench`); see docs/performance.md.

Each section returns a dict of numbers; `run_benchmarks` runs the sections asked for and
returns them nested (`{"loader": {"224": {...}}, ...}`), `flatten` gives the dotted keys. Rates
are medians of `repeats` runs; ratios compare two rates measured in the same run, because the
machines are shared and absolute figures are noisy. Peak memory is the `ru_maxrss` of a
subprocess that does only the measured work.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SECTIONS = ("cache", "stats", "loader", "cold", "train_step", "metric", "feature_cache")
REAL_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-sample"
SOURCE_SIZE = 640  # side of the generated stand-in images, as the real ones
# Dataset sizes to extrapolate the 2,000-location measurement to (docs/performance.md).
EXTRAPOLATE_TO = (16_000, 82_000)


@dataclass
class BenchSettings:
    """What to measure, and how much of it (the `bench` keys of conf/bench.yaml)."""

    sections: Sequence[str] = SECTIONS
    locations: int = 2000
    image_sizes: Sequence[int] = (224, 112)
    repeats: int = 3
    batch_size: int = 32
    # Locations timed per loader measurement (the naive loader is timed on fewer).
    loader_locations: int = 1024
    naive_locations: int = 256
    # Loader workers of the naive reference (the original's setting) and of the default path.
    naive_workers: int = 2
    default_workers: int = 0
    cold_image_size: int = 224
    # Cold reads: the share of the cache file the page cache may hold (see bench_cold).
    cold_memory_fraction: float = 0.5
    train_backbones: Sequence[str] = ("tiny",)
    train_image_size: int = 56
    train_batch_size: int = 32
    train_steps: int = 10
    warmup_steps: int = 3
    overhead_image_size: int = 56
    precision: str = "auto"  # auto: bf16 autocast on CUDA, float32 on CPU
    channels_last: str = "auto"  # auto: on CUDA
    metric_pairs: int = 1_000_000
    # The feature cache: a frozen pretrained backbone, epochs timed with and without it.
    feature_cache_backbone: str = "efficientnet_lite0"
    feature_cache_image_size: int = 224
    feature_cache_locations: int = 400
    feature_cache_epochs: int = 2
    source: str | None = None  # a dataset folder to replicate; None: the real sample or generated
    work_dir: str | None = None  # where the replicated data and caches go; None: a temp folder
    keep_work_dir: bool = False


# ---------------------------------------------------------------------------------------------
# Data


def prepare_data(work: Path, locations: int, source: Path | None = None) -> tuple[Path, str]:
    """`work/data`: `locations` locations linking to the views of `source` (or generated ones).

    Returns (root, description). Real data, replicated by symbolic links to each location's
    folder under new uuids, gives real decode costs without copying images.
    """
    root = work / "data"
    if source is None and (REAL_SAMPLE / "data.csv").exists():
        source = REAL_SAMPLE
    if source is None:
        source = work / "generated"
        if not (source / "data.csv").exists():
            generate_views(source, min(100, locations))
        description = f"{locations} locations replicated from generated 640x640 JPEGs"
    else:
        description = f"{locations} locations replicated from {source}"
    if (root / "data.csv").exists():
        return root, description
    table = pd.read_csv(source / "data.csv", dtype={"uuid": str}, keep_default_na=False)
    table = table[["uuid", "latitude", "longitude"]]
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(locations):
        row = table.iloc[k % len(table)]
        uuid = f"{row.uuid}-r{k // len(table):04d}"
        (root / "images" / uuid).symlink_to((source / "images" / row.uuid).resolve())
        rows.append((uuid, row.latitude, row.longitude))
    frame = pd.DataFrame(rows, columns=["uuid", "latitude", "longitude"])
    frame.to_csv(root / "data.csv", index=False)
    return root, description


def generate_views(root: Path, locations: int, seed: int = 0) -> None:
    """Photograph-like 640x640 JPEGs (smooth structure plus fine texture, quality 90)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    lat = rng.uniform(45.0, 46.0, locations)
    lon = rng.uniform(15.5, 17.5, locations)
    uuids = [f"{seed:04d}{k:04d}-0000-4000-8000-{k:012d}" for k in range(locations)]
    for uuid in uuids:
        folder = root / "images" / uuid
        folder.mkdir(parents=True, exist_ok=True)
        for heading in (0, 90, 180, 270):
            pixels = _photo_like(rng, SOURCE_SIZE)
            Image.fromarray(pixels).save(folder / f"{heading}.jpg", quality=90)
    frame = pd.DataFrame({"uuid": uuids, "latitude": lat, "longitude": lon})
    frame.to_csv(root / "data.csv", index=False)


def _photo_like(rng: np.random.Generator, size: int) -> np.ndarray:
    from PIL import Image

    image = np.zeros((size, size, 3), dtype=np.float64)
    for cells, weight in ((4, 90.0), (16, 40.0), (64, 20.0), (size, 12.0)):
        noise = rng.normal(0.0, 1.0, (cells, cells, 3))
        layer = Image.fromarray(((noise + 4) * 30).clip(0, 255).astype(np.uint8))
        layer = np.asarray(layer.resize((size, size), Image.Resampling.BICUBIC), np.float64)
        image += weight * (layer / 120.0 - 1.0)
    sky = np.linspace(60, -60, size)[:, None, None]
    return (image + sky + 128).clip(0, 255).astype(np.uint8)


def dataset_frame(root: Path) -> pd.DataFrame:
    frame = pd.read_csv(root / "data.csv", dtype={"uuid": str}, keep_default_na=False)
    frame = frame.assign(root=str(root))
    frame["latitude_raw"] = frame["latitude"].astype(str)
    frame["longitude_raw"] = frame["longitude"].astype(str)
    return frame


def naive_decode(paths: Sequence[str], size: int) -> np.ndarray:
    """The original's decoding: full-resolution PIL decode, then a bilinear resize per view."""
    from PIL import Image

    views = []
    for path in paths:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        views.append(np.asarray(rgb).transpose(2, 0, 1))
    return np.stack(views)


def location_paths(frame: pd.DataFrame) -> list[list[str]]:
    from geoguess.data.io import image_paths

    pairs = zip(frame["root"], frame["uuid"], strict=True)
    return [[str(p) for p in image_paths(root, uuid)] for root, uuid in pairs]


# ---------------------------------------------------------------------------------------------
# Timing helpers


def median_rate(count: Callable[[], float], repeats: int) -> float:
    """Median over `repeats` of `count()`, a rate in units per second."""
    return float(statistics.median(count() for _ in range(max(1, repeats))))


def in_subprocess(function: str, **kwargs) -> dict:
    """Run `geoguess.benchmarks.<function>(**kwargs)` in a fresh interpreter.

    Returns its result dict plus `peak_rss_mb` (that process's high-water resident set, which
    counts the pages of a memory-mapped file it read), `peak_anon_mb` (its largest anonymous
    memory, sampled every 10 ms: what it allocated) and `peak_children_rss_mb` (its largest
    child, e.g. a decode worker), so memory figures contain nothing of this process.
    """
    code = (
        "import json, sys; from geoguess import benchmarks as b; "
        "b._child(json.loads(sys.stdin.read()))"
    )
    request = json.dumps({"function": function, "kwargs": kwargs})
    here = str(Path(__file__).resolve().parents[1])  # this checkout's geoguess, not another
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path)
    done = subprocess.run(
        [sys.executable, "-c", code], input=request, capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark {function} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child(request: dict) -> None:
    import threading

    peak_anon = [_status_kb("RssAnon")]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak_anon[0] = max(peak_anon[0], _status_kb("RssAnon"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result = globals()[request["function"]](**request["kwargs"])
    done.set()
    sampler.join()
    peak_anon[0] = max(peak_anon[0], _status_kb("RssAnon"))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so it would count the RSS of
    # the benchmark process that forked this one.
    self_kb = _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result.update(
        peak_rss_mb=self_kb / 1024,
        peak_anon_mb=peak_anon[0] / 1024,
        peak_children_rss_mb=children_kb / 1024,
    )
    print(json.dumps(result))


def _status_kb(field: str) -> int:
    """A `kB` field of /proc/self/status (0 where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pids: Sequence[int] = ()) -> float:
    """CPU time (user + system) of this process, its reaped children and the live `pids`.

    Rates on a shared machine depend on what the neighbours do; CPU time per item does much
    less, so the bench reports both.
    """
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def evict(path: Path) -> None:
    """Drop `path`'s pages from the page cache (written back first), for cold reads."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Cache build and statistics


def timed_build(cache_root: str, root: str, image_size: int, workers: int | None) -> dict:
    """Build the cache of the dataset in `root` from scratch; {seconds, locations}."""
    from geoguess.data import cache as cache_mod

    shutil.rmtree(cache_root, ignore_errors=True)
    frame = dataset_frame(Path(root))
    cpu, start = cpu_seconds(), time.perf_counter()
    cache_mod.build_cache(Path(cache_root), "b" * 64, frame, image_size, workers, progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "locations": len(frame), "cpu_seconds": cpu_seconds() - cpu}


def timed_naive_decode(root: str, image_size: int, locations: int) -> dict:
    paths = location_paths(dataset_frame(Path(root)))[:locations]
    cpu, start = cpu_seconds(), time.perf_counter()
    for views in paths:
        naive_decode(views, image_size)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "locations": len(paths), "cpu_seconds": cpu_seconds() - cpu}


def timed_stats(cache_root: str, image_size: int, fraction: float = 0.8) -> dict:
    """The training-split statistics (`fraction` of the rows, as a split) from the cache."""
    from geoguess.data import cache as cache_mod
    from geoguess.data import stats as stats_mod

    cache = cache_mod.ImageCache.load(Path(cache_root), "b" * 64, image_size)
    n = len(cache.uuids)
    rows = np.random.default_rng(0).permutation(n)[: max(1, int(n * fraction))]
    start = time.perf_counter()
    mean, std = stats_mod.stats_from_memmap(cache.open(), rows)
    return {"seconds": time.perf_counter() - start, "mean": list(mean), "std": list(std)}


def bench_cache(settings: BenchSettings, root: Path, work: Path, size: int) -> dict:
    """The cache build on every core vs a naive decode in one process, repeats interleaved
    so that both see the same neighbours on a shared machine."""
    naive, naive_runs, builds = [], [], []
    for _ in range(max(1, settings.repeats)):
        naive_runs.append(in_subprocess("timed_naive_decode", **_naive_args(settings, root, size)))
        naive.append(_rate(naive_runs[-1]))
        build = in_subprocess(
            "timed_build",
            cache_root=str(work / f"cache-{size}"),
            root=str(root),
            image_size=size,
            workers=None,
        )
        builds.append(build)
    naive_rate = float(statistics.median(naive))
    build_rate = float(statistics.median(_rate(r) for r in builds))
    return {
        "naive_locations_per_s": naive_rate,
        "build_locations_per_s": build_rate,
        "ratio": build_rate / naive_rate,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in builds),
        "peak_anon_mb": max(r["peak_anon_mb"] for r in builds),
        "peak_worker_rss_mb": max(r["peak_children_rss_mb"] for r in builds),
        "workers": _cores(),
        "naive_cpu_ms_per_location": _cpu_ms(naive_runs),
        "build_cpu_ms_per_location": _cpu_ms(builds),
    }


def _cpu_ms(runs: list[dict]) -> float:
    return float(statistics.median(1000 * r["cpu_seconds"] / r["locations"] for r in runs))


def _naive_args(settings: BenchSettings, root: Path, size: int) -> dict:
    return {"root": str(root), "image_size": size, "locations": settings.naive_locations}


def _rate(run: dict) -> float:
    return run["locations"] / run["seconds"]


def bench_stats(settings: BenchSettings, work: Path, size: int) -> dict:
    runs = [
        in_subprocess("timed_stats", cache_root=str(work / f"cache-{size}"), image_size=size)
        for _ in range(settings.repeats)
    ]
    return {
        "seconds": float(statistics.median(r["seconds"] for r in runs)),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "peak_anon_mb": max(r["peak_anon_mb"] for r in runs),
        "image_size": size,
    }


# ---------------------------------------------------------------------------------------------
# Loaders


def _cached_dataset(work: Path, root: Path, size: int):
    from geoguess.data import cache as cache_mod
    from geoguess.data.dataset import GeoguesserDataset

    cache_root = work / f"cache-{size}"
    cache = cache_mod.ImageCache.load(cache_root, "b" * 64, size)
    frame = dataset_frame(root)
    if cache is None:
        cache = cache_mod.build_cache(cache_root, "b" * 64, frame, size, None, progress=False)
    return GeoguesserDataset(frame, size, cache=cache, on_failure="substitute")


class NaiveDataset:
    """The reference: decode and resize each location's files per access (no cache, no
    `draft`), then torchvision's per-view augmentation, as the original trained."""

    def __init__(self, paths: list[list[str]], size: int) -> None:
        from geoguess.data.augment import TorchvisionViewAugment

        self.paths, self.size = paths, size
        self.augment = TorchvisionViewAugment(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        import torch

        views = torch.from_numpy(naive_decode(self.paths[index], self.size))
        return {"images": self.augment(views), "index": torch.tensor(index)}


def _loader_rate(batches, locations: int, step: Callable | None = None) -> tuple[float, float]:
    """(locations/s, CPU ms per location) of iterating `batches` until `locations` have come.

    Not timed: the batches a loader's workers prepare before the first is taken (their start
    and the prefetched queue), so the rate is the steady state. CPU time counts the workers.
    """
    iterator = iter(batches)
    workers = getattr(batches, "num_workers", 0)
    for _ in range(1 + workers * (getattr(batches, "prefetch_factor", None) or 2)):
        batch = next(iterator, None)
        if batch is None:
            raise ValueError("too few locations to time this loader; use more bench.locations")
        if step is not None:
            step(batch)
    pids = [w.pid for w in getattr(iterator, "_workers", [])]
    cpu, start, count = cpu_seconds(pids), time.perf_counter(), 0
    for batch in iterator:
        if step is not None:
            step(batch)
        count += len(batch["images"])
        if count >= locations:
            break
    seconds, cpu = time.perf_counter() - start, cpu_seconds(pids) - cpu
    del iterator
    return count / seconds, 1000 * cpu / count


def device_step(device, augment=None, epoch: int = 0) -> Callable:
    """What happens to a batch before the model: to the device, then the batch augmentation."""
    import torch

    def step(batch: dict) -> None:
        images = batch["images"].to(device, non_blocking=True)
        if augment is not None:
            images = augment(images, batch["index"], epoch)
        if images.device.type == "cuda":
            torch.cuda.synchronize(images.device)

    return step


def bench_loader(settings: BenchSettings, root: Path, work: Path, size: int, device) -> dict:
    """Training-ready batches: the naive reference vs the suite's default path, and the read
    paths without augmentation (per item or per batch, in-process or in 2 workers)."""
    from torch.utils.data import DataLoader

    from geoguess.data.augment import BatchAugment
    from geoguess.data.dataset import batch_loader
    from geoguess.data.sampler import LocationShuffle

    dataset = _cached_dataset(work, root, size)
    n = len(dataset)
    locations = min(settings.loader_locations, n - settings.batch_size)
    naive_dataset = NaiveDataset(location_paths(dataset_frame(root)), size)
    naive_count = min(settings.naive_locations, n - settings.batch_size)

    def naive_rate() -> tuple[float, float]:
        loader = DataLoader(
            naive_dataset,
            batch_size=settings.batch_size,
            shuffle=True,
            num_workers=settings.naive_workers,
        )
        return _loader_rate(loader, naive_count)

    augment = BatchAugment(seed=0)

    def default_rate(workers: int = settings.default_workers) -> tuple[float, float]:
        sampler = LocationShuffle(n, seed=0)
        loader = batch_loader(dataset, sampler, settings.batch_size, num_workers=workers)
        return _loader_rate(loader, locations, device_step(device, augment))

    def read_rate(kind: str, workers: int) -> tuple[float, float]:
        if kind == "items":
            loader = DataLoader(
                dataset,
                batch_size=settings.batch_size,
                shuffle=True,
                num_workers=workers,
                collate_fn=dataset.collate,
            )
        else:
            loader = batch_loader(
                dataset, LocationShuffle(n), settings.batch_size, num_workers=workers
            )
        return _loader_rate(loader, locations)

    naive, default = [], []
    for _ in range(max(1, settings.repeats)):  # interleaved: both see the same neighbours
        naive.append(naive_rate())
        default.append(default_rate())
    result = {
        "naive_samples_per_s": float(statistics.median(r for r, _ in naive)),
        "default_samples_per_s": float(statistics.median(r for r, _ in default)),
    }
    result["ratio"] = result["default_samples_per_s"] / result["naive_samples_per_s"]
    result["naive_cpu_ms_per_sample"] = float(statistics.median(c for _, c in naive))
    result["default_cpu_ms_per_sample"] = float(statistics.median(c for _, c in default))
    result["cpu_ratio"] = result["naive_cpu_ms_per_sample"] / result["default_cpu_ms_per_sample"]
    rate, cpu = default_rate(2)
    result["default_workers2_samples_per_s"] = rate
    result["default_workers2_cpu_ms_per_sample"] = cpu
    result["read_only"] = {}
    for kind in ("items", "batches"):
        for workers in (0, 2):
            rate, cpu = read_rate(kind, workers)
            result["read_only"][f"{kind}_workers{workers}_samples_per_s"] = rate
            result["read_only"][f"{kind}_workers{workers}_cpu_ms_per_sample"] = cpu
    return result


def bench_cold(settings: BenchSettings, root: Path, work: Path) -> dict:
    """One epoch from a cache whose pages were evicted: per-location vs block shuffling.

    What the issue asks about is a cache larger than memory. The bench's cache (2,000
    locations, 1.2 GB) fits in this machine's memory: after one eviction, a per-location epoch
    faults each row in with the kernel's read-around (8 MB here), the neighbours stay cached
    until their turn, and the file is read exactly once, in large chunks, whatever the order
    (`in_memory_*`: measured 1.00 disk byte per row byte for both orders). So the main figures
    give the page cache `cold_memory_fraction` of the file (`PageCacheBudget`): the cache's
    pages are evicted whenever that much has come from disk since the last eviction, as a
    cache twice the size of memory (82,000 locations at 224 px on 24 GB) would have them
    evicted. `*_disk_bytes_per_byte` is what each order read from disk per byte it used, and
    `disk.*` the raw device: row-sized reads in random vs file order, past the page cache.
    """
    from geoguess.data.dataset import batch_loader
    from geoguess.data.sampler import BlockShuffle, LocationShuffle

    size = settings.cold_image_size
    kinds = ("random", "block", "block_read_ahead", "in_memory_random", "in_memory_block")
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    amplification: dict[str, list[float]] = {kind: [] for kind in kinds}
    budget_bytes = 0
    for _ in range(max(1, settings.repeats)):
        for kind in kinds:  # interleaved: each repeat sees the same neighbours
            dataset = _cached_dataset(work, root, size)
            path = dataset.cache.data_path
            budget_bytes = int(settings.cold_memory_fraction * path.stat().st_size)
            budget = PageCacheBudget(dataset, 0 if kind.startswith("in_memory") else budget_bytes)
            evict(path)
            n = len(dataset)
            if kind.endswith("random"):
                sampler = LocationShuffle(n, seed=1)
            else:
                sampler = BlockShuffle(dataset.rows, seed=1)
            loader = batch_loader(
                dataset, sampler, settings.batch_size, read_ahead=kind == "block_read_ahead"
            )
            start, count, disk = time.perf_counter(), 0, process_read_bytes()
            for batch in loader:
                count += len(batch["images"])
                del batch
                budget.after_batch()
            rates[kind].append(count / (time.perf_counter() - start))
            amplification[kind].append(
                (process_read_bytes() - disk) / (count * dataset.cache.row_bytes)
            )
            del loader, dataset, budget
            gc.collect()  # unmaps the cache, so the next eviction drops every page
    medians = {kind: float(statistics.median(r)) for kind, r in rates.items()}
    result = {
        "random_samples_per_s": medians["random"],
        "block_samples_per_s": medians["block"],
        "block_read_ahead_samples_per_s": medians["block_read_ahead"],
        "ratio": medians["block"] / medians["random"],
        "memory_fraction": settings.cold_memory_fraction,
        "memory_budget_mb": budget_bytes / 1e6,
        "in_memory_random_samples_per_s": medians["in_memory_random"],
        "in_memory_block_samples_per_s": medians["in_memory_block"],
        "in_memory_ratio": medians["in_memory_block"] / medians["in_memory_random"],
        "image_size": size,
    }
    # Without I/O accounting (no /proc/self/io, or a file system in memory) there is no figure.
    for kind, values in amplification.items():
        if min(values) > 0:
            result[f"{kind}_disk_bytes_per_byte"] = float(statistics.median(values))
    dataset = _cached_dataset(work, root, size)
    result["disk"] = disk_row_reads(
        dataset.cache.data_path,
        dataset.cache.offset,
        dataset.cache.row_bytes,
        len(dataset.cache.uuids),
        settings.repeats,
    )
    return result


def process_read_bytes() -> int:
    """Bytes this process has caused to be read from storage (`read_bytes` of /proc/self/io:
    page faults, their read-around and read-ahead included); 0 where the kernel does not say."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


class PageCacheBudget:
    """A page cache that holds at most `budget` bytes of `dataset`'s cache file (0: no limit).

    `after_batch()` evicts the file's pages once `budget` bytes have come from disk since the
    last eviction. The dataset's memory map is dropped first: the kernel does not evict pages a
    process still maps. Emptying the whole cache when it is full is harsher than the kernel's
    LRU (which would keep the newest pages), and harsher on the block order, whose newest pages
    are the shuffle buffer it is reading, than on the per-location order.
    """

    def __init__(self, dataset, budget: int) -> None:
        self.dataset = dataset
        self.budget = int(budget)
        self.evictions = 0
        self._since = process_read_bytes()

    def after_batch(self) -> None:
        if self.budget <= 0 or process_read_bytes() - self._since < self.budget:
            return
        self.dataset._memmap = None  # unmapped here; the dataset maps the file again on use
        evict(self.dataset.cache.data_path)
        self.evictions += 1
        self._since = process_read_bytes()


def disk_row_reads(
    path: Path, offset: int, row_bytes: int, rows: int, repeats: int, limit: int = 1000
) -> dict:
    """The device's own figure: up to `limit` rows read one `pread` each, in random order and
    in file order, past the page cache (`O_DIRECT`; where that is refused, buffered reads of an
    evicted file with read-ahead off). GB/s of row bytes, medians of `repeats`, interleaved."""
    count = min(rows, limit)
    order = np.random.default_rng(0).permutation(rows)[:count]
    rates: dict[str, list[float]] = {"random": [], "sequential": []}
    direct = True
    for _ in range(max(1, repeats)):
        for kind, chosen in (("random", order), ("sequential", np.arange(count))):
            try:
                seconds = _timed_preads(path, offset + chosen * row_bytes, row_bytes, direct)
            except OSError:  # O_DIRECT refused (e.g. tmpfs): buffered, evicted, no read-ahead
                direct = False
                seconds = _timed_preads(path, offset + chosen * row_bytes, row_bytes, direct)
            rates[kind].append(count * row_bytes / seconds / 1e9)
    random_rate = float(statistics.median(rates["random"]))
    sequential_rate = float(statistics.median(rates["sequential"]))
    return {
        "random_row_gb_per_s": random_rate,
        "sequential_row_gb_per_s": sequential_rate,
        "sequential_vs_random": sequential_rate / random_rate,
        "reads": "O_DIRECT" if direct else "buffered, evicted, POSIX_FADV_RANDOM",
    }


def _timed_preads(path: Path, offsets: np.ndarray, length: int, direct: bool) -> float:
    """Seconds to read `length` bytes at each of `offsets` (widened to 4 KiB alignment for
    `O_DIRECT`, which needs aligned offsets, lengths and memory: an anonymous map is aligned)."""
    import mmap

    align = 4096
    if direct:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    else:
        evict(path)
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    buffer = mmap.mmap(-1, length + 2 * align)
    view = memoryview(buffer)
    try:
        start = time.perf_counter()
        for at in offsets.tolist():
            if direct:
                first = at - at % align
                size = -(-(at + length - first) // align) * align
                os.preadv(fd, [view[:size]], first)
            else:
                os.preadv(fd, [view[:length]], at)
        return time.perf_counter() - start
    finally:
        view.release()
        buffer.close()
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Training steps


class BenchNet:
    """Builds the training computation the suite runs: four views through one backbone,
    concatenated features, a linear classifier, cross-entropy (random weights, no download)."""

    @staticmethod
    def create(backbone: str, classes: int = 64):
        import torch
        from torch import nn

        from geoguess.models.backbones import create_backbone, feature_size

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.backbone = create_backbone(backbone, pretrained=False)
                self.head = nn.Linear(4 * feature_size(self.backbone), classes)
                self.register_buffer("mean", torch.tensor([0.45, 0.45, 0.45]).view(1, 3, 1, 1))
                self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))

            def forward(self, images: torch.Tensor) -> torch.Tensor:
                b, v = images.shape[:2]
                x = (images.flatten(0, 1).float() / 255.0 - self.mean) / self.std
                if images.is_cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                return self.head(self.backbone(x).reshape(b, -1))

            def loss(self, batch: dict) -> torch.Tensor:
                logits = self(batch["images"])
                return nn.functional.cross_entropy(logits.float(), batch["class_id"])

        return Net()


def synthetic_batches(count: int, batch_size: int, size: int, device, classes: int = 64):
    import torch

    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        images = torch.randint(0, 256, (batch_size, 4, 3, size, size), generator=generator)
        labels = torch.randint(0, classes, (batch_size,), generator=generator)
        batches.append({"images": images.to(torch.uint8).to(device), "class_id": labels.to(device)})
    return batches


def _autocast(device, precision: str):
    import torch

    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop_steps(net, optimizer, batches, device, precision: str) -> list[float]:
    """Seconds of each step of a plain PyTorch loop (start of one step to start of the next)."""
    net.train()
    stamps = []
    for batch in batches:
        _sync(device)
        stamps.append(time.perf_counter())
        with _autocast(device, precision):
            loss = net.loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    stamps.append(time.perf_counter())
    return np.diff(stamps).tolist()


def median_step(steps: list[float], warmup: int) -> float:
    """The median step time after `warmup` steps: robust to a neighbour's burst of work."""
    return float(statistics.median(steps[warmup:]))


def bench_train_step(settings: BenchSettings, device) -> dict:
    import torch

    result = {}
    for backbone in settings.train_backbones:
        size = settings.train_image_size
        net = BenchNet.create(backbone).to(device)
        if _channels_last(settings, device):
            net = net.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
        batches = synthetic_batches(
            settings.warmup_steps + settings.train_steps, settings.train_batch_size, size, device
        )
        steps = plain_loop_steps(net, optimizer, batches, device, settings.precision)
        for _ in range(settings.repeats - 1):
            steps += plain_loop_steps(net, optimizer, batches, device, settings.precision)
        rate = settings.train_batch_size / median_step(steps, settings.warmup_steps)
        result.setdefault(backbone, {})[str(size)] = {
            "samples_per_s": rate,
            "images_per_s": 4 * rate,
            "batch_size": settings.train_batch_size,
        }
        del net, optimizer, batches
    return result


def _channels_last(settings: BenchSettings, device) -> bool:
    if settings.channels_last == "auto":
        return device.type == "cuda"
    return str(settings.channels_last).lower() in ("true", "1", "yes")


def bench_lightning_overhead(settings: BenchSettings, device) -> dict:
    """Step time of a Lightning `fit` / of a plain PyTorch loop, on the same tiny net, AdamW,
    batches and device, the first `warmup_steps` of each excluded.

    The two run in lock step: at the start of each Lightning step a callback runs one plain
    step of a second copy of the net on the same batch, timed on its own. A Lightning step is
    the time from one batch start to the next less that plain step, so it includes everything
    Lightning does around the step (fetching, hooks, logging). Each pair is measured within a
    second, so a neighbour's burst of work on a shared machine slows both alike; the figure is
    the median ratio over the pairs.
    """
    import lightning as L
    import torch

    size = settings.overhead_image_size
    steps = settings.warmup_steps + max(settings.train_steps, 20) * max(1, settings.repeats)
    batches = synthetic_batches(steps, settings.train_batch_size, size, torch.device("cpu"))
    precision = "bf16" if device.type == "cuda" else "fp32"

    class Module(L.LightningModule):
        def __init__(self, net) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch: dict, batch_idx: int):
            loss = self.net.loss(batch)
            self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["images"]))
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-4)

    class LockStep(L.Callback):
        def __init__(self) -> None:
            torch.manual_seed(0)
            self.net = BenchNet.create("tiny").to(device).train()
            self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=1e-4)
            self.stamps: list[float] = []
            self.plain: list[float] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            _sync(device)
            self.stamps.append(time.perf_counter())
            self.plain.append(
                plain_loop_steps(self.net, self.optimizer, [batch], device, precision)[0]
            )

        def on_train_epoch_end(self, trainer, module) -> None:
            _sync(device)
            self.stamps.append(time.perf_counter())

    torch.manual_seed(0)
    clock = LockStep()
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    torch.manual_seed(0)
    with _quiet("lightning.pytorch", "lightning.fabric"):
        trainer.fit(Module(BenchNet.create("tiny")), train_dataloaders=_ListLoader(batches))
    plain = np.array(clock.plain)
    lightning = np.diff(clock.stamps) - plain
    keep = slice(settings.warmup_steps, None)
    return {
        "lightning_overhead": float(np.median(lightning[keep] / plain[keep])),
        "lightning_step_ms": float(np.median(lightning[keep])) * 1000,
        "plain_step_ms": float(np.median(plain[keep])) * 1000,
        "overhead_image_size": size,
    }


@contextlib.contextmanager
def _quiet(*loggers: str):
    """Lightning's start-up lines (GPU available, tips) would bury the table."""
    import warnings

    levels = {name: logging.getLogger(name).level for name in loggers}
    try:
        for name in loggers:
            logging.getLogger(name).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class _ListLoader:
    """The same list of batches for Lightning (an iterable with a length)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


# ---------------------------------------------------------------------------------------------
# Metric


def bench_metric(settings: BenchSettings, device) -> dict:
    """Haversine pairs/s on the device, and its largest relative error against the WGS84
    geodesic (pyproj.Geod) for pairs of points in and around Croatia, 1-600 km apart."""
    import torch
    from pyproj import Geod

    from geoguess.geo import haversine_km_torch

    rng = np.random.default_rng(0)
    n = settings.metric_pairs
    lat1, lat2 = rng.uniform(42.0, 46.6, (2, n))
    lon1, lon2 = rng.uniform(13.3, 19.5, (2, n))
    tensors = [
        torch.tensor(a, dtype=torch.float32, device=device) for a in (lat1, lon1, lat2, lon2)
    ]

    def rate() -> float:
        haversine_km_torch(*tensors, check=False)
        _sync(device)
        start = time.perf_counter()
        haversine_km_torch(*tensors, check=False)
        _sync(device)
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


# ---------------------------------------------------------------------------------------------
# The whole run


def describe_device(device) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"type": device.type, "cpu": cpu, "cores": _cores(), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_benchmarks(settings: BenchSettings, progress: Callable[[str], None] = print) -> dict:
    """Every section of `settings.sections`; the nested result (see `flatten`)."""
    import tempfile

    import torch

    unknown = set(settings.sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown bench sections {sorted(unknown)}; known: {list(SECTIONS)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result: dict = {"device": describe_device(device)}
    sections = set(settings.sections)
    made_work = settings.work_dir is None
    work = Path(settings.work_dir or tempfile.mkdtemp(prefix="geoguess-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        needs_data = sections & {"cache", "stats", "loader", "cold"}
        if needs_data:
            source = Path(settings.source) if settings.source else None
            root, description = prepare_data(work, settings.locations, source)
            result["data"] = {"locations": settings.locations, "source": description}
        for size in settings.image_sizes:
            if "cache" in sections:
                progress(f"cache build at {size} px")
                result.setdefault("cache", {})[str(size)] = bench_cache(settings, root, work, size)
            if "loader" in sections:
                progress(f"loader at {size} px")
                loader = bench_loader(settings, root, work, size, device)
                result.setdefault("loader", {})[str(size)] = loader
        if "stats" in sections:
            size = max(settings.image_sizes)
            _cached_dataset(work, root, size)
            progress(f"statistics at {size} px")
            result["stats"] = bench_stats(settings, work, size)
        if "cold" in sections:
            progress(f"cold reads at {settings.cold_image_size} px")
            result.setdefault("loader", {})["cold"] = bench_cold(settings, root, work)
        if "train_step" in sections:
            progress("training steps")
            result["train_step"] = bench_train_step(settings, device)
            result["train_step"].update(bench_lightning_overhead(settings, device))
        if "feature_cache" in sections:
            progress(f"feature cache ({settings.feature_cache_backbone}, frozen)")
            result["feature_cache"] = bench_feature_cache(settings, work)
        if "metric" in sections:
            progress("metric")
            result["metric"] = bench_metric(settings, device)
        if "cache" in sections:
            result["extrapolated"] = extrapolate(result, settings)
    finally:
        if made_work and not settings.keep_work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return result


def bench_feature_cache(settings: BenchSettings, work: Path) -> dict:
    """Epoch time of a frozen-backbone run without / with the feature cache (real
    `geoguess.train` runs on a generated set; the cache's one-time build is not an epoch)."""
    import subprocess
    import sys

    from geoguess.synthetic import generate

    root = work / "feature-cache-data"
    if not (root / "data.csv").exists():
        size = max(64, settings.feature_cache_image_size // 2)
        generate(root, settings.feature_cache_locations, image_size=size, progress=False)
    epochs = settings.feature_cache_epochs
    overrides = [
        f"backbone={settings.feature_cache_backbone}",
        "unfreeze=frozen",
        "data=folder",
        f"data.root={root}",
        "data.split_by=hash",
        "data.augment=false",
        f"data.batch_size={settings.batch_size}",
        f"image.size={settings.feature_cache_image_size}",
        "logger=none",
        f"trainer.max_epochs={epochs}",
        "trainer.num_sanity_val_steps=0",
    ]
    figures = {}
    for name, cached in (("without", False), ("with", True)):
        out = work / f"feature-cache-run-{name}"
        command = [sys.executable, "-m", "geoguess.train", *overrides]
        command += [f"model.feature_cache={str(cached).lower()}", f"hydra.run.dir={out}"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"feature cache run failed: {done.stderr[-2000:]}")
        results = json.loads((out / "results.json").read_text())
        figures[f"epoch_seconds_{name}"] = results["train_seconds"] / epochs
        figures[f"val_km_{name}"] = results["val_haversine_km"]
    figures["speedup"] = figures["epoch_seconds_without"] / figures["epoch_seconds_with"]
    figures["frozen_pass"] = bench_frozen_pass(settings)
    return figures


FROZEN_PASSES = {  # name: (channels_last, bf16), as model.channels_last / model.frozen_precision
    "float32": (False, False),
    "channels_last": (True, False),
    "bf16_channels_last": (True, True),
}


def bench_frozen_pass(settings: BenchSettings) -> dict:
    """Images per second of a frozen backbone's pass (evaluation, the feature cache's build) in
    float32, channels-last, and channels-last bf16, on blocks of the feature cache's size, and
    bf16's error relative to float32. Random weights: the speed is the architecture's."""
    import torch

    from geoguess.models.backbones import create_backbone
    from geoguess.models.feature_cache import BATCH_LOCATIONS
    from geoguess.models.module import run_backbone

    torch.manual_seed(0)
    backbone = create_backbone(settings.feature_cache_backbone, pretrained=False).eval()
    size = settings.feature_cache_image_size
    images = torch.rand(4 * BATCH_LOCATIONS, 3, size, size) * 2 - 1
    figures, features = {}, {}
    for name, (channels_last, bf16) in FROZEN_PASSES.items():
        memory = torch.channels_last if channels_last else torch.contiguous_format
        net = backbone.to(memory_format=memory)

        def run(net=net, channels_last=channels_last, bf16=bf16) -> torch.Tensor:
            with torch.inference_mode():
                return run_backbone(net, images, channels_last, bf16).float()

        features[name] = run()  # the first pass also builds the kernels: not timed
        figures[f"{name}_images_per_s"] = median_rate(
            lambda run=run: len(images) / _seconds(run), settings.repeats
        )
    exact = features["float32"]
    figures["bf16_relative_error"] = float(
        (features["bf16_channels_last"] - exact).norm() / exact.norm()
    )
    figures["speedup_bf16_channels_last"] = (
        figures["bf16_channels_last_images_per_s"] / figures["float32_images_per_s"]
    )
    return figures


def _seconds(function: Callable) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def extrapolate(result: dict, settings: BenchSettings) -> dict:
    """Time, disk and memory at `EXTRAPOLATE_TO` locations, scaled from this measurement.

    Build time, statistics and epoch reads scale with the number of locations, allocated memory
    does not (the build holds a few rows per worker, the statistics a chunk); disk is exact
    (rows x bytes per row).
    """
    out = {}
    cold = result.get("loader", {}).get("cold", {})
    for n in EXTRAPOLATE_TO:
        entry = {}
        for size, cache in result.get("cache", {}).items():
            row_bytes = 4 * 3 * int(size) ** 2
            entry[f"cache_{size}_disk_gb"] = n * row_bytes / 1e9
            entry[f"cache_{size}_build_minutes"] = n / cache["build_locations_per_s"] / 60
            entry[f"cache_{size}_build_peak_rss_mb"] = cache["peak_rss_mb"]
        if "stats" in result:
            entry["stats_seconds"] = result["stats"]["seconds"] * n / settings.locations
            # Allocated memory is flat; the RSS also counts the cache pages read (reclaimable).
            entry["stats_peak_anon_mb"] = result["stats"]["peak_anon_mb"]
        if cold:
            entry["cold_epoch_minutes_random"] = n / cold["random_samples_per_s"] / 60
            entry["cold_epoch_minutes_block"] = n / cold["block_samples_per_s"] / 60
        out[str(n)] = entry
    return out


def flatten(tree: dict, prefix: str = "") -> dict:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def table(result: dict) -> str:
    """The numbers as an aligned two-column table."""
    rows = []
    for key, value in flatten(result).items():
        if isinstance(value, float):
            text = f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
        else:
            text = str(value)
        rows.append((key, text))
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def finite_numbers(result: dict) -> list[str]:
    """Keys whose value is a number that is not positive and finite (should be empty)."""
    bad = []
    for key, value in flatten(result).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not (math.isfinite(value) and value > 0):
            bad.append(key)
    return bad
