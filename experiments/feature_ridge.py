"""How well cached frozen-backbone features locate every location of a set, split-free.

A ridge regression of latitude and longitude on the four views' features side by side
(standardised on the training folds), scored out of fold over 5 folds of all the set's locations:
a check of a rendering or a backbone that does not hang on one test split of 189 locations.

    python experiments/feature_ridge.py DATA_ROOT/.geoguess-cache/KEY/features-*.npy ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from geoguess.errors import GeoguessError
from geoguess.geo.distance import haversine_km
from geoguess.models.feature_cache import feature_file_locations

FOLDS = 5


def load(features: Path) -> tuple[np.ndarray, np.ndarray]:
    """`[N, 4 * F]` features and `[N, 2]` latitude, longitude, in the image cache's row order."""
    table = feature_file_locations(features)
    x = np.load(features).reshape(len(table), -1).astype(np.float64)
    return x, table[["latitude", "longitude"]].to_numpy()


def ridge_km(x: np.ndarray, latlon: np.ndarray, lam: float) -> float:
    """Mean out-of-fold error (km) of a ridge regression (dual form: fewer rows than features)."""
    fold = np.arange(len(x)) % FOLDS
    errors = np.zeros(len(x))
    for k in range(FOLDS):
        train = fold != k
        mean, std = x[train].mean(0), x[train].std(0) + 1e-6
        a, b = (x[train] - mean) / std, (x[~train] - mean) / std
        centre = latlon[train].mean(0)
        alpha = np.linalg.solve(a @ a.T + lam * np.eye(len(a)), latlon[train] - centre)
        guess = b @ a.T @ alpha + centre
        errors[~train] = haversine_km(*latlon[~train].T, *guess.T)
    return float(errors.mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features", type=Path, nargs="+", help="cached features-*.npy files")
    parser.add_argument("--lam", type=float, nargs="+", default=[1e2, 1e3, 1e4])
    args = parser.parse_args(argv)
    for path in args.features:
        x, latlon = load(path)
        scores = ", ".join(f"λ {lam:g}: {ridge_km(x, latlon, lam):.2f} km" for lam in args.lam)
        print(f"{path.parent.parent.parent.name} {path.name}: {scores}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except GeoguessError as exc:
        raise SystemExit(f"error: {exc}") from None
