"""The geography behind the synthetic dataset: where the sea and the mountains are.

Everything comes from the shipped boundary and its neighbours (`Country.neighbours`): a 1 km
raster of the sea (the water bodies that touch the country, i.e. the Adriatic for Croatia; land
missing from the neighbours file, such as Austria, is not sea), the distance to that sea, and a
stylised elevation model (a coastal Dinaric range, a few named massifs, the Pannonian plain).
What a location sees of it and which regional style it has follow in `scene` and `regions`.

The world is fixed (its noise uses `regions.WORLD_SEED`); a dataset's seed only picks locations
and the per-image randomness. The regional fields and landmarks are tuned to Croatia:
`check_coverage` refuses a country the shipped neighbours file does not describe.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import shapely

from geoguess.geo.boundary import (
    DEFAULT_BOUNDARY,
    DEFAULT_NEIGHBOURS,
    Country,
    load_boundary,
    load_regions,
)
from geoguess.synthetic.errors import SynthesizeError
from geoguess.synthetic.regions import dinaric_belt, smooth_noise

CELL_M = 1000.0  # land/sea and elevation raster resolution
DISTANCE_CELL_M = 4000.0  # distance to the sea is smooth, a coarse grid is enough
MARGIN_M = 70_000.0  # rays reach 60 km beyond the outermost location
MIN_SEA_KM2 = 20.0  # water parts smaller than this are slivers between country polygons

# (name, latitude, longitude, height in m, radius in km): relief added to the coastal range,
# so that the horizon of most places shows the real ranges, islands and hills in their
# directions.
MASSIFS = (
    # The coastal Dinarides, north to south
    ("Ćićarija", 45.45, 14.05, 600, 8),
    ("Učka", 45.28, 14.20, 900, 5),
    ("Snežnik", 45.59, 14.45, 1200, 8),
    ("Risnjak", 45.43, 14.62, 800, 6),
    ("Gorski kotar", 45.40, 14.75, 700, 14),
    ("Velika Kapela", 45.10, 15.10, 700, 12),
    ("Mala Kapela", 44.85, 15.45, 600, 10),
    ("Northern Velebit", 44.78, 15.05, 900, 6),
    ("Central Velebit", 44.55, 15.30, 1000, 6),
    ("Southern Velebit", 44.30, 15.60, 1100, 6),
    ("Plješivica", 44.75, 15.75, 800, 10),
    ("Promina", 43.97, 16.10, 600, 5),
    ("Svilaja", 43.80, 16.45, 800, 6),
    ("Dinara", 43.90, 16.40, 900, 9),
    ("Kamešnica", 43.72, 16.90, 1000, 8),
    ("Kozjak", 43.57, 16.33, 600, 4),
    ("Mosor", 43.55, 16.58, 700, 5),
    ("Biokovo", 43.32, 17.05, 1200, 5),
    ("Sveti Ilija", 42.97, 17.17, 800, 5),
    ("Srđ", 42.68, 18.15, 600, 6),
    ("Snježnica", 42.57, 18.35, 900, 5),
    # Islands
    ("Cres", 44.95, 14.40, 450, 12),
    ("Lošinj", 44.55, 14.45, 450, 5),
    ("Krk", 45.05, 14.60, 400, 9),
    ("Rab", 44.75, 14.75, 350, 6),
    ("Pag", 44.45, 15.05, 250, 10),
    ("Dugi otok", 44.00, 15.05, 250, 10),
    ("Brač", 43.30, 16.60, 700, 10),
    ("Hvar", 43.15, 16.70, 500, 10),
    ("Vis", 43.05, 16.15, 450, 5),
    ("Korčula", 42.95, 16.85, 450, 11),
    ("Mljet", 42.75, 17.50, 400, 9),
    # The continental hills
    ("Macelj", 46.22, 15.85, 450, 6),
    ("Strahinjščica", 46.18, 15.95, 500, 4),
    ("Ivanščica", 46.18, 16.12, 700, 5),
    ("Kalnik", 46.13, 16.47, 450, 5),
    ("Medvednica", 45.90, 15.95, 800, 7),
    ("Samoborsko gorje", 45.78, 15.62, 500, 6),
    ("Žumberak", 45.77, 15.45, 700, 9),
    ("Gorjanci", 45.75, 15.30, 800, 8),
    ("Petrova gora", 45.30, 15.80, 350, 8),
    ("Zrinska gora", 45.20, 16.25, 400, 9),
    ("Moslavačka gora", 45.62, 16.60, 350, 8),
    ("Bilogora", 45.85, 17.10, 200, 15),
    ("Papuk", 45.52, 17.65, 750, 10),
    ("Psunj", 45.40, 17.30, 700, 7),
    ("Krndija", 45.45, 18.00, 500, 8),
    ("Požeška gora", 45.28, 17.60, 450, 7),
    ("Dilj", 45.28, 18.05, 300, 10),
    # Beyond the border, on the horizon
    ("Pohorje", 46.50, 15.40, 1000, 15),
    ("Mecsek", 46.15, 18.20, 550, 12),
    ("Fruška gora", 45.15, 19.70, 450, 12),
    ("Majevica", 44.65, 18.90, 700, 15),
    ("Motajica", 45.08, 17.55, 500, 7),
    ("Kozara", 45.00, 16.95, 700, 12),
    ("Grmeč", 44.75, 16.30, 1000, 15),
    ("Šator", 44.15, 16.60, 1300, 8),
    ("Čvrsnica", 43.57, 17.55, 1500, 10),
    ("Velež", 43.30, 18.00, 1300, 8),
    ("Orjen", 42.57, 18.55, 1400, 8),
    # Negative heights carve the low plateaus and plains of the coast.
    ("Istrian plateau", 45.15, 13.90, -500, 22),
    ("Ravni kotari", 44.05, 15.45, -500, 14),
    ("Neretva delta", 43.03, 17.50, -600, 7),
)


@dataclass(frozen=True)
class Raster:
    """Values on a regular grid in projected metres, sampled bilinearly."""

    origin_x: float  # centre of the first column
    origin_y: float  # centre of the first row
    cell_m: float
    values: np.ndarray  # (rows, cols) float32

    def sample(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        rows, cols = self.values.shape
        fy = np.clip((np.asarray(y) - self.origin_y) / self.cell_m, 0, rows - 1.001)
        fx = np.clip((np.asarray(x) - self.origin_x) / self.cell_m, 0, cols - 1.001)
        r, c = fy.astype(np.int64), fx.astype(np.int64)
        wy, wx = (fy - r).astype(np.float32), (fx - c).astype(np.float32)
        v = self.values
        top = v[r, c] * (1 - wx) + v[r, c + 1] * wx
        bottom = v[r + 1, c] * (1 - wx) + v[r + 1, c + 1] * wx
        return top * (1 - wy) + bottom * wy


@dataclass(frozen=True)
class World:
    """The fixed geography of one country: sea, distance to the sea and elevation."""

    country: Country
    sea: Raster  # 1 at sea, 0 on land
    sea_km: Raster  # distance to the sea in km
    elevation: Raster  # metres, 0 at sea


@lru_cache(maxsize=4)
def build_world(country: Country) -> World:
    """Rasterise the country's surroundings once per process (about a second)."""
    check_coverage(country)
    projector = country.projector
    regions = [geometry for _, geometry in load_regions(country.neighbours)]
    land = projector.project_geometry(shapely.union_all([*regions, country.geometry]))
    x0, y0, x1, y1 = country.projected_geometry.bounds
    frame = shapely.box(x0 - MARGIN_M, y0 - MARGIN_M, x1 + MARGIN_M, y1 + MARGIN_M)
    sea = _sea_geometry(shapely.difference(frame, land), country.projected_geometry)
    fx0, fy0, fx1, fy1 = frame.bounds
    sea_mask = _rasterise(sea, fx0, fy0, fx1, fy1, CELL_M)
    sea_km = _distance_raster(sea, fx0, fy0, fx1, fy1)
    elevation = _elevation(country, sea_mask, sea_km)
    return World(country, sea_mask, sea_km, elevation)


