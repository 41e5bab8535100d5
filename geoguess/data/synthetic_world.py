"""The geography behind the synthetic dataset: where the sea, the mountains and the towns are.

Everything comes from the shipped boundary and its neighbours (`Country.neighbours`): a 1 km
raster of the sea (the water bodies that touch the country, i.e. the Adriatic for Croatia; land
missing from the neighbours file, such as Austria, is not sea), the distance to that sea, and a
stylised elevation model (a coastal Dinaric range, a few named massifs, the Pannonian plain).
From these and latitude/longitude follow smooth per-location fields (vegetation, settlement, sky)
and, per compass direction, what a camera sees on the horizon: the sea and mountains.

The world is fixed (its noise uses `WORLD_SEED`); a dataset's seed only picks locations and the
per-image randomness. The climate fields and landmarks are tuned to Croatia; with another
country the sea, coast distance and relief still come from its own boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import shapely

from geoguess.geo.boundary import Country, load_regions

WORLD_SEED = 20_240_605
CELL_M = 1000.0  # land/sea and elevation raster resolution
DISTANCE_CELL_M = 4000.0  # distance to the sea is smooth, a coarse grid is enough
MARGIN_M = 50_000.0  # rays reach 40 km beyond the outermost location
MIN_SEA_KM2 = 20.0  # water parts smaller than this are slivers between country polygons

# Compass directions of the horizon rays (0 = north, clockwise); every view spans five of them.
RAY_STEP_DEG = 22.5
RAY_HEADINGS_DEG = np.arange(0.0, 360.0, RAY_STEP_DEG)
RAY_DISTANCES_KM = np.array(
    [1, 1.5, 2, 3, 4, 5, 6.5, 8, 10, 12.5, 15, 18, 22, 26, 30, 35, 40], dtype=np.float64
)
SEA_VISIBLE_KM = 15.0  # the sea farther than this along a ray is too thin to draw
EARTH_RADIUS_M = 6_371_008.8
EYE_HEIGHT_M = 3.0

# (name, latitude, longitude, height in m, radius in km): relief added to the coastal range;
# negative heights carve the low plateaus and plains of the coast.
MASSIFS = (
    ("Učka", 45.28, 14.20, 900, 5),
    ("Gorski kotar", 45.40, 14.75, 700, 14),
    ("Northern Velebit", 44.78, 15.05, 900, 6),
    ("Central Velebit", 44.55, 15.30, 1000, 6),
    ("Southern Velebit", 44.30, 15.60, 1100, 6),
    ("Dinara", 43.90, 16.40, 900, 9),
    ("Mosor", 43.55, 16.58, 700, 5),
    ("Biokovo", 43.32, 17.05, 1200, 5),
    ("Medvednica", 45.90, 15.95, 800, 7),
    ("Žumberak", 45.77, 15.45, 700, 9),
    ("Ivanščica", 46.18, 16.12, 700, 5),
    ("Kalnik", 46.13, 16.47, 450, 5),
    ("Papuk", 45.52, 17.65, 750, 10),
    ("Psunj", 45.40, 17.30, 700, 7),
    ("Dilj", 45.28, 18.05, 300, 10),
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

# Colours (RGB 0..255) mixed by the climate weights: Mediterranean, mountain forest,
# Slavonian fields, continental lush green.
CLIMATES = ("mediterranean", "mountain", "fields", "lush")
GROUND_RGB = np.array([[150, 142, 96], [56, 92, 50], [198, 178, 92], [80, 130, 52]], np.float32)
TREE_RGB = np.array([[80, 94, 58], [32, 64, 36], [72, 112, 50], [54, 104, 42]], np.float32)
SOIL_RGB = np.array([[165, 100, 70], [90, 72, 52], [150, 120, 80], [112, 88, 62]], np.float32)
ROCK_RGB = np.array([188, 186, 176], np.float32)  # bare karst limestone of the coastal ranges
FOREST_MOUNTAIN_RGB = np.array([66, 92, 72], np.float32)
SKY_SOUTH_RGB = np.array([68, 128, 214], np.float32)
SKY_NORTH_RGB = np.array([138, 166, 204], np.float32)
ROOF_COAST_RGB = np.array([180, 74, 44], np.float32)  # red clay tiles
ROOF_INLAND_RGB = np.array([94, 76, 70], np.float32)
WALL_COAST_RGB = np.array([228, 222, 206], np.float32)  # white stone
WALL_INLAND_RGB = np.array([206, 188, 150], np.float32)  # plaster


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
    # The Dinaric belt runs parallel to the coast and fades north of about 45.35° N.
    belt = np.exp(-((np.maximum(sea_km - 35.0, 0.0) / 40.0) ** 2)) * _sigmoid((45.35 - lat) / 0.15)
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


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = np.asarray(t, np.float32)[..., None]
    return a + (b - a) * t


# ---------------------------------------------------------------------------------------------
# Per-location scene parameters


def scene_parameters(world: World, lat: np.ndarray, lon: np.ndarray) -> dict[str, np.ndarray]:
    """Everything the renderer needs per location (leading axis: location), vectorised."""
    x, y = world.country.projector.forward(lat, lon)
    sea_km = world.sea_km.sample(x, y).astype(np.float64)
    elevation = world.elevation.sample(x, y).astype(np.float64)
    climate = climate_weights(lat, lon, sea_km, elevation)
    settlement = settlement_density(world.country, x, y, climate)
    horizon_angle, sea_band = cast_rays(world, x, y, elevation)
    north = np.clip((lat - 42.4) / 4.15, 0, 1)
    med = climate[:, 0]
    return {
        "ground": climate @ GROUND_RGB,
        "tree": climate @ TREE_RGB,
        "soil": climate @ SOIL_RGB,
        "mountain": _lerp(FOREST_MOUNTAIN_RGB, ROCK_RGB, np.clip(1.4 * med, 0, 1)),
        "sky": _lerp(SKY_SOUTH_RGB, SKY_NORTH_RGB, north),
        "roof": _lerp(ROOF_INLAND_RGB, ROOF_COAST_RGB, np.clip(1.5 * med, 0, 1)),
        "wall": _lerp(WALL_INLAND_RGB, WALL_COAST_RGB, np.clip(1.5 * med, 0, 1)),
        "cloudiness": np.clip(0.12 + 0.5 * north * (1 - 0.6 * med), 0, 0.8),
        "tree_density": np.clip(
            0.25 + climate[:, 1] + 0.6 * climate[:, 3] - 0.2 * climate[:, 2], 0, 1
        ),
        "cypress": 0.6 * med,  # share of narrow Mediterranean cypresses among the trees
        "gravel": 0.4 * med * (1 - settlement),  # white macadam roads of the karst
        "settlement": settlement,
        "horizon_angle": horizon_angle,
        "sea_band": sea_band,
    }


def climate_weights(lat, lon, sea_km, elevation) -> np.ndarray:
    """(n, 4) weights summing to 1, in the order of `CLIMATES`."""
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    med = _sigmoid((18.0 - sea_km) / 7.0 + (44.3 - lat) * 1.2)
    mountain = _sigmoid((elevation - 600.0) / 120.0)
    fields = _sigmoid((lon - 17.2) / 0.3) * _sigmoid((lat - 44.95) / 0.1)
    rest = 1.0 - med
    weights = [med, rest * mountain, rest * (1 - mountain) * fields]
    weights.append(rest * (1 - mountain) * (1 - fields))
    return np.stack(weights, axis=-1).astype(np.float32)


def settlement_density(country: Country, x, y, climate: np.ndarray) -> np.ndarray:
    """0..1: towns around the real cities, villages elsewhere, few in the mountains."""
    base = 0.14 + 0.1 * smooth_noise(x, y, wavelengths_km=(8, 13, 21), salt=2)
    density = base + _bumps(country, x, y, CITIES)
    return np.clip(density - 0.15 * climate[:, 1], 0.0, 1.0).astype(np.float32)


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
