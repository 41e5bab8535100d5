"""The class grid: square cells of `spacing` degrees over the country, one class per cell on land.

Anchored at the south-west corner of the boundary's bounds. A cell's prediction point is its
centroid, clipped onto the land inside the cell when the centroid lies at sea or abroad, so
that predictions never sail away; cells without training locations can be dropped.

`Geocells` is what the rest of geoguess relies on, whatever the cells' shapes; the adaptive and
region cells of `geoguess.geo.adaptive_grid` provide it too. `grid_from_dict` restores any of
them from a checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import numpy as np
import pandas as pd
import shapely
import shapely.ops

from geoguess.errors import GeoguessError
from geoguess.geo.boundary import Country
from geoguess.geo.projection import check_latlon

POINT_KINDS = ("clipped", "centroid", "train_mean")
CLASSES_CSV_COLUMNS = [
    "class_id",
    "latitude",
    "longitude",
    "centroid_latitude",
    "centroid_longitude",
    "clipped",
]
MAX_CELLS = 4_000_000
# Clipped points are pulled this far inside the coast, so that they lie on land beyond
# floating-point doubt after the round trip through the projection.
INLAND_MARGIN_M = 25.0


class GridError(GeoguessError, ValueError):
    """A grid that cannot be built from the given settings."""


class Geocells:
    """Classes over the country, one cell each; `table` holds one row per class by `class_id`.

    Subclasses are dataclasses with `table`, `crs` and `_projector` fields that define
    `kind`, `description`, `cells`, `assign`, `to_dict` and `from_dict`.
    """

    kind: ClassVar[str]

    @property
    def num_classes(self) -> int:
        return len(self.table)

    @property
    def description(self) -> str:
        """How the cells were made, as the settings that made them (for messages and maps)."""
        raise NotImplementedError

    def cells(self) -> np.ndarray:
        """Cell polygons (lon/lat degrees), one per class."""
        raise NotImplementedError

    def assign(self, lat, lon, nearest: bool = True) -> np.ndarray:
        """Class id of each point; outside every cell the nearest class, or -1."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    def points(self, kind: str = "clipped") -> tuple[np.ndarray, np.ndarray]:
        """Latitude and longitude of each class's prediction point."""
        if kind not in POINT_KINDS:
            raise ValueError(f"unknown point kind {kind!r}; choose one of {', '.join(POINT_KINDS)}")
        if kind == "train_mean" and "train_latitude" not in self.table:
            raise ValueError("train_mean points need a grid built with training coordinates")
        prefix = {"clipped": "", "centroid": "centroid_", "train_mean": "train_"}[kind]
        t = self.table
        return t[f"{prefix}latitude"].to_numpy(), t[f"{prefix}longitude"].to_numpy()

    def _nearest_class(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        x, y = self.projector.forward(lat, lon)
        _, tree_index = self._cell_tree.query_nearest(shapely.points(x, y), all_matches=False)
        return self.table["class_id"].to_numpy()[tree_index]

    def metric_cells(self) -> np.ndarray:
        """Cell polygons in the metric CRS, one per class."""
        return np.asarray(
            self.projector.project_geometry(shapely.GeometryCollection(list(self.cells()))).geoms
        )

    @cached_property
    def _cell_tree(self) -> shapely.STRtree:
        return shapely.STRtree(self.metric_cells())

    @property
    def projector(self):
        if self._projector is None:
            from geoguess.geo.projection import Projector

            self._projector = Projector(self.crs)
        return self._projector

    def to_frame(self) -> pd.DataFrame:
        """The `classes.csv` table: the prediction point is the clipped centroid."""
        return self.table[CLASSES_CSV_COLUMNS].copy()

    def with_table(self, table: pd.DataFrame) -> Geocells:
        """The same kind of grid over other classes (rows of `table`, one per class)."""
        return dataclasses.replace(self, table=table, _projector=None)


def grid_from_dict(data: dict) -> Geocells:
    """The grid `to_dict` wrote: square, adaptive or regions (`kind`); old dicts are square."""
    kind = data.get("kind", ClassGrid.kind)
    if kind == ClassGrid.kind:
        return ClassGrid.from_dict(data)
    from geoguess.geo.adaptive_grid import PolygonGrid

    if kind in PolygonGrid.KINDS:
        return PolygonGrid.from_dict(data)
    raise GridError(f"unknown grid kind {kind!r} in a saved grid; is geoguess up to date?")


@dataclass
class ClassGrid(Geocells):
    """Classes of a square grid. `table` holds one row per class, ordered by `class_id`."""

    kind: ClassVar[str] = "square"

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
    drop_empty: bool = True,
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
        p_lat[i], p_lon[i] = _clip_onto_land(country, land[i], c_lat[i], c_lon[i])
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


def _clip_onto_land(country: Country, land_in_cell, lat: float, lon: float) -> tuple[float, float]:
    """Nearest point, in metres, of the cell's land to the centroid, a little inland."""
    projector = country.projector
    land_m = projector.project_geometry(land_in_cell)
    inland = land_m.buffer(-INLAND_MARGIN_M)
    target = inland if not inland.is_empty else land_m
    x, y = projector.forward(lat, lon)
    nearest = shapely.ops.nearest_points(target, shapely.Point(float(x), float(y)))[0]
    p_lat, p_lon = projector.inverse(nearest.x, nearest.y)
    if not country.contains(p_lat, p_lon):
        # A sliver too thin for the margin: any interior point of the cell's land will do.
        point = land_in_cell.representative_point()
        return point.y, point.x
    return float(p_lat), float(p_lon)


def with_training_locations(grid: Geocells, lat, lon, drop_empty: bool = True) -> Geocells:
    """Add per-class training counts and mean locations; drop empty classes when asked."""
    lat, lon = check_latlon(lat, lon, "training locations")
    classes = grid.assign(lat, lon, nearest=True)
    x, y = grid.projector.forward(lat, lon)
    counts = np.bincount(classes, minlength=grid.num_classes)
    table = grid.table.copy()
    table["train_count"] = counts
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_x = np.bincount(classes, weights=x, minlength=grid.num_classes) / counts
        mean_y = np.bincount(classes, weights=y, minlength=grid.num_classes) / counts
    empty = counts == 0
    mean_x[empty], mean_y[empty] = grid.projector.forward(
        table["latitude"][empty], table["longitude"][empty]
    )
    table["train_latitude"], table["train_longitude"] = grid.projector.inverse(mean_x, mean_y)
    if drop_empty:
        table = table[~empty].reset_index(drop=True)
        if table.empty:
            raise GridError("no class of the grid holds a training location")
        table["class_id"] = np.arange(len(table))
    return grid.with_table(table)
