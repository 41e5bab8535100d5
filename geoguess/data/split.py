"""Train/val/test splits that stay put as the dataset grows: decided per uuid (or per spatial
block) by a hash, never by shuffling row order.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

import numpy as np
import shapely

from geoguess.data.io import DataError
from geoguess.geo.projection import Projector

SPLITS = ("train", "val", "test")
SPLIT_BY = ("hash", "spatial")
# Blocks this many gaps wide by default: large enough that the buffer dropped around val/test
# blocks costs ~15 % of training locations, small enough that val/test sample many regions.
DEFAULT_BLOCK_GAPS = 5.0
# Projected (Croatia TM) distances differ from great-circle ones by well under 1 %; the buffer
# is widened by this factor so that the haversine gap holds for certain.
GAP_SAFETY = 1.01
DROPPED = "dropped"


def hash_unit(keys: Iterable[str], salt: str) -> np.ndarray:
    """A uniform number in [0, 1) per key, from sha256: reproducible on every machine."""
    values = [
        int.from_bytes(hashlib.sha256(f"{salt}:{key}".encode()).digest()[:8], "big") >> 11
        for key in keys
    ]
    return np.asarray(values, dtype=np.float64) / float(1 << 53)


def check_ratios(split: Sequence[float]) -> tuple[float, float, float]:
    """`data.split` as three non-negative ratios summing to 1, with a non-zero train share."""
    try:
        ratios = tuple(float(r) for r in split)
    except (TypeError, ValueError):
        raise DataError(f"data.split={split!r} must be three numbers, e.g. [0.8,0.1,0.1]") from None
    if len(ratios) != 3 or any(not math.isfinite(r) or r < 0 for r in ratios):
        raise DataError(
            f"data.split={list(split)} must be three non-negative numbers (train,val,test)"
        )
    if not math.isclose(sum(ratios), 1.0, abs_tol=1e-6) or ratios[0] <= 0:
        raise DataError(
            f"data.split={list(ratios)} must sum to 1 with a positive train share, "
            "e.g. [0.8,0.1,0.1] or [0.9,0.05,0.05]"
        )
    return ratios


def _assign(units: np.ndarray, ratios: Sequence[float]) -> np.ndarray:
    edges = np.cumsum(ratios)[:2]
    labels = np.array(SPLITS, dtype=object)[np.searchsorted(edges, units, side="right")]
    return labels


def split_by_hash(uuids: Sequence[str], ratios: Sequence[float]) -> np.ndarray:
    """ "train" / "val" / "test" per uuid: a location keeps its split when rows are added."""
    return _assign(hash_unit(uuids, "split"), ratios)


def split_spatial(
    lat: np.ndarray,
    lon: np.ndarray,
    ratios: Sequence[float],
    gap_km: float,
    block_km: float | None = None,
    crs: str = "EPSG:3765",
) -> np.ndarray:
    """A split with no val/test location within `gap_km` (great-circle) of a training one.

    Square blocks of `block_km` (default 5 x gap) in the projected CRS go to a split by a hash of
    the block, so neighbours share a split; training locations within the gap of a val/test
    location are then labelled "dropped" (the buffer of a blocked split). Dropping from train,
    not from val/test, keeps the val/test shares near the requested ratios.
    """
    gap_km = float(gap_km)
    if not math.isfinite(gap_km) or gap_km < 0:
        raise DataError(f"data.spatial_gap_km={gap_km} must be a non-negative number of km")
    block_km = float(block_km) if block_km else DEFAULT_BLOCK_GAPS * max(gap_km, 1.0)
    if not math.isfinite(block_km) or block_km <= 0:
        raise DataError(f"data.spatial_block_km={block_km} must be a positive number of km")
    x, y = Projector(crs).forward(lat, lon)
    bx = np.floor(x / (block_km * 1000)).astype(np.int64)
    by = np.floor(y / (block_km * 1000)).astype(np.int64)
    labels = _assign(hash_unit((f"{i},{j}" for i, j in zip(bx, by, strict=True)), "block"), ratios)
    train = np.flatnonzero(labels == "train")
    held_out = np.flatnonzero(labels != "train")
    if gap_km > 0 and len(train) and len(held_out):
        tree = shapely.STRtree(shapely.points(x[train], y[train]))
        _, near = tree.query(
            shapely.points(x[held_out], y[held_out]),
            predicate="dwithin",
            distance=gap_km * 1000 * GAP_SAFETY,
        )
        labels[train[np.unique(near)]] = DROPPED
    return labels


def fraction_mask(uuids: Sequence[str], fraction: float) -> np.ndarray:
    """A deterministic subset of about `fraction` of the uuids; smaller fractions are subsets."""
    fraction = float(fraction)
    if not (0 < fraction <= 1):
        raise DataError(f"data.fraction={fraction} must be in (0, 1]")
    if fraction == 1:
        return np.ones(len(uuids), dtype=bool)
    return hash_unit(uuids, "fraction") < fraction
