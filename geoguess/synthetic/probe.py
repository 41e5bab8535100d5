"""Shortcut probes: how much of the location a dataset gives away in trivial pixel statistics.

Two probes, both cheap and both blind to shape:

- `pixel_probe`: for each view, the mean and standard deviation of R, G, B and of the
  chromaticities r/(r+g+b), g/(r+g+b), b/(r+g+b) in four horizontal bands of the image resized to
  64 px (192 numbers per location), fed to a ridge regression onto projected coordinates
  (the country's metric CRS), its penalty chosen by 5-fold cross-validation on the training part.
  It is compared with always guessing the training set's mean location.
- `sky_probe`: the chromaticity of the single bluest pixel of each view's top row, the median over
  the four views, regressed linearly onto latitude; its R² (in-sample, so an upper bound).

A dataset that rewards seeing keeps the first near the baseline and the second near zero. Numpy
only (no scikit-learn): ridge through one SVD per fold serves every penalty at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from geoguess.data.io import HEADINGS
from geoguess.data.split import split_by_hash
from geoguess.geo import Country, haversine_km
from geoguess.synthetic.scene import scene_parameters
from geoguess.synthetic.world import build_world

PROBE_SIZE = 64
BANDS = 4
FOLDS = 5
PENALTIES = np.logspace(-2, 5, 29)  # relative to the number of training rows
FOLD_SEED = 0


@dataclass(frozen=True)
class ProbeResult:
    """Mean errors (km) on the evaluated locations and the sky probe's R² on all of them."""

    baseline_km: float
    probe_km: float
    sky_r2: float
    num_train: int
    num_test: int

    @property
    def ratio(self) -> float:
        """Probe error over baseline error: 1 means the pixel statistics give nothing away."""
        return self.probe_km / self.baseline_km

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def load_views(root: str | Path, uuids: Sequence[str], size: int | None = None) -> np.ndarray:
    """(n, 4, H, W, 3) uint8 views of a dataset folder, optionally resized to `size` px."""
    stack = []
    for name in uuids:
        views = []
        for heading in HEADINGS:
            with Image.open(Path(root) / "images" / name / f"{heading}.jpg") as image:
                image = image.convert("RGB")
                if size is not None and image.size != (size, size):
                    image = image.resize((size, size), Image.Resampling.BILINEAR)
                views.append(np.asarray(image))
        stack.append(views)
    return np.asarray(stack, dtype=np.uint8)


def band_features(views: np.ndarray) -> np.ndarray:
    """(n, 4 views * 4 bands * 6 channels * 2 stats) from (n, 4, H, W, 3) views in 0..255."""
    n, count, height = views.shape[:3]
    pixels = views.astype(np.float64) / 255.0
    chroma = pixels / np.maximum(pixels.sum(axis=-1, keepdims=True), 1e-6)
    channels = np.concatenate([pixels, chroma], axis=-1)  # (n, 4, H, W, 6)
    edges = np.linspace(0, height, BANDS + 1).round().astype(int)
    stats = []
    for top, bottom in zip(edges[:-1], edges[1:], strict=True):
        band = channels[:, :, top:bottom]
        stats += [band.mean(axis=(2, 3)), band.std(axis=(2, 3))]
    return np.stack(stats, axis=2).reshape(n, -1)


def sky_features(views: np.ndarray) -> np.ndarray:
    """(n, 3): chromaticity of each view's bluest top-row pixel, median over the views."""
    top = views[:, :, 0].astype(np.float64)  # (n, 4, W, 3)
    chroma = top / np.maximum(top.sum(axis=-1, keepdims=True), 1.0)
    bluest = chroma[..., 2].argmax(axis=-1)  # (n, 4)
    picked = np.take_along_axis(chroma, bluest[..., None, None], axis=2)[:, :, 0]
    return np.median(picked, axis=1)


def r_squared(features: np.ndarray, target: np.ndarray) -> float:
    """In-sample R² of an ordinary least-squares fit with intercept."""
    design = np.column_stack([np.ones(len(features)), features])
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    residual = target - design @ coef
    return float(1.0 - residual.var() / target.var())


def ridge_fit_predict(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, penalties: np.ndarray
) -> np.ndarray:
    """Predictions (len(penalties), n_test, k) of ridge fits on standardised features."""
    mean, scale = train_x.mean(axis=0), train_x.std(axis=0) + 1e-9
    a, b = (train_x - mean) / scale, (test_x - mean) / scale
    offset = train_y.mean(axis=0)
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    projected = u.T @ (train_y - offset)  # (r, k)
    shrink = s[None, :] / (s[None, :] ** 2 + penalties[:, None])  # (p, r)
    weights = np.einsum("rf,pr,rk->pfk", vt, shrink, projected)
    return np.einsum("nf,pfk->pnk", b, weights) + offset


