"""Train/val/test splits that stay put as the dataset grows: decided per uuid (or per spatial
block) by a hash, never by shuffling row order.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from geoguess.data.io import DataError
from geoguess.geo.projection import Projector

SPLITS = ("train", "val", "test")
SPLIT_BY = ("hash", "spatial")
# `data.spatial_block_km` that lets the data choose the block size (null means the same).
AUTO = "auto"
# The largest block tried is this many gaps wide: large enough that the buffer dropped around
# val/test blocks leaves most training locations, small enough that val/test sample many regions.
DEFAULT_BLOCK_GAPS = 5.0
# Auto blocks: every split's share (dropped locations counted in the total) within this
# fraction of its ratio; a 10 % split holds 8-12 %, an 80 % train split 64-96 %.
SHARE_TOLERANCE = 0.2
# Each block size is tried with these many fixed salts of the block hash (deterministic: the
# same data always gets the same split), then shrunk by AUTO_SHRINK, down to 1/AUTO_RANGE of
# the largest size.
AUTO_SALTS = 8
AUTO_SHRINK = 0.85
AUTO_RANGE = 20.0
# Projected (Croatia TM) distances differ from great-circle ones by well under 1 %; the buffer
# is widened by this factor so that the haversine gap holds for certain.
GAP_SAFETY = 1.01
DROPPED = "dropped"
log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class SpatialSplit:
    """A spatial split: its labels and how its blocks were chosen."""

    labels: np.ndarray
    block_km: float
    salt: str
    # Whether every split holds its share within SHARE_TOLERANCE (always True for fixed blocks,
    # which are not checked).
    within_tolerance: bool
    auto: bool

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == name).sum()) for name in (*SPLITS, DROPPED)}

    def describe(self) -> str:
        c = self.counts()
        how = "chosen from the data" if self.auto else "data.spatial_block_km"
        return (
            f"spatial split: blocks of {self.block_km:.3g} km ({how}): {c['train']} train / "
            f"{c['val']} val / {c['test']} test, {c[DROPPED]} training locations dropped "
            "within the gap"
        )


def split_spatial(
    lat: np.ndarray,
    lon: np.ndarray,
    ratios: Sequence[float],
    gap_km: float,
    block_km: float | str | None = None,
    crs: str = "EPSG:3765",
) -> np.ndarray:
    """A split with no val/test location within `gap_km` (great-circle) of a training one:
    the labels of `plan_spatial`, whose choice is logged."""
    plan = plan_spatial(lat, lon, ratios, gap_km, block_km, crs)
    log.info("%s", plan.describe())
    if not plan.within_tolerance:
        log.warning("%s", auto_miss_message(plan, ratios, gap_km))
    return plan.labels


def plan_spatial(
    lat: np.ndarray,
    lon: np.ndarray,
    ratios: Sequence[float],
    gap_km: float,
    block_km: float | str | None = None,
    crs: str = "EPSG:3765",
) -> SpatialSplit:
    """Square blocks in the projected CRS go to a split by a hash of the block, so neighbours
    share a split; training locations within the gap of a val/test location are then labelled
    "dropped" (the buffer of a blocked split). Dropping from train, not from val/test, keeps
    the val/test shares near the requested ratios.

    `block_km` null or "auto": the largest blocks (from DEFAULT_BLOCK_GAPS x the gap down) with
    which every split holds its share within SHARE_TOLERANCE; when none does, the closest.
    A number: blocks of that side, as given.
    """
    gap_km = float(gap_km)
    if not math.isfinite(gap_km) or gap_km < 0:
        raise DataError(f"data.spatial_gap_km={gap_km} must be a non-negative number of km")
    x, y = Projector(crs).forward(lat, lon)
    fixed = _fixed_block_km(block_km)
    if fixed is not None:
        labels = _drop_buffer(x, y, _block_labels(x, y, ratios, fixed, "block"), gap_km)
        return SpatialSplit(labels, fixed, "block", within_tolerance=True, auto=False)
    closest: tuple[float, SpatialSplit] | None = None
    for size in auto_block_sizes(gap_km):
        for k in range(AUTO_SALTS):
            salt = "block" if k == 0 else f"block{k}"
            labels = _block_labels(x, y, ratios, size, salt)
            # The buffer only takes from train: val/test shares are final before it, and a
            # miss there cannot be mended by it (the costly part) nor beat the closest so far.
            held_miss = share_miss(labels, ratios, SPLITS[1:])
            if closest is not None and held_miss >= min(closest[0], SHARE_TOLERANCE + 1e-12):
                continue
            labels = _drop_buffer(x, y, labels, gap_km)
            miss = share_miss(labels, ratios)
            if miss <= SHARE_TOLERANCE:
                return SpatialSplit(labels, size, salt, within_tolerance=True, auto=True)
            if closest is None or miss < closest[0]:
                closest = (miss, SpatialSplit(labels, size, salt, False, auto=True))
    return closest[1]


def auto_block_sizes(gap_km: float) -> list[float]:
    """The block sides tried by `data.spatial_block_km=auto`, largest first."""
    largest = DEFAULT_BLOCK_GAPS * max(gap_km, 1.0)
    sizes = [largest]
    while sizes[-1] * AUTO_SHRINK >= largest / AUTO_RANGE:
        sizes.append(sizes[-1] * AUTO_SHRINK)
    return sizes


def share_miss(labels: np.ndarray, ratios: Sequence[float], names: Sequence[str] = SPLITS) -> float:
    """The largest relative miss of a split's share (of all locations, dropped included) from
    its ratio, over the splits `names`; splits with a zero ratio are not counted."""
    n = max(len(labels), 1)
    return max(
        (
            abs(float(np.sum(labels == name)) / n - ratio) / ratio
            for name, ratio in zip(SPLITS, ratios, strict=True)
            if ratio > 0 and name in names
        ),
        default=0.0,
    )


def auto_miss_message(plan: SpatialSplit, ratios: Sequence[float], gap_km: float) -> str:
    """One line: why no block size fits, what was used instead, and the fix."""
    sizes = auto_block_sizes(gap_km)
    c = plan.counts()
    return (
        f"data.spatial_block_km=auto: no block size from {sizes[0]:.3g} to {sizes[-1]:.2g} km "
        f"gives every split its share of {[round(r, 3) for r in ratios]} within "
        f"{SHARE_TOLERANCE:.0%} on these {len(plan.labels)} locations (too few, or too "
        f"clustered); using the closest, {plan.block_km:.3g} km: {c['train']} train / "
        f"{c['val']} val / {c['test']} test, {c[DROPPED]} dropped. Fix: more locations, a "
        "smaller data.spatial_gap_km, or data.split_by=hash (no spatial gap)"
    )


def _fixed_block_km(block_km: float | str | None) -> float | None:
    """The given block side in km, or None for auto."""
    if block_km is None or (isinstance(block_km, str) and block_km.strip().lower() == AUTO):
        return None
    try:
        value = float(block_km)
    except (TypeError, ValueError):
        raise DataError(
            f"data.spatial_block_km={block_km!r} must be a positive number of km or auto"
        ) from None
    if value == 0:  # the old spelling of "the default"
        return None
    if not math.isfinite(value) or value < 0:
        raise DataError(f"data.spatial_block_km={value} must be a positive number of km or auto")
    return value


def _block_labels(
    x: np.ndarray, y: np.ndarray, ratios: Sequence[float], block_km: float, salt: str
) -> np.ndarray:
    """Each location's split, by a hash of its block (every location of a block alike)."""
    bx = np.floor(x / (block_km * 1000)).astype(np.int64)
    by = np.floor(y / (block_km * 1000)).astype(np.int64)
    # One 64-bit key per block (block indices are far below 2**31 in any projected CRS), so
    # that each block is hashed once.
    keys, inverse = np.unique((bx << 32) + (by & 0xFFFFFFFF), return_inverse=True)
    units = hash_unit(
        (f"{k >> 32},{(k & 0xFFFFFFFF) - ((k & 0x80000000) << 1)}" for k in keys), salt
    )
    return _assign(units[inverse.ravel()] if len(keys) else np.zeros(0), ratios)


