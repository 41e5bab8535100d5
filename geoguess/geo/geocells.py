"""What every class grid provides (`Geocells`), whatever its cells' shapes, and what they share.

The square grid (`geoguess.geo.cells`) and the polygon grids (`geoguess.geo.polygon_grid`:
adaptive and region cells) subclass `Geocells`; each registers the kinds it restores, so that
`grid_from_dict` brings back any of them from a checkpoint. The prediction point of a class is
its cell's centroid, moved onto the cell's land when it lies at sea or abroad
(`clip_onto_land`), so that predictions never sail away.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import ClassVar

import numpy as np
import pandas as pd
import shapely
import shapely.ops

from geoguess.errors import GeoguessError
from geoguess.geo.boundary import Country
from geoguess.geo.projection import Projector, check_latlon

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
# A saved grid without a `kind` comes from before there were other kinds than square cells.
DEFAULT_KIND = "square"


class GridError(GeoguessError, ValueError):
    """A grid that cannot be built from the given settings."""


class Geocells:
    """Classes over the country, one cell each; `table` holds one row per class by `class_id`.

    Subclasses are dataclasses with `table`, `crs` and `_projector` fields that define
    `kind`, `description`, `cells`, `assign`, `to_dict` and `from_dict`, and name the kinds
    they restore: `class ClassGrid(Geocells, kinds=("square",))`.
    """

    kind: ClassVar[str]
    # kind -> the class whose `from_dict` restores it; filled as the subclasses are defined
    # (geoguess.geo's __init__ imports them all, so every kind is known once any is imported).
    registry: ClassVar[dict[str, type[Geocells]]] = {}

    def __init_subclass__(cls, kinds: tuple[str, ...] = (), **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for kind in kinds:
            Geocells.registry[kind] = cls

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
    def projector(self) -> Projector:
        if self._projector is None:
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
    kind = data.get("kind", DEFAULT_KIND)
    if kind not in Geocells.registry:
        raise GridError(f"unknown grid kind {kind!r} in a saved grid; is geoguess up to date?")
    return Geocells.registry[kind].from_dict(data)


def clip_onto_land(country: Country, land_in_cell, lat: float, lon: float) -> tuple[float, float]:
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


def with_training_locations(grid: Geocells, lat, lon, *, drop_empty: bool) -> Geocells:
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
