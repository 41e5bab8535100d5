"""Scores of predicted locations: great-circle errors in km and what is reported from them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from geoguess.geo import Projector, haversine_km

ACCURACY_KM = (1, 25, 100)
# GeoGuessr's score for one guess: 5000 at 0 km, decaying with the map's size.
GEOGUESSR_MAX = 5000.0


def error_stats(errors_km: np.ndarray) -> dict[str, float]:
    """Mean (`haversine_km`), median and `acc_<k>km` (share within k km) of the errors."""
    errors = np.asarray(errors_km, dtype=np.float64)
    if errors.size == 0:
        raise ValueError("no errors to summarise")
    stats = {"haversine_km": float(errors.mean()), "median_km": float(np.median(errors))}
    for k in ACCURACY_KM:
        stats[f"acc_{k}km"] = float((errors <= k).mean())
    return stats


def geoguessr_score(errors_km: np.ndarray, diagonal_km: float) -> float:
    """Mean of `5000 * exp(-10 * d / D)`, D the diagonal of the country's bounding box in km."""
    errors = np.asarray(errors_km, dtype=np.float64)
    return float(np.mean(GEOGUESSR_MAX * np.exp(-10.0 * errors / float(diagonal_km))))


def prediction_frame(uuids, lat, lon, true_lat, true_lon) -> pd.DataFrame:
    """The `predictions_test.csv` table: one row per location with its error in km."""
    return pd.DataFrame(
        {
            "uuid": list(uuids),
            "latitude": np.asarray(lat, dtype=np.float64),
            "longitude": np.asarray(lon, dtype=np.float64),
            "true_latitude": np.asarray(true_lat, dtype=np.float64),
            "true_longitude": np.asarray(true_lon, dtype=np.float64),
            "error_km": haversine_km(lat, lon, true_lat, true_lon),
        }
    )


def mean_location(lat, lon, crs: str = "EPSG:3765") -> tuple[float, float]:
    """The centre of mass of locations, averaged in the metric CRS (not in degrees)."""
    projector = Projector(crs)
    x, y = projector.forward(lat, lon)
    mlat, mlon = projector.inverse(x.mean(), y.mean())
    return float(mlat), float(mlon)


def baseline_errors(train_lat, train_lon, lat, lon, crs: str = "EPSG:3765") -> np.ndarray:
    """Errors (km) of always guessing the training set's mean location."""
    mlat, mlon = mean_location(train_lat, train_lon, crs)
    lat = np.asarray(lat, dtype=np.float64)
    return haversine_km(np.full_like(lat, mlat), np.full_like(lat, mlon), lat, lon)