def _drop_buffer(x: np.ndarray, y: np.ndarray, labels: np.ndarray, gap_km: float) -> np.ndarray:
    """`labels` with every training location within the gap of a val/test one "dropped"."""
    train = np.flatnonzero(labels == "train")
    held_out = np.flatnonzero(labels != "train")
    if gap_km > 0 and len(train) and len(held_out):
        # The nearest held-out location of each training one: one answer per location, where a
        # query of all pairs within the gap grows with the density squared.
        tree = cKDTree(np.column_stack([x[held_out], y[held_out]]))
        reach = np.nextafter(gap_km * 1000 * GAP_SAFETY, np.inf)  # within: distance <= reach
        distance, _ = tree.query(
            np.column_stack([x[train], y[train]]), k=1, distance_upper_bound=reach
        )
        labels = labels.copy()
        labels[train[np.isfinite(distance)]] = DROPPED
    return labels


def fraction_mask(uuids: Sequence[str], fraction: float) -> np.ndarray:
    """A deterministic subset of about `fraction` of the uuids; smaller fractions are subsets."""
    fraction = float(fraction)
    if not (0 < fraction <= 1):
        raise DataError(f"data.fraction={fraction} must be in (0, 1]")
    if fraction == 1:
        return np.ones(len(uuids), dtype=bool)
    return hash_unit(uuids, "fraction") < fraction
