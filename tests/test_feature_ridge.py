"""experiments/feature_ridge.py: out-of-fold location error of cached features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from geoguess.geo.distance import haversine_km
from tests.cli import experiment_script


def _cached_features(root: Path, latlon: np.ndarray, x: np.ndarray) -> tuple[Path, np.ndarray]:
    """A set's data.csv and a cache folder holding its features, rows in the index's order."""
    uuids = [f"u{i:04d}" for i in range(len(latlon))]
    table = pd.DataFrame({"uuid": uuids, "latitude": latlon[:, 0], "longitude": latlon[:, 1]})
    table.to_csv(root / "data.csv")
    cache = root / ".geoguess-cache" / "key"
    cache.mkdir(parents=True)
    order = np.random.default_rng(1).permutation(len(uuids))  # the cache's rows, not the CSV's
    (cache / "64px.json").write_text(json.dumps({"uuids": [uuids[i] for i in order]}))
    np.save(cache / "features-abc.npy", x[order].reshape(len(x), 4, -1).astype(np.float32))
    return cache / "features-abc.npy", order


def test_features_that_hold_the_location_score_near_zero_and_noise_near_the_baseline(tmp_path):
    ridge = experiment_script("feature_ridge")
    rng = np.random.default_rng(0)
    latlon = np.column_stack([rng.uniform(42.5, 46.3, 400), rng.uniform(13.6, 19.3, 400)])
    mixing = rng.normal(size=(2, 32))
    informative = latlon @ mixing + 0.001 * rng.normal(size=(400, 32))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path, order = _cached_features(tmp_path / "a", latlon, informative)
    x, truth = ridge.load(path)  # each row's features with its own location
    assert np.array_equal(truth, latlon[order]) and np.allclose(x, informative[order], atol=1e-4)
    assert ridge.ridge_km(x, truth, 1e-3) < 2.0
    noise, truth = ridge.load(
        _cached_features(tmp_path / "b", latlon, rng.normal(size=(400, 32)))[0]
    )
    baseline = haversine_km(*truth.T, *np.broadcast_to(truth.mean(0), truth.shape).T).mean()
    assert ridge.ridge_km(noise, truth, 1e4) > 0.9 * baseline