def _sea_geometry(water, country_m):
    """The water parts that touch the country: its sea, not unmapped land beyond the neighbours."""
    parts = shapely.get_parts(water)
    touching = shapely.distance(parts, country_m) < 2 * CELL_M
    large = shapely.area(parts) > MIN_SEA_KM2 * 1e6
    sea = shapely.union_all(parts[touching & large])
    shapely.prepare(sea)
    return sea


def _grid(x0: float, y0: float, x1: float, y1: float, cell: float):
    xs = np.arange(x0 + cell / 2, x1, cell)
    ys = np.arange(y0 + cell / 2, y1, cell)
    return xs, ys, *np.meshgrid(xs, ys)


def _rasterise(geometry, x0, y0, x1, y1, cell: float) -> Raster:
    xs, ys, gx, gy = _grid(x0, y0, x1, y1, cell)
    inside = shapely.contains_xy(geometry, gx, gy).astype(np.float32)
    return Raster(float(xs[0]), float(ys[0]), cell, inside)


def _distance_raster(sea, x0, y0, x1, y1) -> Raster:
    xs, ys, gx, gy = _grid(x0, y0, x1, y1, DISTANCE_CELL_M)
    if sea.is_empty:  # a landlocked country: everywhere is far from the sea
        km = np.full(gx.shape, 1000.0, np.float32)
    else:
        km = (shapely.distance(sea, shapely.points(gx, gy)) / 1000.0).astype(np.float32)
    return Raster(float(xs[0]), float(ys[0]), DISTANCE_CELL_M, km)


