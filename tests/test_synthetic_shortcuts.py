"""Shortcut guard: trivial pixel statistics must not locate the synthetic views.

The probes (`geoguess.synthetic.probe`) are the ones of issue 10. On the v1 generator,
400 locations at 64 px gave a pixel-statistics probe at 0.41-0.43x the mean-location baseline
and a sky-pixel R² of 0.91-0.93: both tests below failed there.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geoguess.data.split import split_by_hash
from geoguess.geo import Country
from geoguess.metrics import baseline_errors
from geoguess.synthetic import generate
from geoguess.synthetic.probe import (
    PROBE_SIZE,
    band_features,
    probe_dataset,
    r_squared,
    ridge_cv_predict,
    ridge_fit_predict,
    sky_features,
    zone_oracle_km,
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2") / "data"
    return generate(
        root,
        num_locations=400,
        seed=11,
        image_size=128,
        workers=2,
        country=Country(),
        progress=False,
    )


@pytest.fixture(scope="module")
def probed(generated):
    """Both probes on 400 generated locations at the default 128 px (resized to 64 for the
    pixel statistics), every location scored out of fold."""
    result = probe_dataset(generated, split=None)
    print(
        f"pixel probe {result.probe_km:.1f} km, mean baseline {result.baseline_km:.1f} km "
        f"({result.ratio:.2f}x); sky-pixel R² {result.sky_r2:.3f}"
    )
    return result


@pytest.mark.slow
def test_pixel_statistics_stay_near_the_mean_baseline(probed):
    assert probed.num_test == 400
    assert probed.probe_km >= 0.75 * probed.baseline_km


@pytest.mark.slow
def test_sky_colour_does_not_predict_latitude(probed):
    assert probed.sky_r2 < 0.2


@pytest.mark.slow
def test_the_landscape_zones_still_carry_the_location(generated):
    """What colour no longer gives away is in the zones' shapes: knowing the zone locates a
    view far better than the mean (about 0.25x the baseline on the default set)."""
    frame = pd.read_csv(generated / "data.csv")
    part = split_by_hash(frame["uuid"].tolist(), (0.5, 0.0, 0.5))
    train, test = frame[part == "train"], frame[part == "test"]
    baseline = baseline_errors(
        train.latitude, train.longitude, test.latitude, test.longitude
    ).mean()
    assert zone_oracle_km(generated, split=(0.5, 0.0, 0.5)) < 0.5 * baseline


# The probe itself, against independent computations and on data where colour is a map.


def test_band_features_match_a_direct_computation():
    rng = np.random.default_rng(0)
    views = rng.integers(0, 256, (3, 4, 8, 8, 3), dtype=np.uint8)
    features = band_features(views).reshape(3, 4, 4, 2, 6)  # view, band, stat, channel
    pixels = views[1, 2, 4:6].astype(float).reshape(-1, 3) / 255  # view 2, band 2 (rows 4-5)
    chroma = pixels / pixels.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(features[1, 2, 2, 0, :3], pixels.mean(axis=0))
    np.testing.assert_allclose(features[1, 2, 2, 1, 3:], chroma.std(axis=0))
    assert band_features(views).shape == (3, 4 * 4 * 2 * 6)


def test_sky_features_pick_the_bluest_top_pixel():
    views = np.full((1, 4, 4, 4, 3), 100, np.uint8)
    views[0, :, 0, 2] = (50, 50, 150)  # the bluest pixel of every view's top row
    views[0, :, 1, 1] = (0, 0, 255)  # bluer, but not in the top row
    np.testing.assert_allclose(sky_features(views), [[0.2, 0.2, 0.6]])


def test_ridge_matches_the_closed_form():
    rng = np.random.default_rng(1)
    x, y, test = rng.normal(size=(40, 5)), rng.normal(size=(40, 2)), rng.normal(size=(7, 5))
    mean, scale = x.mean(axis=0), x.std(axis=0)
    a = (x - mean) / scale
    weights = np.linalg.solve(a.T @ a + 3.0 * np.eye(5), a.T @ (y - y.mean(axis=0)))
    expected = (test - mean) / scale @ weights + y.mean(axis=0)
    np.testing.assert_allclose(ridge_fit_predict(x, y, test, np.array([3.0]))[0], expected)
    # A noiseless linear target: cross-validation picks a small penalty and recovers it.
    truth = x @ rng.normal(size=(5, 2))
    np.testing.assert_allclose(ridge_cv_predict(x, truth, test), test @ np.linalg.lstsq(
        np.column_stack([x, np.ones(40)]), truth, rcond=None)[0][:5], atol=0.05)  # fmt: skip
    assert r_squared(x[:, :1], 2 * x[:, 0] + 1) == pytest.approx(1.0)


def test_the_probes_find_colour_that_is_a_map(tmp_path):
    """Their teeth: views whose sky tint follows latitude and whose ground follows longitude."""
    country = Country()
    rng = np.random.default_rng(2)
    lat, lon = rng.uniform(44.6, 45.9, 150), rng.uniform(15.0, 18.5, 150)
    (tmp_path / "images").mkdir()
    uuids = [f"loc{i}" for i in range(150)]
    for name, la, lo in zip(uuids, lat, lon, strict=True):
        (tmp_path / "images" / name).mkdir()
        north, east = (la - 44.6) / 1.3, (lo - 15.0) / 3.5
        view = np.empty((PROBE_SIZE, PROBE_SIZE, 3))
        view[:32] = (80 + 60 * north, 130, 210)
        view[32:] = (90 + 80 * east, 120, 60)
        view += rng.normal(0, 6, view.shape)
        for heading in (0, 90, 180, 270):
            image = Image.fromarray(np.clip(view, 0, 255).astype(np.uint8))
            image.save(tmp_path / "images" / name / f"{heading}.jpg", quality=90)
    frame = pd.DataFrame({"uuid": uuids, "latitude": lat, "longitude": lon})
    frame.to_csv(tmp_path / "data.csv")
    result = probe_dataset(tmp_path, country, split=None)
    assert result.ratio < 0.5 and result.sky_r2 > 0.8
