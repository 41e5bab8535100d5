"""The square class grid: cells of `spacing` degrees over the country, one class per cell on land.

Anchored at the south-west corner of the boundary's bounds. A cell's prediction point is its
centroid, clipped onto the land inside the cell when the centroid lies at sea or abroad, so
that predictions never sail away; cells without training locations can be dropped. It provides
`geoguess.geo.geocells.Geocells`, as the adaptive and region cells do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
import shapely

from geoguess.geo.boundary import Country
from geoguess.geo.geocells import (
    DEFAULT_KIND,
    MAX_CELLS,
    Geocells,
    GridError,
    clip_onto_land,
    grid_from_dict,
    with_training_locations,
)
from geoguess.geo.projection import check_latlon


@dataclass
class ClassGrid(Geocells, kinds=(DEFAULT_KIND,)):
    """Classes of a square grid. `table` holds one row per class, ordered by `class_id`."""

    kind: ClassVar[str] = DEFAULT_KIND

    spacing: float
    origin_lon: float
    origin_lat: float
    n_rows: int
    n_cols: int
    table: pd.DataFrame
    crs: str = "EPSG:3765"
    _projector: object = field(default=None, repr=False, compare=False)

    @property
    def description(self) -> str:
        return f"grid.spacing={self.spacing:g}°"

    def cell_index(self, lat, lon) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) of the grid cell containing each point; may fall outside the grid."""
        lat, lon = check_latlon(lat, lon, "points to assign")
        row = np.floor((lat - self.origin_lat) / self.spacing).astype(np.int64)
        col = np.floor((lon - self.origin_lon) / self.spacing).astype(np.int64)
        # Points exactly on the far edge of the bounds belong to the last cell.
        row[
            (row == self.n_rows) & np.isclose(lat, self.origin_lat + self.n_rows * self.spacing)
        ] -= 1
        col[
            (col == self.n_cols) & np.isclose(lon, self.origin_lon + self.n_cols * self.spacing)
        ] -= 1
        return row, col

    def assign(self, lat, lon, nearest: bool = True) -> np.ndarray:
        """Class id of each point: arithmetic on the regular grid, no loop over points.

        A point whose cell is not a class (slightly abroad or at sea, or in a dropped empty
        cell) gets the class whose cell is nearest in metres when `nearest`, else -1.
        """
        row, col = self.cell_index(lat, lon)
        lookup = np.full(self.n_rows * self.n_cols, -1, dtype=np.int64)
        lookup[self.table["row"].to_numpy() * self.n_cols + self.table["col"].to_numpy()] = (
            self.table["class_id"].to_numpy()
        )
        inside = (row >= 0) & (row < self.n_rows) & (col >= 0) & (col < self.n_cols)
        classes = np.full(row.shape, -1, dtype=np.int64)
        classes[inside] = lookup[row[inside] * self.n_cols + col[inside]]
        missing = classes == -1
        if nearest and missing.any():
            classes[missing] = self._nearest_class(
                np.asarray(lat)[missing], np.asarray(lon)[missing]
            )
        return classes

    def cells(self) -> np.ndarray:
        """Square cell polygons (lon/lat degrees), one per class."""
        return _cell_boxes(
            self.origin_lon, self.origin_lat, self.spacing, self.table["row"], self.table["col"]
        )

    def to_dict(self) -> dict:
        """Plain data for checkpoints; `from_dict` restores the exact grid."""
        return {
            "kind": self.kind,
            "spacing": self.spacing,
            "origin_lon": self.origin_lon,
            "origin_lat": self.origin_lat,
            "n_rows": self.n_rows,
            "n_cols": self.n_cols,
            "crs": self.crs,
            "table": self.table.to_dict(orient="list"),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Geocells:
        """The saved grid; another kind than square is restored by `grid_from_dict`."""
        if data.get("kind", cls.kind) != cls.kind:
            return grid_from_dict(data)
        fields = {k: v for k, v in data.items() if k not in ("table", "kind")}
        return cls(table=pd.DataFrame(data["table"]), **fields)


def _cell_boxes(origin_lon, origin_lat, spacing, rows, cols) -> np.ndarray:
    rows, cols = np.asarray(rows), np.asarray(cols)
    x0 = origin_lon + cols * spacing
    y0 = origin_lat + rows * spacing
    return shapely.box(x0, y0, x0 + spacing, y0 + spacing)


def build_grid(
    country: Country,
    spacing: float,
    train_lat=None,
    train_lon=None,
    *,
    drop_empty: bool,
) -> ClassGrid:
    """Square grid over `country`; cells without land dropped; centroids clipped onto land.

    With training coordinates, also each class's mean training location and, when
    `drop_empty`, only the classes holding a training location, re-indexed densely.
    """
    spacing = _check_spacing(spacing)
    lon0, lat0, lon1, lat1 = country.bounds
    n_cols = max(1, math.ceil((lon1 - lon0) / spacing - 1e-9))
    n_rows = max(1, math.ceil((lat1 - lat0) / spacing - 1e-9))
    if n_rows * n_cols > MAX_CELLS:
        raise GridError(
            f"grid.spacing={spacing} gives {n_rows * n_cols} cells; use a larger spacing"
        )
    rows, cols = np.divmod(np.arange(n_rows * n_cols), n_cols)
    boxes = _cell_boxes(lon0, lat0, spacing, rows, cols)
    land = shapely.intersection(boxes, country.geometry)
    on_land = shapely.area(land) > 0
    if not on_land.any():
        raise GridError(f"grid.spacing={spacing} leaves no cell that intersects {country.name}")
    rows, cols, boxes, land = rows[on_land], cols[on_land], boxes[on_land], land[on_land]
    table = _class_table(country, rows, cols, boxes, land)
    grid = ClassGrid(spacing, lon0, lat0, n_rows, n_cols, table, crs=str(country.crs))
    if train_lat is not None:
        grid = with_training_locations(grid, train_lat, train_lon, drop_empty=drop_empty)
    return grid


def _check_spacing(spacing) -> float:
    try:
        value = float(spacing)
    except (TypeError, ValueError):
        raise GridError(f"grid.spacing={spacing!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise GridError(f"grid.spacing={spacing!r} must be a positive number of degrees")
    return value


def _class_table(country: Country, rows, cols, boxes, land) -> pd.DataFrame:
    centroids = shapely.centroid(boxes)
    c_lon, c_lat = shapely.get_x(centroids), shapely.get_y(centroids)
    at_sea_or_abroad = ~shapely.contains_xy(country.geometry, c_lon, c_lat)
    p_lat, p_lon = c_lat.copy(), c_lon.copy()
    for i in np.flatnonzero(at_sea_or_abroad):
        p_lat[i], p_lon[i] = clip_onto_land(country, land[i], c_lat[i], c_lon[i])
    return pd.DataFrame(
        {
            "class_id": np.arange(len(rows)),
            "latitude": p_lat,
            "longitude": p_lon,
            "centroid_latitude": c_lat,
            "centroid_longitude": c_lon,
            "clipped": at_sea_or_abroad,
            "row": rows,
            "col": cols,
        }
    )
