"""`GeoguesserDataset`: one item per location, its four views as `uint8 [4, 3, S, S]`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from geoguess.data.cache import ImageCache, decode_location
from geoguess.data.io import HEADINGS, image_paths

log = logging.getLogger(__name__)


class ViewAugment:
    """Train-time augmentation applied to each view on its own, on uint8 tensors.

    Only geometry-preserving changes: a mild random resized crop (70-100 % of the area, aspect
    near 1, so the horizon and the heading barely move) and brightness/contrast jitter. No horizontal flip: it swaps east and west, and the
    views' heading order would then lie.
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.7, 1.0)) -> None:
        from torchvision.transforms import v2

        self.transform = v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=scale, ratio=(0.9, 1.1), antialias=True),
                # Saturation jitter would double the cost per view on the CPU workers.
                v2.ColorJitter(brightness=0.2, contrast=0.2),
            ]
        )

    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(view) for view in views])


class GeoguesserDataset(Dataset):
    """Locations with targets; images from the memory-mapped cache or decoded from the files.

    `frame` holds `uuid, latitude, longitude, root`; `targets` (float32 [N, 2]) and `class_ids`
    (int64 [N]) may be NaN / -1 (prediction). The memmap is opened lazily in each process, so
    the dataset pickles cheaply into DataLoader workers.
    """

    def __init__(
        self,
        frame,
        image_size: int,
        targets: np.ndarray | None = None,
        class_ids: np.ndarray | None = None,
        cache: ImageCache | None = None,
        augment: ViewAugment | None = None,
        on_failure: str = "drop",
    ) -> None:
        n = len(frame)
        self.uuids: list[str] = frame["uuid"].astype(str).tolist()
        self.latlon = frame[["latitude", "longitude"]].to_numpy(dtype=np.float64)
        self.roots: list[str] = frame["root"].astype(str).tolist()
        self.targets = (
            np.full((n, 2), np.nan, np.float32)
            if targets is None
            else np.asarray(targets, np.float32)
        )
        self.class_ids = (
            np.full(n, -1, np.int64) if class_ids is None else np.asarray(class_ids, np.int64)
        )
        self.image_size = int(image_size)
        self.cache = cache
        self.rows = np.array([cache.index[u] for u in self.uuids]) if cache is not None else None
        self.augment = augment
        if on_failure not in ("drop", "substitute"):
            raise ValueError(f"on_failure={on_failure!r} is not 'drop' or 'substitute'")
        self.on_failure = on_failure
        self._memmap = None
        self._failed: set[int] = set()

    def __len__(self) -> int:
        return len(self.uuids)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_memmap"] = None  # each worker maps the file itself
        return state

    def paths(self, index: int) -> list[Path]:
        return image_paths(self.roots[index], self.uuids[index])

    def load_views(self, index: int) -> np.ndarray | None:
        """`uint8 [4, 3, S, S]` of one location, or None (logged) when a view fails to decode."""
        if self.cache is not None:
            if self._memmap is None:
                self._memmap = self.cache.open()
            return np.array(self._memmap[self.rows[index]])
        views, failures = decode_location([str(p) for p in self.paths(index)], self.image_size)
        for path, reason in failures.items():
            log.warning("%s %s; location %s excluded", path, reason, self.uuids[index])
        return views

    def __getitem__(self, index: int) -> dict | None:
        """One location; None ("drop") or the next readable one ("substitute") when its views
        no longer decode, so a file broken after validation never ends an epoch."""
        tries = len(self) if self.on_failure == "substitute" else 1
        for offset in range(tries):
            i = (index + offset) % len(self)
            if i in self._failed:
                continue
            views = self.load_views(i)
            if views is not None:
                return self._item(i, views)
            self._failed.add(i)
        if self.on_failure == "drop":
            return None
        raise RuntimeError("no location of this dataset has readable images")

    def _item(self, i: int, views: np.ndarray) -> dict:
        images = torch.from_numpy(views)
        if self.augment is not None:
            images = self.augment(images)
        return {
            "images": images,
            "latlon": torch.tensor(self.latlon[i]),
            "target": torch.tensor(self.targets[i]),
            "class_id": torch.tensor(self.class_ids[i], dtype=torch.int64),
            "uuid": self.uuids[i],
            "index": torch.tensor(i, dtype=torch.int64),
            # The image cache's row (-1 without a cache): the key of cached backbone features.
            "row": torch.tensor(self.rows[i] if self.rows is not None else -1, dtype=torch.int64),
        }

    def collate(self, items: list[dict | None]) -> dict:
        """`default_collate` of the readable items; an all-unreadable batch comes out empty."""
        items = [item for item in items if item is not None]
        if items:
            return default_collate(items)
        s = self.image_size
        return {
            "images": torch.zeros((0, len(HEADINGS), 3, s, s), dtype=torch.uint8),
            "latlon": torch.zeros((0, 2), dtype=torch.float64),
            "target": torch.zeros((0, 2), dtype=torch.float32),
            "class_id": torch.zeros(0, dtype=torch.int64),
            "uuid": [],
            "index": torch.zeros(0, dtype=torch.int64),
            "row": torch.zeros(0, dtype=torch.int64),
        }
