"""Geocells that follow the data (`grid=adaptive`), as in the OSV-5M baseline.

A quadtree of squares in the country's metric CRS, a square split in four while it holds more
than `max_per_cell` training locations and its halves are at least `min_cell_km` wide; squares
without land are dropped. Cells holding fewer than `min_per_cell` are then merged, smallest
first, into the touching cell that keeps the merged count lowest (into the nearest cell when
none touches, as for an island). So dense areas get small cells, sparse ones large cells, and
every class holds between `min_per_cell` and `max_per_cell` training locations, with two
exceptions: a minimum-size square may hold more, and a merge may exceed the maximum (by less
than `min_per_cell`) when every neighbour is full. The cells are polygons of a
`geoguess.geo.polygon_grid.PolygonGrid`.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import shapely

from geoguess.geo.boundary import Country
from geoguess.geo.geocells import MAX_CELLS, GridError, with_training_locations
from geoguess.geo.polygon_grid import PolygonGrid, covering_cell, polygon_grid
from geoguess.geo.projection import check_latlon
from geoguess.geo.region_grid import build_region_grid

MAX_UNIFORM_POINTS = 1_000_000


def build_adaptive_grid(
    country: Country,
    *,
    max_per_cell: int,
    min_per_cell: int,
    min_cell_km: float,
    regions: str | None,
    uniform_points: int,
    drop_empty: bool,
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
    grid = polygon_grid(country, "adaptive", cells, settings)
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
