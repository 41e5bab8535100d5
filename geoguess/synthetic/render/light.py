"""Weather and light, drawn per location independently of where it is (`draw_light`), and the
location's palette: the season's grass, foliage and crops, a little of the region's dryness."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geoguess.synthetic.render.colours import (
    CONIFER_RGB,
    DRY_GRASS_RGB,
    FOLIAGE,
    GRASS,
    HAZE_RGB,
    MAIZE,
    MAIZE_HEIGHT_M,
    PINE_RGB,
    SEA_DEEP_RGB,
    SEASON_KEYS,
    SKY_CLEAR_RGB,
    SKY_OVERCAST_RGB,
    SOILS,
    WARM_RGB,
)


@dataclass
class Light:
    season: float  # 0..1, cyclic
    overcast: float  # 0 clear .. 1 fully overcast
    visibility_km: float
    sun_azimuth: float  # degrees, clockwise from north
    sun_elevation: float  # degrees
    direct: float  # strength of direct sunlight
    tint: np.ndarray  # (3,) colour of the light
    zenith: np.ndarray  # (3,) sky colour overhead
    haze: np.ndarray  # (3,) sky colour at the horizon


def draw_light(rng: np.random.Generator) -> Light:
    overcast = float(rng.beta(0.7, 1.1))
    elevation = float(rng.uniform(4, 68))
    low = math.exp(-elevation / 12.0)  # 1 at sunrise, ~0 at noon
    tint = np.float32(1) + (WARM_RGB / 255 / 0.92 - 1) * low * (1 - overcast) * 0.8
    haze = HAZE_RGB + (WARM_RGB - HAZE_RGB) * (0.6 * low * (1 - overcast))
    haze = haze * rng.normal(1.0, 0.03, 3).astype(np.float32)
    zenith = SKY_CLEAR_RGB * rng.uniform(0.85, 1.12, 3).astype(np.float32)
    zenith = zenith + (SKY_OVERCAST_RGB * rng.uniform(0.8, 1.1) - zenith) * overcast**0.7
    return Light(
        season=float(rng.random()),
        overcast=overcast,
        visibility_km=float(np.exp(rng.uniform(np.log(8.0), np.log(80.0)))),
        sun_azimuth=float(rng.uniform(0, 360)),
        sun_elevation=elevation,
        direct=(1 - overcast) * (0.35 + 0.65 * math.sin(math.radians(elevation))),
        tint=tint.astype(np.float32),
        zenith=zenith.astype(np.float32),
        haze=haze.astype(np.float32),
    )


def seasonal(table: np.ndarray, season: float) -> np.ndarray:
    """Interpolate a keyframe table (rows at `SEASON_KEYS`) at `season`."""
    out = [np.interp(season, SEASON_KEYS, table[:, k]) for k in range(table.shape[1])]
    return np.asarray(out, np.float32)


@dataclass
class Palette:
    grass: np.ndarray
    foliage: np.ndarray  # deciduous leaves, with the season
    evergreen: np.ndarray  # conifers, pines, cypresses and olives, whatever the season
    bare: bool  # deciduous trees without leaves
    maize: np.ndarray
    maize_height: float
    grassed: float  # how much grass grows between vines and olive trees
    soil: np.ndarray
    sea: np.ndarray


def make_palette(scene, light: Light, rng: np.random.Generator) -> Palette:
    """Colours of this location's vegetation: mostly the season's, a little the region's."""
    jitter = lambda: rng.normal(1.0, 0.06, 3).astype(np.float32)  # noqa: E731
    grass = seasonal(GRASS, light.season) * jitter()
    grass = grass + (DRY_GRASS_RGB - grass) * (0.15 * float(scene["dryness"]) * rng.random())
    season = light.season
    sea = SEA_DEEP_RGB + (light.zenith - SEA_DEEP_RGB) * (0.25 + 0.5 * light.overcast)
    return Palette(
        grass=grass,
        foliage=seasonal(FOLIAGE, season) * jitter(),
        evergreen=(CONIFER_RGB + (PINE_RGB - CONIFER_RGB) * rng.uniform(-0.2, 1.6)) * jitter(),
        bare=0.76 < season < 0.97,
        maize=seasonal(MAIZE, season) * jitter(),
        maize_height=float(np.interp(season, SEASON_KEYS, MAIZE_HEIGHT_M)),
        grassed=float(rng.uniform(0.1, 0.9)),
        soil=SOILS[rng.integers(len(SOILS))] * jitter(),
        sea=sea.astype(np.float32),
    )
