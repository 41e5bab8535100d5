"""Geocells that follow the data (`grid=adaptive`) or a polygon layer (`grid.regions=PATH`).

Adaptive cells, as in the OSV-5M baseline: a quadtree of squares in the country's metric CRS,
a square split in four while it holds more than `max_per_cell` training locations and its
halves are at least `min_cell_km` wide; squares without land are dropped. Cells holding fewer
than `min_per_cell` are then merged, smallest first, into the touching cell that keeps the
merged count lowest (into the nearest cell when none touches, as for an island). So dense areas
get small cells, sparse ones large cells, and every class holds between `min_per_cell` and
`max_per_cell` training locations, with two exceptions: a minimum-size square may hold more,
and a merge may exceed the maximum (by less than `min_per_cell`) when every neighbour is full.

Region cells, as PIGEON builds its geocells: one class per polygon of a layer of counties or
municipalities that intersects the country; regions without training locations are dropped.

Either way a cell is a polygon in the metric CRS (stored exactly, as WKB), a point belongs to
the cell containing it (the lowest class id on a shared border) or else to the nearest cell, and
the class points are those of the square grid: the cell's centroid, moved onto the cell's land
when it lies at sea, abroad or outside its (non-convex) cell; the centroid itself; the mean
training location.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import shapely
from shapely.geometry.base import BaseGeometry

from geoguess.geo.boundary import BoundaryError, Country
from geoguess.geo.cells import (
    MAX_CELLS,
    Geocells,
    GridError,
    _clip_onto_land,
    with_training_locations,
)
from geoguess.geo.projection import check_latlon

# Cell borders are straight in metres; in lon/lat they get a vertex every this many metres.
SEGMENT_M = 2_000.0
MAX_UNIFORM_POINTS = 1_000_000


@dataclass
class PolygonGrid(Geocells):
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


# -- adaptive cells ---------------------------------------------------------------------------


def build_adaptive_grid(
    country: Country,
    max_per_cell: int = 100,
    min_per_cell: int = 10,
    min_cell_km: float = 5.0,
    regions: str | None = None,
    uniform_points: int = 2000,
    drop_empty: bool = True,
    train_lat=None,
    train_lon=None,
) -> PolygonGrid:
    """Adaptive cells over `country` from the training locations, or region cells (`regions`).

    Without training locations (the grid CLI) the density is taken as uniform over the land:
    a regular lattice of about `uniform_points` points stands in for them, so the cells show
    the method's shapes, not a dataset's; the grid then has no `train_mean` points.
    `drop_empty` concerns region cells only (adaptive cells are never empty).
    """
    if regions:
        return build_region_grid(country, regions, train_lat, train_lon, drop_empty=drop_empty)
    max_per_cell = _check_count("grid.max_per_cell", max_per_cell)
    min_per_cell = _check_count("grid.min_per_cell", min_per_cell)
    if min_per_cell > max_per_cell:
        raise GridError(
            f"grid.min_per_cell={min_per_cell} must not exceed grid.max_per_cell={max_per_cell}"
        )
    min_side = _check_positive("grid.min_cell_km", min_cell_km) * 1000.0
    trained = train_lat is not None
    if trained:
        lat, lon = check_latlon(train_lat, train_lon, "training locations")
        x, y = country.projector.forward(lat, lon)
    else:
        x, y = uniform_lattice(country, _check_count("grid.uniform_points", uniform_points))
    boxes = quadtree_leaves(x, y, country.projected_geometry.bounds, max_per_cell, min_side)
    land_area = shapely.area(shapely.intersection(boxes, country.projected_geometry))
    boxes = boxes[land_area > 0]
    counts = np.bincount(_assign_to(boxes, x, y), minlength=len(boxes))
    groups = merge_small_cells(boxes, counts, min_per_cell)
    cells = np.array([shapely.union_all(boxes[g]) for g in groups], dtype=object)
    settings = {
        "max_per_cell": max_per_cell,
        "min_per_cell": min_per_cell,
        "min_cell_km": float(min_cell_km),
        "trained": trained,
    }
    grid = _polygon_grid(country, "adaptive", cells, settings)
    if trained:
        grid = with_training_locations(grid, lat, lon, drop_empty=False)
    return grid


def uniform_lattice(country: Country, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """A square lattice (metres) with about `n_points` points on the country's land."""
    if n_points > MAX_UNIFORM_POINTS:
        raise GridError(f"grid.uniform_points={n_points} is more than {MAX_UNIFORM_POINTS}")
    land = country.projected_geometry
    step = math.sqrt(land.area / n_points)
    x0, y0, x1, y1 = land.bounds
    xs = np.arange(x0 + step / 2, x1, step)
    ys = np.arange(y0 + step / 2, y1, step)
    x, y = (a.ravel() for a in np.meshgrid(xs, ys))
    on_land = shapely.contains_xy(land, x, y)
    return x[on_land], y[on_land]


