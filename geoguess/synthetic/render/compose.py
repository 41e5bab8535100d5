"""One location's four views: its drawn zone style, light, palette and layout (`compose_scene`),
then the sky, mountains, ground, structures and objects of each view, and the camera's finish
(`render_views`). The order of the random draws here is the generator's: it decides every byte."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from geoguess.data.io import HEADINGS
from geoguess.synthetic.render.camera import View
from geoguess.synthetic.render.ground import paint_ground
from geoguess.synthetic.render.layout import draw_layout, weighted_choice
from geoguess.synthetic.render.light import draw_light, make_palette
from geoguess.synthetic.render.lines import paint_line
from geoguess.synthetic.render.noise import noise_tile
from geoguess.synthetic.render.sky import mountain_profile, paint_mountains, paint_sky
from geoguess.synthetic.render.sprites import paint_sprites
from geoguess.synthetic.style import zone_style

RAYS_PER_VIEW = 5  # rays at -45, -22.5, 0, 22.5, 45 degrees of a 90-degree view
RAYS_TOTAL = 16

# (4, 5) indices into the 16 compass rays (22.5 degrees apart), left to right for each heading.
VIEW_RAYS = (np.arange(4)[:, None] * 4 + np.arange(-2, 3)[None, :]) % RAYS_TOTAL


def compose_scene(scene: dict[str, np.ndarray], rng: np.random.Generator):
    """One location's drawn zone style, light, palette and layout, in the renderer's RNG order.

    Returns `(scene, light, palette, layout)`: `scene` with the drawn zone's shares and chances
    added. `render_views` draws from it; `experiments/perception_gap.py` counts its objects.
    """
    scene = {**scene, **zone_style(weighted_choice(rng, scene["zones"]))}
    scene["wood_form"] = weighted_choice(rng, scene["tree_forms"])  # woods here are mostly of it
    light = draw_light(rng)
    palette = make_palette(scene, light, rng)
    return scene, light, palette, draw_layout(scene, palette, rng)


def render_views(scene: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """The four views (headings 0, 90, 180, 270) of one location: uint8 (4, size, size, 3).

    `scene` holds one location's entries of `scene.scene_parameters`.
    """
    s = int(size)
    scene, light, palette, layout = compose_scene(scene, rng)
    horizon = s * (0.5 + float(rng.normal(0.0, 0.03)))
    horizon = min(max(horizon, s * 0.38), s * 0.62)
    columns = _column_weights(s).T  # rays -> image columns
    mountain_px = mountain_profile(scene["horizon_angle"][VIEW_RAYS] @ columns, s, rng)
    sea_px = s * (scene["sea_band"][VIEW_RAYS] @ columns)  # (4, S)
    image = np.empty((4, s, s, 3), np.float32)
    depth = np.empty((4, s, s), np.float32)
    sky_seed = int(rng.integers(2**31))
    for index, heading in enumerate(HEADINGS):
        view = View(float(heading), s, horizon)
        canvas, zbuf = image[index], depth[index]
        paint_sky(canvas, zbuf, view, light, np.random.default_rng([sky_seed, index]))
        paint_mountains(canvas, zbuf, view, mountain_px[index], scene, light, rng)
        land_limit = paint_ground(canvas, zbuf, view, layout, palette, light, sea_px[index], rng)
        for line in layout.lines:
            paint_line(canvas, zbuf, view, layout, line, palette, light, land_limit)
        paint_sprites(canvas, zbuf, view, layout, palette, light, land_limit)
    return _finish(image, rng)


@lru_cache(maxsize=8)
def _column_weights(size: int) -> np.ndarray:
    """(S, 5): linear interpolation of each image column between the view's five rays."""
    offset = 2.0 * (np.arange(size) + 0.5) / size - 1.0
    position = (np.degrees(np.arctan(offset)) + 45.0) / 22.5  # 0..4 across the view
    low = np.clip(np.floor(position).astype(int), 0, RAYS_PER_VIEW - 2)
    frac = position - low
    weights = np.zeros((size, RAYS_PER_VIEW), np.float32)
    weights[np.arange(size), low] = 1 - frac
    weights[np.arange(size), low + 1] = frac
    return weights


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera variation: one exposure and white balance per location, sensor noise; to uint8."""
    s = image.shape[1]
    exposure = np.float32(np.exp(rng.normal(0.0, 0.18)))
    balance = rng.normal(1.0, 0.06, 3).astype(np.float32)
    image *= exposure * balance * rng.uniform(0.95, 1.05, (4, 1, 1, 1)).astype(np.float32)
    tile = noise_tile(s)
    for view in range(4):
        dy, dx = rng.integers(0, 61), rng.integers(0, 67)
        image[view] += tile[dy : dy + s, dx : dx + s]
    return np.clip(image, 0, 255, out=image).astype(np.uint8)
