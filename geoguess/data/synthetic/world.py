"""The geography behind the synthetic dataset: where the sea, the mountains and the regions are.

Everything comes from the shipped boundary and its neighbours (`Country.neighbours`): a 1 km
raster of the sea (the water bodies that touch the country, i.e. the Adriatic for Croatia; land
missing from the neighbours file, such as Austria, is not sea), the distance to that sea, and a
stylised elevation model (a coastal Dinaric range, a few named massifs, the Pannonian plain).
From these follow, per compass direction, what a camera sees on the horizon (sea, islands and
mountains), and per location the regional *style*: which tree forms, fields, house forms, walls
and road furniture are likely there. Colour is deliberately not a regional field: light,
weather and season are drawn per image by the renderer, independently of the position.

The world is fixed (its noise uses `WORLD_SEED`); a dataset's seed only picks locations and the
per-image randomness. The regional fields and landmarks are tuned to Croatia: `check_coverage`
refuses a country the shipped neighbours file does not describe.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import shapely

from geoguess.errors import GeoguessError
from geoguess.geo.boundary import (
    DEFAULT_BOUNDARY,
    DEFAULT_NEIGHBOURS,
    Country,
    load_boundary,
    load_regions,
)

WORLD_SEED = 20_240_605
CELL_M = 1000.0  # land/sea and elevation raster resolution
DISTANCE_CELL_M = 4000.0  # distance to the sea is smooth, a coarse grid is enough
MARGIN_M = 70_000.0  # rays reach 60 km beyond the outermost location
MIN_SEA_KM2 = 20.0  # water parts smaller than this are slivers between country polygons

# Compass directions of the horizon rays (0 = north, clockwise); every view spans five of them.
RAY_STEP_DEG = 22.5
RAY_HEADINGS_DEG = np.arange(0.0, 360.0, RAY_STEP_DEG)
RAY_DISTANCES_KM = np.array(
    [1, 1.5, 2, 3, 4, 5, 6.5, 8, 10, 12.5, 15, 18, 22, 26, 30, 35, 40, 46, 53, 60],
    dtype=np.float64,
)
SEA_VISIBLE_KM = 15.0  # the sea farther than this along a ray is too thin to draw
EARTH_RADIUS_M = 6_371_008.8
EYE_HEIGHT_M = 3.0

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
# (name, latitude, longitude, weight, radius in km): settlement density bumps.
CITIES = (
    ("Zagreb", 45.815, 15.982, 1.0, 12),
    ("Split", 43.508, 16.440, 0.8, 7),
    ("Rijeka", 45.327, 14.442, 0.7, 7),
    ("Osijek", 45.551, 18.694, 0.6, 6),
    ("Zadar", 44.119, 15.231, 0.5, 5),
    ("Pula", 44.866, 13.850, 0.4, 5),
    ("Slavonski Brod", 45.160, 18.016, 0.4, 5),
    ("Karlovac", 45.487, 15.548, 0.35, 5),
    ("Varaždin", 46.305, 16.336, 0.4, 5),
    ("Šibenik", 43.735, 15.889, 0.35, 4),
    ("Dubrovnik", 42.650, 18.094, 0.4, 4),
    ("Sisak", 45.466, 16.378, 0.3, 4),
    ("Vukovar", 45.350, 19.000, 0.3, 4),
)

GENERATOR_VERSION = "synthetic-v3"  # bump when the output of a given seed changes
# Zone weights are raised to this power: a location is mostly of one zone, blended at borders.
ZONE_SHARPNESS = 4.0


class SynthesizeError(GeoguessError, ValueError):
    """Settings, a country or a target folder the generator cannot work with."""


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
    metres = metres + _bumps(country, x, y, MASSIFS)
    noise = smooth_noise(x, y, wavelengths_km=(14, 22, 35, 55), salt=1)
    return metres + 120.0 * noise * (0.5 + belt)


def _bumps(country: Country, x, y, table) -> np.ndarray:
    lat, lon = np.array([row[1] for row in table]), np.array([row[2] for row in table])
    bx, by = country.projector.forward(lat, lon)
    total = np.zeros(np.shape(x), np.float64)
    for (_, _, _, height, radius_km), cx, cy in zip(table, bx, by, strict=True):
        d2 = ((x - cx) ** 2 + (y - cy) ** 2) / (radius_km * 1000.0) ** 2
        total += height * np.exp(-0.5 * d2)
    return total


def smooth_noise(x, y, wavelengths_km=(20, 35, 60), salt: int = 0) -> np.ndarray:
    """A fixed smooth field in about [-1, 1]: cosines of random direction and phase."""
    rng = np.random.default_rng([WORLD_SEED, salt])
    total = np.zeros(np.shape(x), np.float64)
    for wavelength in wavelengths_km:
        angle, phase = rng.uniform(0, 2 * np.pi, 2)
        k = 2 * np.pi / (wavelength * 1000.0)
        total += np.cos(k * (np.cos(angle) * x + np.sin(angle) * y) + phase)
    return total / np.sqrt(len(wavelengths_km) / 2.0)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# ---------------------------------------------------------------------------------------------
# Per-location scene parameters: layout on the horizon and the regional style


def scene_parameters(world: World, lat: np.ndarray, lon: np.ndarray) -> dict[str, np.ndarray]:
    """Everything position decides for the renderer (leading axis: location), vectorised.

    `zones`: the chance of each landscape zone (`style.ZONES`), from which the renderer draws
    the location's zone and so its trees, fields and houses (`style.zone_style`).
    """
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    x, y = world.country.projector.forward(lat, lon)
    sea_km = world.sea_km.sample(x, y).astype(np.float64)
    elevation = world.elevation.sample(x, y).astype(np.float64)
    horizon_angle, sea_band = cast_rays(world, x, y, elevation)
    region = regions(lat, lon, sea_km, elevation)
    settlement = settlement_density(world.country, x, y, region["mountain"])
    patch = 0.5 + 0.5 * smooth_noise(x, y, wavelengths_km=(6, 9, 15), salt=3)  # local variety
    weights = zones(lat, lon, sea_km, elevation) ** ZONE_SHARPNESS
    weights = weights / weights.sum(axis=1, keepdims=True)
    return {
        "horizon_angle": horizon_angle,
        "sea_band": sea_band,
        "zones": weights.astype(np.float32),
        "settlement": settlement,
        "tree_density": np.clip(0.45 + 0.2 * (patch - 0.5), 0, 1),
        "guardrail": np.clip(0.05 + _sigmoid((elevation - 350.0) / 120.0) * 0.6, 0, 0.8),
        "poles": np.clip(0.45 - 0.25 * region["med"], 0, 0.9),
        "gravel": np.clip(0.15 * (1 - settlement), 0, 0.15),  # rural roads everywhere
        "road_curve": np.clip(0.1 + elevation / 900.0 + 0.3 * region["karst"], 0, 1),
        "dryness": region["med"],
        # Roads follow the lie of the land: along the coast and the Dinaric valleys (NW-SE),
        # on a north-south / east-west grid in the Pannonian plain, anyhow elsewhere.
        "road_axis": coast_parallel_bearing(world, x, y),
        "road_follows_axis": 0.65 * weights[:, :7].sum(axis=1),  # coast, Zagora, Lika
        "road_grid": 0.65 * weights[:, 10:].sum(axis=1),  # Podravina and Slavonia
    }


def coast_parallel_bearing(world: World, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Degrees (0..180, clockwise from north) of the direction along the nearest coast."""
    step = 2 * DISTANCE_CELL_M
    east = world.sea_km.sample(x + step, y) - world.sea_km.sample(x - step, y)
    north = world.sea_km.sample(x, y + step) - world.sea_km.sample(x, y - step)
    away_from_sea = np.degrees(np.arctan2(east, north))
    return ((away_from_sea + 90.0) % 180.0).astype(np.float32)


