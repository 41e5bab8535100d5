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
    """What to measure, and how much of it (the `bench` keys of conf/bench.yaml)."""

    sections: Sequence[str] = (
        "cache",
        "stats",
        "loader",
        "cold",
        "train_step",
        "metric",
        "feature_cache",
    )
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
    # Cold reads: the share of the cache file the page cache may hold (see the cold section).
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
