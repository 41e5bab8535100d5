"""Class grids whose cells are polygons in the metric CRS: adaptive cells and region cells.

A cell is stored exactly (as WKB); a point belongs to the cell containing it (the lowest class
id on a shared border) or else to the nearest cell, and the class points are those of the
square grid: the cell's centroid, moved onto the cell's land when it lies at sea, abroad or
outside its (non-convex) cell; the centroid itself; the mean training location. The cells
themselves are made by `geoguess.geo.adaptive_grid` and `geoguess.geo.region_grid`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import shapely

from geoguess.geo.boundary import Country
from geoguess.geo.geocells import Geocells, GridError, clip_onto_land
from geoguess.geo.projection import check_latlon

# Cell borders are straight in metres; in lon/lat they get a vertex every this many metres.
SEGMENT_M = 2_000.0


@dataclass
class PolygonGrid(Geocells, kinds=("adaptive", "regions")):
    """Classes whose cells are arbitrary polygons; `table["cell_wkb"]` holds each cell (metres)."""

    KINDS: ClassVar[tuple[str, ...]] = ("adaptive", "regions")

    kind: str
    table: pd.DataFrame
    crs: str = "EPSG:3765"
    # How the cells were made (plain values), for `description` and provenance.
    settings: dict = field(default_factory=dict)
    _projector: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise GridError(f"unknown polygon grid kind {self.kind!r}")

    @property
    def description(self) -> str:
        s = self.settings
        if self.kind == "regions":
            return f"grid.regions={Path(s.get('regions', '?')).name}"
        density = "" if s.get("trained", True) else ", uniform density"
        return (
            f"grid=adaptive (max_per_cell={s.get('max_per_cell')}, "
            f"min_per_cell={s.get('min_per_cell')}, min_cell_km={s.get('min_cell_km'):g}{density})"
        )

    def metric_cells(self) -> np.ndarray:
        return self._metric_cells

    @cached_property
    def _metric_cells(self) -> np.ndarray:
        return shapely.from_wkb(self.table["cell_wkb"].to_numpy())

    def cells(self) -> np.ndarray:
        """Cell polygons in lon/lat degrees, borders densified to follow the metric lines."""
        return self._lonlat_cells

    @cached_property
    def _lonlat_cells(self) -> np.ndarray:
        dense = shapely.segmentize(self.metric_cells(), SEGMENT_M)
        return np.array([self.projector.unproject_geometry(c) for c in dense], dtype=object)

    def assign(self, lat, lon, nearest: bool = True) -> np.ndarray:
        """Class id of each point: the lowest id of the cells covering it, vectorised.

        A point in no cell gets the class whose cell is nearest in metres when `nearest`,
        else -1.
        """
        lat, lon = check_latlon(lat, lon, "points to assign")
        x, y = self.projector.forward(lat.ravel(), lon.ravel())
        index = covering_cell(self._cell_tree, shapely.points(x, y))
        classes = np.full(index.shape, -1, dtype=np.int64)
        inside = index >= 0
        classes[inside] = self.table["class_id"].to_numpy()[index[inside]]
        if nearest and (~inside).any():
            classes[~inside] = self._nearest_class(lat.ravel()[~inside], lon.ravel()[~inside])
        return classes.reshape(lat.shape)

    def to_frame(self) -> pd.DataFrame:
        """The `classes.csv` table, with the region's name for region cells."""
        frame = super().to_frame()
        if "region" in self.table:
            frame["region"] = self.table["region"].to_numpy()
        return frame

    def to_dict(self) -> dict:
        """Plain JSON data for checkpoints; `from_dict` restores the exact grid."""
        return {
            "kind": self.kind,
            "crs": self.crs,
            "settings": dict(self.settings),
            "table": self.table.to_dict(orient="list"),
        }

    @classmethod
    def from_dict(cls, data: dict) -> PolygonGrid:
        return cls(
            kind=data["kind"],
            table=pd.DataFrame(data["table"]),
            crs=data["crs"],
            settings=dict(data.get("settings", {})),
        )


def covering_cell(tree: shapely.STRtree, points: np.ndarray) -> np.ndarray:
    """Index of the first tree geometry covering each point (borders included), or -1."""
    point_index, cell_index = tree.query(points, predicate="intersects")
    first = np.full(len(points), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, point_index, cell_index)
    first[first == np.iinfo(np.int64).max] = -1
    return first


def polygon_grid(country: Country, kind: str, cells_m: np.ndarray, settings: dict) -> PolygonGrid:
    """The grid of metric cells, with the class points of the square grid."""
    projector = country.projector
    land = shapely.intersection(cells_m, country.projected_geometry)
    centroids = shapely.centroid(cells_m)
    cx, cy = shapely.get_x(centroids), shapely.get_y(centroids)
    c_lat, c_lon = projector.inverse(cx, cy)
    # Off land, abroad, or outside its own (non-convex) cell: the centroid is moved.
    off_land = ~shapely.contains_xy(land, cx, cy) | ~country.contains(c_lat, c_lon)
    p_lat, p_lon = c_lat.copy(), c_lon.copy()
    for i in np.flatnonzero(off_land):
        land_ll = projector.unproject_geometry(land[i])
        p_lat[i], p_lon[i] = clip_onto_land(country, land_ll, c_lat[i], c_lon[i])
    table = pd.DataFrame(
        {
            "class_id": np.arange(len(cells_m)),
            "latitude": p_lat,
            "longitude": p_lon,
            "centroid_latitude": c_lat,
            "centroid_longitude": c_lon,
            "clipped": off_land,
            "cell_wkb": shapely.to_wkb(cells_m, hex=True),
        }
    )
    return PolygonGrid(kind, table, crs=str(country.crs), settings=settings)