def quadtree_leaves(
    x: np.ndarray, y: np.ndarray, bounds, max_per_cell: int, min_side: float
) -> np.ndarray:
    """Leaf squares (shapely boxes, metres) of a quadtree over the points within `bounds`.

    The root is the square on the bounds' south-west corner that covers them. A square with
    more than `max_per_cell` points is split while its quarters are at least `min_side` wide.
    Leaves come depth first, quarters in the order SW, SE, NW, NE.
    """
    bx0, by0, bx1, by1 = bounds
    # A hair wider than the bounds, so that points on the far edges fall inside (half-open).
    side = max(bx1 - bx0, by1 - by0) * (1 + 1e-9) + 1.0
    leaves: list[tuple[float, float, float]] = []
    stack = [(bx0, by0, side, np.flatnonzero((x >= bx0) & (y >= by0)))]
    while stack:
        x0, y0, s, members = stack.pop()
        inside = members[(x[members] < x0 + s) & (y[members] < y0 + s)]
        if len(inside) <= max_per_cell or s / 2 < min_side:
            leaves.append((x0, y0, s))
            if len(leaves) > MAX_CELLS:
                raise GridError("the quadtree has too many cells; raise grid.min_cell_km")
            continue
        half = s / 2
        # Pushed in reverse so that they pop as SW, SE, NW, NE.
        for qx, qy in ((x0 + half, y0 + half), (x0, y0 + half), (x0 + half, y0), (x0, y0)):
            quarter = inside[(x[inside] >= qx) & (y[inside] >= qy)]
            stack.append((qx, qy, half, quarter))
    leaf = np.array(leaves)
    return shapely.box(leaf[:, 0], leaf[:, 1], leaf[:, 0] + leaf[:, 2], leaf[:, 1] + leaf[:, 2])


