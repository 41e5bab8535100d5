"""Points uniform by area inside a country (or a region of it), prefix-stable in their number."""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from geoguess.errors import GeoguessError
from geoguess.geo.boundary import Country

# Candidates are drawn in fixed-size batches, so that the first k of n points do not depend
# on n: a larger n with the same seed extends a sample instead of replacing it.
BATCH = 8192
MAX_BATCHES = 10_000


class SamplingError(GeoguessError, ValueError):
    """A sample that cannot be drawn: no points asked for, or a region without area."""


def sample_points(
    country: Country, n: int, seed: int, region: BaseGeometry | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`n` points uniform by area in `region` (metres, default the whole country): lat, lon.

    Rejection sampling in the country's projected CRS, where equal areas are equal, unlike
    degrees; deterministic for a seed and prefix-stable in `n`.
    """
    if n <= 0:
        raise SamplingError(f"n={n} must be a positive number of points")
    geometry = country.projected_geometry if region is None else region
    if geometry.is_empty or geometry.area <= 0:
        raise SamplingError("the sampling region has no area")
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
        raise SamplingError("the sampling region is too small a part of its bounding box")
    return np.concatenate(lats)[:n], np.concatenate(lons)[:n]
