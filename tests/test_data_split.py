"""Splits: disjoint, deterministic, stable as rows are appended; the spatial gap holds."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from geoguess.data.io import DataError
from geoguess.data.split import (
    DROPPED,
    SHARE_TOLERANCE,
    check_ratios,
    fraction_mask,
    plan_spatial,
    share_miss,
    split_by_hash,
    split_spatial,
)
from geoguess.geo import haversine_km
from geoguess.geo.projection import Projector
from tests.data_helpers import croatia, croatia_points, make_uuids


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


# -- block size chosen from the data (data.spatial_block_km=auto) ------------------------------


def _jittered(lat, lon, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` locations: the given ones, then copies of them moved by a few km (a neighbouring
    panorama of the same road), like a denser collection of the same region."""
    rng = np.random.default_rng(seed)
    pick = np.arange(n) % len(lat)
    moved = np.arange(n) >= len(lat)
    return (
        lat[pick] + moved * rng.normal(0, 0.02, n),
        lon[pick] + moved * rng.normal(0, 0.03, n),
    )


def _clustered_croatia(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A real collection's spread without the real sample: towns (cluster centres anywhere in
    the country) with locations a few km around each."""
    centres_lat, centres_lon = croatia_points(n // 4, seed=seed)
    return _jittered(centres_lat, centres_lon, n, seed)


def _shares(labels) -> dict[str, float]:
    return {name: float(np.mean(labels == name)) for name in ("train", "val", "test")}


def _assert_within_tolerance(labels, ratios=(0.8, 0.1, 0.1)):
    for (name, share), ratio in zip(_shares(labels).items(), ratios, strict=True):
        assert abs(share - ratio) <= SHARE_TOLERANCE * ratio + 1e-9, (name, share)


def _check_auto_mends_fixed_blocks(lat, lon):
    fixed = split_spatial(lat, lon, (0.8, 0.1, 0.1), 10, 50)
    # The old default, 50 km blocks: a few dozen blocks dealt by hash, so a 10 % split gets
    # one or two blocks' worth, far from its share.
    assert share_miss(fixed, (0.8, 0.1, 0.1)) > SHARE_TOLERANCE
    plan = plan_spatial(lat, lon, (0.8, 0.1, 0.1), 10, "auto")
    assert plan.auto and plan.within_tolerance
    _assert_within_tolerance(plan.labels)
    assert (split_spatial(lat, lon, (0.8, 0.1, 0.1), 10, None) == plan.labels).all()
    # The gap still holds with the chosen blocks.
    train, held = plan.labels == "train", np.isin(plan.labels, ["val", "test"])
    assert _min_distance_km(lat[held], lon[held], lat[train], lon[train]) >= 10
    return fixed, plan


def test_auto_blocks_fit_the_real_samples_spread(real_sample):
    frame = pd.read_csv(real_sample / "data.csv")
    lat, lon = _jittered(frame["latitude"].to_numpy(), frame["longitude"].to_numpy(), 200, 0)
    _check_auto_mends_fixed_blocks(lat, lon)


def test_auto_blocks_fit_a_clustered_spread():
    lat, lon = _clustered_croatia(200, seed=11)
    fixed, plan = _check_auto_mends_fixed_blocks(lat, lon)
    # Deterministic: the same locations in another order get the same splits.
    order = np.random.default_rng(3).permutation(len(lat))
    again = plan_spatial(lat[order], lon[order], (0.8, 0.1, 0.1), 10, "auto")
    assert again.block_km == plan.block_km and (again.labels == plan.labels[order]).all()


def test_auto_blocks_hold_other_ratios():
    lat, lon = croatia_points(2000, seed=12)
    plan = plan_spatial(lat, lon, (0.6, 0.2, 0.2), 5, None)
    assert plan.within_tolerance
    _assert_within_tolerance(plan.labels, (0.6, 0.2, 0.2))


def test_a_given_block_size_is_used_as_given():
    lat, lon = croatia_points(1500, seed=13)
    plan = plan_spatial(lat, lon, (0.8, 0.1, 0.1), 0, 30)
    assert not plan.auto and plan.block_km == 30
    # Every 30 km square of the projected plane lies wholly in one split.
    x, y = Projector(croatia().crs).forward(lat, lon)
    blocks = pd.Series(plan.labels).groupby([np.floor(x / 30e3), np.floor(y / 30e3)]).nunique()
    assert len(blocks) > 20 and (blocks == 1).all()
    assert (split_spatial(lat, lon, (0.8, 0.1, 0.1), 0, 30.0) == plan.labels).all()


def test_auto_blocks_say_in_one_line_when_no_size_fits(caplog):
    lat, lon = croatia_points(7, seed=14)  # 1 of 7 is 14 %, beyond a 10 % split's 8-12 %
    with caplog.at_level(logging.WARNING, logger="geoguess.data.split"):
        labels = split_spatial(lat, lon, (0.8, 0.1, 0.1), 10, "auto")
    assert set(labels) <= {"train", "val", "test", DROPPED}
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "\n" not in warning
    assert "on these 7 locations" in warning and "data.split_by=hash" in warning


@pytest.mark.parametrize("bad", ["big", -5, float("inf")])
def test_a_bad_block_size_is_refused(bad):
    lat, lon = croatia_points(10, seed=8)
    with pytest.raises(DataError, match="data.spatial_block_km"):
        split_spatial(lat, lon, (0.8, 0.1, 0.1), 10, bad)