def zones(lat, lon, sea_km, elevation) -> np.ndarray:
    """(n, 13) smooth weights of the landscape zones (`style.ZONES`) at each location.

    Istria (the whole peninsula, coast and interior) and Gorski kotar (the wooded highlands
    between Rijeka and Karlovac) are cut out first; the rest is the coast from north to south,
    the karst hinterland (Zagora, then Lika) and the continental north.
    """
    region = regions(lat, lon, sea_km, elevation)
    med, karst, istria = region["med"], region["karst"], region["istria"]
    gorski = (
        _sigmoid((lat - 45.17) / 0.06)
        * _sigmoid((15.4 - lon) / 0.08)
        * _sigmoid((lon - 14.4) / 0.05)
    )
    coast = _split(
        [_sigmoid((lat - 44.5) / 0.12), _sigmoid((lat - 43.62) / 0.1), _sigmoid((lat - 43.1) / 0.1)]
    )  # Kvarner, northern, central and southern Dalmatia
    hinterland = _split([_sigmoid((44.2 - lat) / 0.15)])  # Zagora, then Lika
    northwest = _sigmoid((lat - 45.7) / 0.1) * _sigmoid((16.7 - lon) / 0.2)
    east = _sigmoid((lon - 18.2) / 0.15)
    podravina = _sigmoid((lat - 45.75) / 0.12)
    west = _sigmoid((lon - 17.0) / 0.2)
    north = _split([northwest, east, podravina, west])  # the rest is central
    north = north[[0, 4, 2, 3, 1]]  # in the order of style.ZONES
    mainland = 1 - istria
    inland = mainland * (1 - med) * (1 - gorski)
    weights = np.concatenate(
        [
            istria[None],
            mainland * med * coast,
            inland * karst * hinterland,
            (mainland * (1 - med) * gorski)[None],
            inland * (1 - karst) * north,
        ]
    )
    return (weights / weights.sum(axis=0)).T