def ridge_cv_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """Ridge with the penalty of least mean Euclidean error in 5-fold CV on the training rows."""
    penalties = PENALTIES * len(train_x)
    folds = np.random.default_rng(FOLD_SEED).permutation(len(train_x)) % FOLDS
    errors = np.zeros(len(penalties))
    for fold in range(FOLDS):
        held = folds == fold
        predicted = ridge_fit_predict(train_x[~held], train_y[~held], train_x[held], penalties)
        errors += np.linalg.norm(predicted - train_y[held], axis=-1).sum(axis=1)
    best = penalties[int(errors.argmin())]
    return ridge_fit_predict(train_x, train_y, test_x, np.array([best]))[0]


def evaluate(
    country: Country,
    lat: np.ndarray,
    lon: np.ndarray,
    features: np.ndarray,
    sky: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
) -> ProbeResult:
    """Fit on the `train` rows, score the `test` rows (boolean masks over the locations)."""
    x, y = country.projector.forward(lat, lon)
    target = np.column_stack([x, y]) / 1000.0
    predicted = ridge_cv_predict(features[train], target[train], features[test])
    guess_lat, guess_lon = country.projector.inverse(predicted[:, 0] * 1000, predicted[:, 1] * 1000)
    mean_lat, mean_lon = country.projector.inverse(*(target[train].mean(axis=0) * 1000))
    probe = haversine_km(guess_lat, guess_lon, lat[test], lon[test])
    ones = np.ones(int(test.sum()))
    baseline = haversine_km(mean_lat * ones, mean_lon * ones, lat[test], lon[test])
    return ProbeResult(
        baseline_km=float(baseline.mean()),
        probe_km=float(probe.mean()),
        sky_r2=r_squared(sky, lat),
        num_train=int(train.sum()),
        num_test=int(test.sum()),
    )


def probe_dataset(
    root: str | Path,
    country: Country | None = None,
    split: Sequence[float] | None = (0.8, 0.1, 0.1),
) -> ProbeResult:
    """Both probes on a dataset folder.

    `split`: the data module's hash split (train on "train", score "test"), so the figures sit
    beside a trained model's; None instead scores every location once, out of fold, over five
    80/20 rotations (more locations scored, so steadier on a small set).
    """
    country = country or Country()
    frame = pd.read_csv(Path(root) / "data.csv", index_col=0)
    uuids = frame["uuid"].astype(str).tolist()
    lat, lon = frame["latitude"].to_numpy(float), frame["longitude"].to_numpy(float)
    views = load_views(root, uuids)
    small = views if views.shape[2] == PROBE_SIZE else _resize(views, PROBE_SIZE)
    features, sky = band_features(small), sky_features(views)
    if split is not None:
        labels = split_by_hash(uuids, split)
        return evaluate(country, lat, lon, features, sky, labels == "train", labels == "test")
    folds = np.random.default_rng(FOLD_SEED + 1).permutation(len(uuids)) % FOLDS
    parts = [
        evaluate(country, lat, lon, features, sky, folds != fold, folds == fold)
        for fold in range(FOLDS)
    ]
    weights = np.array([p.num_test for p in parts], float)
    return ProbeResult(
        baseline_km=float(np.average([p.baseline_km for p in parts], weights=weights)),
        probe_km=float(np.average([p.probe_km for p in parts], weights=weights)),
        sky_r2=parts[0].sky_r2,
        num_train=int(np.mean([p.num_train for p in parts])),
        num_test=len(uuids),
    )


def _resize(views: np.ndarray, size: int) -> np.ndarray:
    flat = views.reshape(-1, *views.shape[2:])
    out = [
        np.asarray(Image.fromarray(v).resize((size, size), Image.Resampling.BILINEAR)) for v in flat
    ]
    return np.asarray(out).reshape(*views.shape[:2], size, size, 3)


def zone_oracle_km(
    root: str | Path, country: Country | None = None, split: Sequence[float] = (0.8, 0.1, 0.1)
) -> float:
    """Mean test error (km) of an oracle that knows each location's likeliest landscape zone and
    guesses the training locations' mean position in that zone: how much location the zone
    cues carry, whatever model reads them (a ceiling for zone recognition alone, not for the
    sea and relief cues)."""
    country = country or Country()
    frame = pd.read_csv(Path(root) / "data.csv", index_col=0)
    lat, lon = frame["latitude"].to_numpy(float), frame["longitude"].to_numpy(float)
    labels = split_by_hash(frame["uuid"].astype(str).tolist(), split)
    train, test = labels == "train", labels == "test"
    zone = scene_parameters(build_world(country), lat, lon)["zones"].argmax(axis=1)
    x, y = country.projector.forward(lat, lon)
    guess_x, guess_y = np.full(len(x), x[train].mean()), np.full(len(y), y[train].mean())
    for value in np.unique(zone[train]):
        known = train & (zone == value)
        guess_x[zone == value], guess_y[zone == value] = x[known].mean(), y[known].mean()
    guess_lat, guess_lon = country.projector.inverse(guess_x, guess_y)
    return float(haversine_km(guess_lat, guess_lon, lat, lon)[test].mean())
