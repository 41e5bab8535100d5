"""Where to look for panoramas: points uniform by area in the country, or in its thin classes.

The area-uniform sampler itself lives in `geoguess.geo.sampling` (the synthetic world uses it
too); it is re-exported here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import shapely
from shapely.geometry.base import BaseGeometry

from geoguess.collect.streetview import CollectError
from geoguess.geo import ClassGrid, Country
from geoguess.geo.sampling import sample_points

__all__ = ["balance_region", "read_locations", "sample_points", "thin_cells"]

# Cell edges are straight in degrees, curved in metres: densify before projecting.
SEGMENT_DEG = 0.01


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
