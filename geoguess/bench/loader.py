"""Section `loader`: training-ready batches at each of `bench.image_sizes`, the original's naive
loader against the suite's default path, and the read paths without augmentation."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from geoguess.bench.config import BenchConfig
from geoguess.bench.data import dataset_frame, location_paths, naive_decode
from geoguess.bench.timing import cpu_seconds
from geoguess.data.augment import BatchAugment, TorchvisionViewAugment
from geoguess.data.dataset import batch_loader
from geoguess.data.sampler import LocationShuffle


def run(cfg: BenchConfig) -> dict:
    """`{"<size>": {...}}` for each image size."""
    result = {}
    for size in cfg.settings.image_sizes:
        cfg.progress(f"loader at {size} px")
        result[str(size)] = bench_loader(cfg, size)
    return result


class NaiveDataset:
    """The reference: decode and resize each location's files per access (no cache, no
    `draft`), then torchvision's per-view augmentation, as the original trained."""

    def __init__(self, paths: list[list[str]], size: int) -> None:
        self.paths, self.size = paths, size
        self.augment = TorchvisionViewAugment(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        views = torch.from_numpy(naive_decode(self.paths[index], self.size))
        return {"images": self.augment(views), "index": torch.tensor(index)}


def loader_rate(batches, locations: int, step: Callable | None = None) -> tuple[float, float]:
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


def device_step(device: torch.device, augment=None, epoch: int = 0) -> Callable:
    """What happens to a batch before the model: to the device, then the batch augmentation."""

    def step(batch: dict) -> None:
        images = batch["images"].to(device, non_blocking=True)
        if augment is not None:
            images = augment(images, batch["index"], epoch)
        if images.device.type == "cuda":
            torch.cuda.synchronize(images.device)

    return step


def bench_loader(cfg: BenchConfig, size: int) -> dict:
    """Training-ready batches: the naive reference vs the suite's default path, and the read
    paths without augmentation (per item or per batch, in-process or in 2 workers)."""
    settings = cfg.settings
    dataset = cfg.cached_dataset(size)
    n = len(dataset)
    locations = min(settings.loader_locations, n - settings.batch_size)
    naive_dataset = NaiveDataset(location_paths(dataset_frame(cfg.data_root())), size)
    naive_count = min(settings.naive_locations, n - settings.batch_size)

    def naive_rate() -> tuple[float, float]:
        loader = DataLoader(
            naive_dataset,
            batch_size=settings.batch_size,
            shuffle=True,
            num_workers=settings.naive_workers,
        )
        return loader_rate(loader, naive_count)

    augment = BatchAugment(seed=0)

    def default_rate(workers: int = settings.default_workers) -> tuple[float, float]:
        sampler = LocationShuffle(n, seed=0)
        loader = batch_loader(dataset, sampler, settings.batch_size, num_workers=workers)
        return loader_rate(loader, locations, device_step(cfg.device, augment))

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
        return loader_rate(loader, locations)

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