def _split(chances: list[np.ndarray]) -> np.ndarray:
    """(k + 1, n): take each share in turn from what the previous ones left."""
    left = np.ones_like(chances[0])
    parts = []
    for chance in chances:
        parts.append(left * chance)
        left = left * (1 - chance)
    return np.stack([*parts, left])


def _normalise(weights: np.ndarray) -> np.ndarray:
    weights = np.maximum(weights, 0.0)
    return (weights / weights.sum(axis=-1, keepdims=True)).astype(np.float32)


def regions(lat, lon, sea_km, elevation) -> dict[str, np.ndarray]:
    """Smooth 0..1 weights of Croatia's landscapes at each location.

    `med`, `mountain`, `fields`, `lush` sum to 1 (Mediterranean coast and islands, Dinaric
    mountains, the Slavonian plain, the green continental hills); the others overlap them:
    `karst` (the Dinaric limestone belt: coast, Zagora, Lika), `south` (southern Dalmatia),
    `high` (above about 500 m), `istria` and `zagorje` (the vineyard hills north of Zagreb).
    """
    med = _sigmoid((18.0 - sea_km) / 7.0 + (44.3 - lat) * 1.2)
    mountain = _sigmoid((elevation - 600.0) / 120.0)
    fields = _sigmoid((lon - 17.2) / 0.3) * _sigmoid((lat - 44.95) / 0.1)
    rest = 1.0 - med
    return {
        "med": med,
        "mountain": rest * mountain,
        "fields": rest * (1 - mountain) * fields,
        "lush": rest * (1 - mountain) * (1 - fields),
        "karst": dinaric_belt(lat, sea_km),
        "south": _sigmoid((43.9 - lat) / 0.25),
        "high": _sigmoid((elevation - 500.0) / 100.0),
        "istria": _sigmoid((14.25 - lon) / 0.1) * _sigmoid((lat - 44.8) / 0.1),
        "zagorje": _sigmoid((lat - 45.85) / 0.1) * _sigmoid((16.7 - lon) / 0.2),
    }


