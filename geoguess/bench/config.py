"""What a bench run measures (`BenchSettings`, the `bench` keys of conf/bench.yaml) and what
every section's `run(cfg)` gets (`BenchConfig`: the settings, the work folder, the device and
the bench's dataset, prepared on first use)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from geoguess.bench.data import dataset_frame, prepare_data
from geoguess.bench.measured import CACHE_KEY
from geoguess.data import cache as cache_mod
from geoguess.data.dataset import GeoguesserDataset


@dataclass
class BenchSettings:
    """What to measure, and how much of it: the `bench` keys of conf/bench.yaml, which holds
    every default and says what each key means (`__main__.settings_from` builds this)."""

    sections: Sequence[str]
    locations: int
    image_sizes: Sequence[int]
    repeats: int
    batch_size: int
    loader_locations: int
    naive_locations: int
    naive_workers: int
    default_workers: int
    cold_image_size: int
    cold_memory_fraction: float
    train_backbones: Sequence[str]
    train_image_size: int
    train_batch_size: int
    train_steps: int
    warmup_steps: int
    overhead_image_size: int
    precision: str
    channels_last: str | bool
    metric_pairs: int
    source: str | None
    work_dir: str | None
    keep_work_dir: bool
    feature_cache_backbone: str
    feature_cache_image_size: int
    feature_cache_locations: int
    feature_cache_epochs: int
    serve_backbones: Sequence[str]
    serve_image_size: int
    serve_clients: Sequence[int]
    serve_requests: int
    serve_max_seconds: float
    serve_rss_requests: int
    serve_rss_clients: int
    serve_max_batch: int
    serve_max_wait_ms: float
    serve_batching_backbone: str | None
    serve_train_locations: int


@dataclass
class BenchConfig:
    """A section's view of the run: `settings`, the `work` folder, the `device` measured on."""

    settings: BenchSettings
    work: Path
    device: torch.device
    progress: Callable[[str], None] = print
    _data: tuple[Path, str] | None = field(default=None, repr=False)

    def data_root(self) -> Path:
        """The bench's dataset (`settings.locations` locations), prepared on first use."""
        if self._data is None:
            source = Path(self.settings.source) if self.settings.source else None
            self._data = prepare_data(self.work, self.settings.locations, source)
        return self._data[0]

    def data_block(self) -> dict | None:
        """bench.json's `data` block: what the dataset is; None where no section used it."""
        if self._data is None:
            return None
        return {"locations": self.settings.locations, "source": self._data[1]}

    def cache_root(self, size: int) -> Path:
        """Where the image cache of the dataset at `size` px lives."""
        return self.work / f"cache-{size}"

    def cached_dataset(self, size: int) -> GeoguesserDataset:
        """The suite's dataset over the cache at `size` px, built on first use."""
        root = self.data_root()
        cache = cache_mod.ImageCache.load(self.cache_root(size), CACHE_KEY, size)
        frame = dataset_frame(root)
        if cache is None:
            cache = cache_mod.build_cache(
                self.cache_root(size), CACHE_KEY, frame, size, None, progress=False
            )
        return GeoguesserDataset(frame, size, cache=cache, on_failure="substitute")
