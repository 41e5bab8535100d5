"""Splits: disjoint, deterministic, stable as rows are appended; the spatial gap holds."""

from __future__ import annotations

import numpy as np
import pytest

from geoguess.data.io import DataError
from geoguess.data.split import (
    DROPPED,
    check_ratios,
    fraction_mask,
    split_by_hash,
    split_spatial,
)
from geoguess.geo import haversine_km
from tests.data_helpers import croatia_points, make_uuids


def test_hash_split_ratios_and_determinism():
    uuids = make_uuids(5000, seed=0)
    labels = split_by_hash(uuids, (0.8, 0.1, 0.1))
    shares = {name: float(np.mean(labels == name)) for name in ("train", "val", "test")}
    assert shares["train"] == pytest.approx(0.8, abs=0.02)
    assert shares["val"] == pytest.approx(0.1, abs=0.015)
    assert shares["test"] == pytest.approx(0.1, abs=0.015)
    # Row order plays no part: shuffled input gives each uuid the same split.
    order = np.random.default_rng(1).permutation(len(uuids))
    shuffled = split_by_hash([uuids[i] for i in order], (0.8, 0.1, 0.1))
    assert (shuffled == labels[order]).all()


def test_custom_ratios():
    uuids = make_uuids(5000, seed=2)
    labels = split_by_hash(uuids, (0.9, 0.05, 0.05))
    assert np.mean(labels == "train") == pytest.approx(0.9, abs=0.015)
    assert np.mean(labels == "test") == pytest.approx(0.05, abs=0.01)
    assert set(split_by_hash(uuids, (1.0, 0.0, 0.0))) == {"train"}


@pytest.mark.parametrize("bad", [(0.8, 0.1), (0.5, 0.5, 0.5), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)])
def test_bad_ratios_are_refused(bad):
    with pytest.raises(DataError, match="data.split"):
        check_ratios(bad)


def test_split_is_stable_when_rows_are_appended():
    old = make_uuids(1000, seed=3)
    new = old + make_uuids(500, seed=4)
    before = dict(zip(old, split_by_hash(old, (0.8, 0.1, 0.1)), strict=True))
    after = dict(zip(new, split_by_hash(new, (0.8, 0.1, 0.1)), strict=True))
    assert all(after[u] == before[u] for u in old)


def test_fraction_is_a_nested_deterministic_subset():
    uuids = make_uuids(4000, seed=5)
    small, large = fraction_mask(uuids, 0.1), fraction_mask(uuids, 0.3)
    assert small.mean() == pytest.approx(0.1, abs=0.02)
    assert large.mean() == pytest.approx(0.3, abs=0.03)
    assert not (small & ~large).any()
    assert (fraction_mask(uuids, 0.1) == small).all()
    # Independent of the split: every split keeps about the same share.
    labels = split_by_hash(uuids, (0.8, 0.1, 0.1))
    for name in ("train", "val", "test"):
        assert small[labels == name].mean() == pytest.approx(0.1, abs=0.04)


def _min_distance_km(lat_a, lon_a, lat_b, lon_b) -> float:
    """Brute-force nearest great-circle distance between two point sets, in chunks."""
    best = np.inf
    for start in range(0, len(lat_a), 256):
        d = haversine_km(
            lat_a[start : start + 256, None], lon_a[start : start + 256, None], lat_b, lon_b
        )
        best = min(best, float(d.min()))
    return best


@pytest.mark.parametrize("gap_km", [3.0, 10.0])
def test_spatial_split_keeps_the_gap(gap_km):
    lat, lon = croatia_points(3000, seed=6)
    labels = split_spatial(lat, lon, (0.8, 0.1, 0.1), gap_km)
    train = labels == "train"
    held_out = (labels == "val") | (labels == "test")
    assert held_out.sum() > 100 and train.sum() > 1000
    assert _min_distance_km(lat[held_out], lon[held_out], lat[train], lon[train]) >= gap_km
    # Only training locations are dropped, and only those near held-out ones.
    dropped = labels == DROPPED
    assert dropped.any()
    assert (
        _min_distance_km(lat[dropped], lon[dropped], lat[held_out], lon[held_out]) < gap_km * 1.02
    )
    # The hash split by contrast puts val/test locations right next to training ones.
    hashed = split_by_hash(make_uuids(3000, seed=6), (0.8, 0.1, 0.1))
    assert (
        _min_distance_km(
            lat[hashed != "train"],
            lon[hashed != "train"],
            lat[hashed == "train"],
            lon[hashed == "train"],
        )
        < gap_km
    )


def test_spatial_split_is_deterministic_and_disjoint():
    lat, lon = croatia_points(800, seed=7)
    first = split_spatial(lat, lon, (0.8, 0.1, 0.1), 10)
    order = np.random.default_rng(0).permutation(len(lat))
    again = split_spatial(lat[order], lon[order], (0.8, 0.1, 0.1), 10)
    assert (again == first[order]).all()
    assert set(first) <= {"train", "val", "test", DROPPED}


def test_spatial_split_refuses_a_negative_gap():
    lat, lon = croatia_points(10, seed=8)
    with pytest.raises(DataError, match="spatial_gap_km"):
        split_spatial(lat, lon, (0.8, 0.1, 0.1), -1)
