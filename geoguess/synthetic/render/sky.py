"""The sky and the horizon: haze, clouds and sun glare, then the silhouettes of the mountains and
islands in each direction, fading into the haze with distance."""

from __future__ import annotations

import math

import numpy as np

from geoguess.synthetic.render.camera import FAR, SEA_DEPTH, View
from geoguess.synthetic.render.colours import CLOUD_RGB, ROCK_RGB
from geoguess.synthetic.render.light import Light
from geoguess.synthetic.render.noise import interpolation_matrix, smooth_grid_noise

VERTICAL_FOV_RAD = np.pi / 2
RELIEF_EXAGGERATION = 3.0  # real slopes are a few degrees: invisible at 128 px


def mountain_profile(angle: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Silhouette height in pixels per column, (4, S): relief plus a rough ridge line."""
    height = np.clip(RELIEF_EXAGGERATION * angle / VERTICAL_FOV_RAD, 0, 0.42) * s
    ridge = 0.7 * _ridge_noise(rng, 6, s) + 0.3 * _ridge_noise(rng, 17, s)  # in [0, 1)
    return height * (0.85 + 0.3 * ridge) + 2.0 * ridge * (height > 0.5)


def _ridge_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    return rng.random((4, cells), dtype=np.float32) @ interpolation_matrix(cells, size).T


def paint_sky(canvas, zbuf, view: View, light: Light, rng) -> None:
    """Sky over the whole canvas: haze at the horizon, the zenith colour above, clouds, sun."""
    s, horizon = view.size, view.horizon
    rows = np.arange(s, dtype=np.float32)
    up = np.clip((horizon - rows) / (horizon + 0.35 * s), 0, 1) ** 0.55
    sky = light.haze + (light.zenith - light.haze) * up[:, None]  # (S, 3)
    sky = np.broadcast_to(sky[:, None, :], (s, s, 3)).copy()
    cover = min(max(light.overcast * 1.1 + rng.normal(0, 0.08), 0.0), 1.0)
    high = max(int(math.ceil(horizon)), 1)  # clouds only above the horizon
    puffs = 0.6 * smooth_grid_noise(rng, (4, 6), (high, s)) + 0.4 * smooth_grid_noise(
        rng, (8, 13), (high, s)
    )
    fade = np.clip(up[:high] * 2.5, 0, 1)[:, None]  # thin towards the horizon, into the haze
    clouds = np.clip((puffs - (1 - cover) * 0.85) * 4, 0, 1) * fade
    shading = 1.0 - 0.35 * light.overcast * smooth_grid_noise(rng, (5, 8), (high, s))
    grey = CLOUD_RGB * shading[..., None]
    sky[:high] += (grey - sky[:high]) * clouds[..., None]
    relative = (light.sun_azimuth - view.heading + 180) % 360 - 180
    if abs(relative) < 60 and light.direct > 0.1:  # the sun in or near this view: glare
        col = s / 2 + view.focal * math.tan(math.radians(relative))
        row = horizon - view.focal * math.tan(math.radians(light.sun_elevation))
        cols = np.arange(s, dtype=np.float32)
        d2 = ((cols[None, :] - col) ** 2 + (rows[:, None] - row) ** 2) / (0.35 * s) ** 2
        glare = light.direct * 0.8 * np.exp(-d2)[..., None]
        sky += (np.array([255, 248, 232], np.float32) - sky) * glare
    canvas[:] = sky * light.tint
    zbuf[:] = FAR


def paint_mountains(canvas, zbuf, view: View, profile, scene, light: Light, rng) -> None:
    """Silhouettes of relief and islands over the sky, fading into the haze with distance."""
    s, horizon = view.size, view.horizon
    if profile.max() < 0.5:
        return
    top = int(max(math.floor(horizon - profile.max()), 0))
    bottom = int(math.ceil(horizon)) + 1
    rows = np.arange(top, bottom, dtype=np.float32)[:, None] + 0.5
    mask = (rows >= horizon - profile[None, :]) & (rows < horizon + 1)
    clearness = math.exp(-15.0 / light.visibility_km)
    clarity = np.clip(profile / (0.25 * s), 0.2, 0.75) * (0.35 + 0.65 * clearness)
    tone = np.array([62, 82, 70], np.float32) * (0.8 + 0.2 * light.season)
    rocky = 0.6 * float(scene["rock"])
    streaks = smooth_grid_noise(rng, (6, 40), (bottom - top, s))
    bare = np.clip((streaks - 0.5) * 5, 0, 1) * rocky
    tone = tone + (ROCK_RGB * 0.8 - tone) * bare[..., None]
    # Lower slopes lie farther in the haze than the ridge above them.
    height = np.clip((horizon - rows) / np.maximum(profile[None, :], 1), 0, 1)[..., None]
    clarity = clarity[None, :, None] * (0.75 + 0.25 * height)
    colour = light.haze + (tone - light.haze) * clarity
    region = canvas[top:bottom]
    region[:] = np.where(mask[..., None], colour * light.tint, region)
    zbuf[top:bottom][mask] = SEA_DEPTH * 2