def dinaric_belt(lat, sea_km) -> np.ndarray:
    """The karst belt parallel to the coast, fading north of about 45.35° N."""
    return np.exp(-((np.maximum(sea_km - 35.0, 0.0) / 40.0) ** 2)) * _sigmoid((45.35 - lat) / 0.15)


def settlement_density(country: Country, x, y, mountain: np.ndarray) -> np.ndarray:
    """0..1: towns around the real cities, villages elsewhere, few in the mountains."""
    base = 0.14 + 0.1 * smooth_noise(x, y, wavelengths_km=(8, 13, 21), salt=2)
    density = base + _bumps(country, x, y, CITIES)
    return np.clip(density - 0.15 * mountain, 0.0, 1.0).astype(np.float32)


def cast_rays(world: World, x, y, elevation) -> tuple[np.ndarray, np.ndarray]:
    """Per location and ray heading: the horizon's elevation angle and the sea band height.

    Returns (n, 16) arrays: the angle in radians above the eye of the highest terrain within
    40 km (earth curvature included), and the visible sea as a fraction of the image height
    (0 where no sea lies within `SEA_VISIBLE_KM` or a hill hides it).
    """
    theta = np.radians(RAY_HEADINGS_DEG)
    d = RAY_DISTANCES_KM * 1000.0
    px = x[:, None, None] + np.sin(theta)[None, :, None] * d
    py = y[:, None, None] + np.cos(theta)[None, :, None] * d
    at_sea = world.sea.sample(px, py) > 0.5
    eye = elevation[:, None, None] + EYE_HEIGHT_M
    drop = d**2 / (2 * EARTH_RADIUS_M)
    angle = np.arctan2(world.elevation.sample(px, py) - eye - drop, d)
    horizon = np.maximum(angle.max(axis=-1), 0.0)
    first_sea = np.where(at_sea.any(axis=-1), at_sea.argmax(axis=-1), len(d))
    before_sea = np.arange(len(d)) < first_sea[..., None]
    hidden = np.where(before_sea, angle, -np.inf).max(axis=-1) > 0.02
    sea_distance = np.append(RAY_DISTANCES_KM, np.inf)[first_sea]
    visible = (sea_distance <= SEA_VISIBLE_KM) & ~hidden
    band = np.where(visible, 0.04 + 0.22 * np.exp(-sea_distance / 4.0), 0.0)
    return horizon.astype(np.float32), band.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Which countries the world can draw, and the name of a dataset


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


def dataset_key(country: Country, num_locations: int, seed: int, image_size: int) -> str:
    """A folder name for one generated dataset, e.g. `synthetic-v3-n2000-seed0-128px-1a2b3c4d5e6f`.

    The suffix is the country's fingerprint (its outline and CRS); a neighbours file other than
    the shipped one adds a hash of its bytes, since the land it holds is drawn. So a set
    generated for another outline or other surroundings is never reused.
    """
    key = (
        f"{GENERATOR_VERSION}-n{int(num_locations)}-seed{int(seed)}-{int(image_size)}px-"
        f"{country.fingerprint[:12]}"
    )
    if country.neighbours is None:
        return key
    digest = hashlib.sha256()
    for part in _file_parts(Path(country.neighbours).expanduser()):
        digest.update(part.suffix.lower().encode() + b"\0" + part.read_bytes() + b"\0")
    return f"{key}-nb{digest.hexdigest()[:8]}"


def _file_parts(path: Path) -> list[Path]:
    """A file, and for a shapefile its sidecars (attributes, index, projection)."""
    if not path.is_file():
        raise SynthesizeError(f"{path} does not exist (country.boundary / country.neighbours)")
    if path.suffix.lower() != ".shp":
        return [path]
    sidecars = [path.with_suffix(ext) for ext in (".shx", ".dbf", ".prj", ".cpg")]
    return [path, *(p for p in sidecars if p.is_file())]
