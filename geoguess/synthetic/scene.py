"""Everything a location's position decides for the renderer (`scene_parameters`): per compass
direction the horizon's elevation angle and the visible sea (`cast_rays`), the landscape zone
weights, the settlement density, the road's likely axis, and the chances of guard rails, poles
and gravel roads. Colour is deliberately not among them: the renderer draws light, weather and
season per image, independently of the position."""

from __future__ import annotations

import numpy as np

from geoguess.geo.boundary import Country
from geoguess.synthetic.regions import regions, sigmoid, smooth_noise, zones
from geoguess.synthetic.world import DISTANCE_CELL_M, World, bumps

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

# Zone weights are raised to this power: a location is mostly of one zone, blended at borders.
ZONE_SHARPNESS = 4.0


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
        "guardrail": np.clip(0.05 + sigmoid((elevation - 350.0) / 120.0) * 0.6, 0, 0.8),
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


def settlement_density(country: Country, x, y, mountain: np.ndarray) -> np.ndarray:
    """0..1: towns around the real cities, villages elsewhere, few in the mountains."""
    base = 0.14 + 0.1 * smooth_noise(x, y, wavelengths_km=(8, 13, 21), salt=2)
    density = base + bumps(country, x, y, CITIES)
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
