"""Per-channel mean and std of the training images (the original's normalisation), in 0..1 units.

Computed once per training split from the image cache (or by decoding, without a cache) and
kept beside the cache under the dataset key and a hash of the training uuids, so a change to
the data or to the split recomputes them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from geoguess.utils.io import write_json_atomic

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZE = ("dataset", "imagenet")
# Locations summed per step: bounds the temporaries to ~chunk x 4 x 3 x S x S x 2 bytes.
CHUNK = 64


class ChannelMoments:
    """Running per-channel sums of uint8 views and of their squares, exact in integers.

    uint8 values and their squares (at most 255^2, a uint16) are summed into uint64 without a
    float copy of the pixels: exact for any dataset size (up to ~2^64 / 255^2 values per
    channel), and the mean and std are those a float64 sum gives.
    """

    def __init__(self) -> None:
        self.count = 0
        self.total = np.zeros(3, dtype=np.uint64)
        self.total_sq = np.zeros(3, dtype=np.uint64)

    def add(self, images: np.ndarray) -> None:
        """`images`: uint8 `[..., 3, H, W]`."""
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise TypeError(f"channel moments need uint8 images, not {images.dtype}")
        values = images.reshape(-1, 3, images.shape[-2] * images.shape[-1])
        self.count += values.shape[0] * values.shape[2]
        self.total += values.sum(axis=(0, 2), dtype=np.uint64)
        squares = np.square(values, dtype=np.uint16)
        self.total_sq += squares.sum(axis=(0, 2), dtype=np.uint64)

    def result(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.count == 0:
            raise ValueError("no training images to compute statistics from")
        mean = self.total.astype(np.float64) / self.count
        var = np.maximum(self.total_sq.astype(np.float64) / self.count - mean**2, 0.0)
        # A constant channel (synthetic data) would divide by zero when normalising.
        std = np.maximum(np.sqrt(var), 1.0)
        return tuple(float(v) for v in mean / 255.0), tuple(float(v) for v in std / 255.0)


def stats_from_memmap(array: np.ndarray, rows: Sequence[int]) -> tuple[tuple, tuple]:
    """Mean and std of the locations `rows` of a cache array, in sorted chunks (sequential reads)."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    moments = ChannelMoments()
    for start in range(0, len(rows), CHUNK):
        moments.add(np.asarray(array[rows[start : start + CHUNK]]))
    return moments.result()


def stats_from_loader(load: Callable[[int], np.ndarray | None], indices: Iterable[int]):
    """Mean and std over `load(i)` (uint8 views, None when unreadable) for each index."""
    moments = ChannelMoments()
    for i in indices:
        views = load(i)
        if views is not None:
            moments.add(views)
    return moments.result()


def cached_stats(path: Path, compute: Callable[[], tuple[tuple, tuple]]) -> tuple[tuple, tuple]:
    """The statistics stored in `path`, computed and stored first when absent."""
    try:
        data = json.loads(Path(path).read_text())
        return tuple(data["mean"]), tuple(data["std"])
    except (OSError, ValueError, KeyError):
        pass
    log.info("computing image statistics over the training split")
    mean, std = compute()
    try:
        write_json_atomic(path, {"mean": mean, "std": std}, overwrite=True)
    except OSError as exc:  # a read-only cache folder only costs a recomputation next time
        log.warning("could not store image statistics in %s: %s", path, exc)
    return mean, std
