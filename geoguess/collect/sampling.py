"""Where to look for panoramas: points uniform by area in the country, or in its thin classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import shapely
from shapely.geometry.base import BaseGeometry

from geoguess.collect.streetview import CollectError
from geoguess.geo import ClassGrid, Country

# Candidates are drawn in fixed-size batches, so that the first k of n points do not depend
# on n: a larger collect.n with the same seed extends a collection instead of replacing it.
BATCH = 8192
MAX_BATCHES = 10_000
# Cell edges are straight in degrees, curved in metres: densify before projecting.
SEGMENT_DEG = 0.01


def sample_points(
    country: Country, n: int, seed: int, region: BaseGeometry | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`n` points uniform by area in `region` (metres, default the whole country): lat, lon.

    Rejection sampling in the country's projected CRS, where equal areas are equal, unlike
    degrees; deterministic for a seed and prefix-stable in `n`.
    """
    if n <= 0:
        raise CollectError(f"collect.n={n} must be a positive number of points")
    geometry = country.projected_geometry if region is None else region
    if geometry.is_empty or geometry.area <= 0:
        raise CollectError("the sampling region has no area")
    shapely.prepare(geometry)
    x_min, y_min, x_max, y_max = geometry.bounds
    rng = np.random.default_rng(seed)
    lats, lons, found = [], [], 0
    for _ in range(MAX_BATCHES):
        x = rng.uniform(x_min, x_max, BATCH)
        y = rng.uniform(y_min, y_max, BATCH)
        inside = shapely.contains_xy(geometry, x, y)
        lat, lon = country.projector.inverse(x[inside], y[inside])
        # Edges are straight in metres here but in degrees in the boundary everyone else
        # tests against: drop the few points in the sliver between the two.
        keep = country.contains(lat, lon)
        lats.append(lat[keep])
        lons.append(lon[keep])
        found += int(keep.sum())
        if found >= n:
            break
    else:
        raise CollectError("the sampling region is too small a part of its bounding box")
    return np.concatenate(lats)[:n], np.concatenate(lons)[:n]


def read_locations(root: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Latitudes and longitudes of an existing dataset's data.csv."""
    path = Path(root).expanduser() / "data.csv"
    if not path.is_file():
        raise CollectError(f"collect.balance_with={root}: no data.csv in that folder")
    try:
        frame = pd.read_csv(path, usecols=["latitude", "longitude"])
    except ValueError as exc:
        raise CollectError(f"{path} needs latitude and longitude columns ({exc})") from None
    frame = frame.dropna()
    return frame["latitude"].to_numpy(float), frame["longitude"].to_numpy(float)


def thin_cells(grid: ClassGrid, lat: np.ndarray, lon: np.ndarray, below: float | None) -> pd.Series:
    """Per class: True where the existing dataset holds fewer than `below` locations.

    `below=None` means the mean count per class, so new data goes to the below-average cells.
    """
    counts = np.bincount(grid.assign(lat, lon, nearest=True), minlength=grid.num_classes)
    threshold = counts.mean() if below is None else float(below)
    thin = counts < threshold
    if not thin.any():
        raise CollectError(
            f"no class of the grid holds fewer than {threshold:g} locations of the balance "
            "dataset; raise collect.balance_below or use a finer grid.spacing"
        )
    return pd.Series(thin, index=grid.table["class_id"], name="thin")


def balance_region(
    country: Country, grid: ClassGrid, lat: np.ndarray, lon: np.ndarray, below: float | None
) -> tuple[BaseGeometry, int]:
    """The country's land inside thin cells, in projected metres, and the number of thin cells."""
    thin = thin_cells(grid, lat, lon, below).to_numpy()
    cells = shapely.segmentize(grid.cells()[thin], SEGMENT_DEG)
    land = shapely.intersection(shapely.union_all(cells), country.geometry)
    return country.projector.project_geometry(land), int(thin.sum())