def _elevation(country: Country, sea: Raster, sea_km: Raster) -> Raster:
    rows, cols = sea.values.shape
    gx, gy = np.meshgrid(
        sea.origin_x + sea.cell_m * np.arange(cols), sea.origin_y + sea.cell_m * np.arange(rows)
    )
    lat, lon = country.projector.inverse(gx, gy)
    metres = relief(country, gx, gy, lat, lon, sea_km.sample(gx, gy))
    metres = np.where(sea.values > 0.5, 0.0, np.maximum(metres, 2.0)).astype(np.float32)
    return Raster(sea.origin_x, sea.origin_y, sea.cell_m, metres)


def relief(country: Country, x, y, lat, lon, sea_km) -> np.ndarray:
    """Stylised land elevation in metres: coastal range, massifs and gentle noise."""
    rise = 1.0 - np.exp(-sea_km / 5.0)  # the karst rises steeply from the shore
    belt = dinaric_belt(lat, sea_km)
    metres = 120.0 * rise + 850.0 * rise * belt
    metres = metres + bumps(country, x, y, MASSIFS)
    noise = smooth_noise(x, y, wavelengths_km=(14, 22, 35, 55), salt=1)
    return metres + 120.0 * noise * (0.5 + belt)


def bumps(country: Country, x, y, table) -> np.ndarray:
    lat, lon = np.array([row[1] for row in table]), np.array([row[2] for row in table])
    bx, by = country.projector.forward(lat, lon)
    total = np.zeros(np.shape(x), np.float64)
    for (_, _, _, height, radius_km), cx, cy in zip(table, bx, by, strict=True):
        d2 = ((x - cx) ** 2 + (y - cy) ** 2) / (radius_km * 1000.0) ** 2
        total += height * np.exp(-0.5 * d2)
    return total


def check_coverage(country: Country) -> None:
    """Refuse a country whose surroundings the neighbours file does not describe.

    Sea is told from land by the neighbours file: any water touching the country that is not
    in it is drawn as sea. So the file must hold the country itself and every land area within
    `MARGIN_M` of its bounding box; the shipped file covers exactly Croatia's surroundings.
    """
    x0, y0, x1, y1 = country.projected_geometry.bounds
    frame = shapely.box(x0 - MARGIN_M, y0 - MARGIN_M, x1 + MARGIN_M, y1 + MARGIN_M)
    margin_km = MARGIN_M / 1000
    if country.neighbours is None and country.boundary is not None:
        shipped = country.projector.project_geometry(load_boundary(DEFAULT_BOUNDARY))
        sx0, sy0, sx1, sy1 = shipped.bounds
        covered = shapely.box(sx0 - MARGIN_M, sy0 - MARGIN_M, sx1 + MARGIN_M, sy1 + MARGIN_M)
        if not covered.buffer(CELL_M).contains(frame):
            raise SynthesizeError(
                f"country.neighbours is unset, and the shipped {DEFAULT_NEIGHBOURS.name} only "
                f"covers Croatia's surroundings; for {country.name} ({country.boundary}) set "
                "country.neighbours to a file holding that country and every land area "
                f"within {margin_km:.0f} km of its bounding box (sea is whatever it leaves out)"
            )
    regions_m = country.projector.project_geometry(
        shapely.union_all([geometry for _, geometry in load_regions(country.neighbours)])
    )
    source = country.neighbours or DEFAULT_NEIGHBOURS
    outside = shapely.difference(country.projected_geometry, regions_m.buffer(CELL_M)).area
    if outside > 0.01 * country.projected_geometry.area:
        raise SynthesizeError(
            f"country.neighbours={source} does not contain {country.name}: it must hold the "
            f"country itself and every land area within {margin_km:.0f} km of its bounding box"
        )
    rx0, ry0, rx1, ry1 = regions_m.bounds
    if not shapely.box(rx0, ry0, rx1, ry1).buffer(CELL_M).contains(frame):
        raise SynthesizeError(
            f"country.neighbours={source} does not reach {margin_km:.0f} km beyond "
            f"{country.name}'s bounding box on every side; it must hold every land area "
            "there, or the missing land would be drawn as sea"
        )