def _assign_to(cells: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Index of the cell of each point as `PolygonGrid.assign` decides it (cover, else nearest)."""
    tree = shapely.STRtree(cells)
    points = shapely.points(x, y)
    index = covering_cell(tree, points)
    outside = index < 0
    if outside.any():
        _, index[outside] = tree.query_nearest(points[outside], all_matches=False)
    return index


def merge_small_cells(cells: np.ndarray, counts: np.ndarray, min_per_cell: int) -> list[list[int]]:
    """Groups of cell indices such that each group holds at least `min_per_cell` points.

    The smallest group under the minimum (lowest index on ties) joins the group it touches
    along a border that keeps the merged count lowest (then the longest shared border, then the
    lowest index); a group touching none joins the nearest. Stops when every group has the
    minimum or one group is left. Groups come in the order of their first cell.
    """
    n = len(cells)
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    count = {i: int(c) for i, c in enumerate(counts)}
    borders = _shared_borders(cells)
    heap = [(count[i], i) for i in range(n) if count[i] < min_per_cell]
    heapq.heapify(heap)
    while heap and len(members) > 1:
        c, g = heapq.heappop(heap)
        if g not in members or c != count[g] or c >= min_per_cell:
            continue  # merged away or grown since it was pushed
        neighbours = borders[g]
        if neighbours:
            h = min(neighbours, key=lambda k: (count[k] + c, -neighbours[k], k))
        else:
            h = _nearest_group(cells, members, g)
        members[h] = sorted(members[h] + members.pop(g))
        count[h] += count.pop(g)
        for k, length in borders.pop(g).items():
            borders[k].pop(g, None)
            if k != h:
                borders[h][k] = borders[h].get(k, 0.0) + length
                borders[k][h] = borders[k].get(h, 0.0) + length
        borders[h].pop(g, None)
        if count[h] < min_per_cell:
            heapq.heappush(heap, (count[h], h))
    return sorted(members.values())


def _shared_borders(cells: np.ndarray) -> dict[int, dict[int, float]]:
    """For each cell, the cells sharing a border of positive length with it, and its length."""
    borders: dict[int, dict[int, float]] = {i: {} for i in range(len(cells))}
    a, b = shapely.STRtree(cells).query(cells, predicate="intersects")
    pair = a < b
    a, b = a[pair], b[pair]
    lengths = shapely.length(shapely.intersection(cells[a], cells[b]))
    for i, j, length in zip(a.tolist(), b.tolist(), lengths.tolist(), strict=True):
        if length > 0:
            borders[i][j] = borders[j][i] = length
    return borders


def _nearest_group(cells: np.ndarray, members: dict[int, list[int]], g: int) -> int:
    own = shapely.union_all(cells[members[g]])
    best, best_distance = -1, math.inf
    for h, cell_indices in members.items():
        if h == g:
            continue
        distance = float(shapely.distance(own, cells[cell_indices]).min())
        if distance < best_distance:
            best, best_distance = h, distance
    return best


# -- region cells -----------------------------------------------------------------------------


def build_region_grid(
    country: Country, regions: str | Path, train_lat=None, train_lon=None, drop_empty: bool = True
) -> PolygonGrid:
    """One class per region polygon of the file `regions` that intersects the country."""
    names, geometries = load_region_polygons(regions)
    metric = np.array([country.projector.project_geometry(g) for g in geometries], dtype=object)
    metric = shapely.make_valid(metric)
    on_land = shapely.area(shapely.intersection(metric, country.projected_geometry)) > 0
    if not on_land.any():
        raise GridError(f"grid.regions={regions}: no region intersects {country.name}")
    settings = {"regions": str(regions)}
    grid = _polygon_grid(country, "regions", metric[on_land], settings)
    table = grid.table
    table.insert(len(table.columns) - 1, "region", np.asarray(names, dtype=object)[on_land])
    grid = grid.with_table(table)
    if train_lat is not None:
        grid = with_training_locations(grid, train_lat, train_lon, drop_empty=drop_empty)
    return grid


def load_region_polygons(path: str | Path) -> tuple[list[str], list[BaseGeometry]]:
    """Names and (Multi)Polygons, EPSG:4326, of a GeoJSON/shapefile layer of regions."""
    import geopandas as gpd

    path = Path(path).expanduser()
    if not path.exists():
        raise BoundaryError(f"grid.regions file {path} does not exist")
    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unusable file
        raise BoundaryError(f"grid.regions file {path} could not be read: {exc}") from exc
    if frame.empty:
        raise BoundaryError(f"grid.regions file {path} has no features")
    if frame.crs is not None and not frame.crs.equals("EPSG:4326"):
        frame = frame.to_crs("EPSG:4326")
    key = next((c for c in ("name", "NAME", "Name", "NAME_2", "NAME_1") if c in frame), None)
    names = frame[key].astype(str).tolist() if key else [f"region {i}" for i in range(len(frame))]
    geometries = []
    for row, geometry in enumerate(frame.geometry):
        if geometry is None or geometry.is_empty:
            raise BoundaryError(f"grid.regions file {path}: feature {row} has no geometry")
        if geometry.geom_type not in ("Polygon", "MultiPolygon"):
            raise BoundaryError(
                f"grid.regions file {path}: feature {row} is a {geometry.geom_type}, not a polygon"
            )
        geometries.append(geometry)
    return names, geometries


# -- shared -----------------------------------------------------------------------------------


def _polygon_grid(country: Country, kind: str, cells_m: np.ndarray, settings: dict) -> PolygonGrid:
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
        p_lat[i], p_lon[i] = _clip_onto_land(country, land_ll, c_lat[i], c_lon[i])
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


def _check_count(name: str, value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise GridError(f"{name}={value!r} is not a whole number") from None
    if number != value or number < 1:
        raise GridError(f"{name}={value!r} must be a whole number of at least 1")
    return number


def _check_positive(name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise GridError(f"{name}={value!r} is not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise GridError(f"{name}={value!r} must be a positive number")
    return number
