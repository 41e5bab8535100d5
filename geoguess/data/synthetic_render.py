"""Draw the four street views of one synthetic location with numpy (no per-pixel Python loops).

A view is sky with clouds, the horizon seen from the location (mountain silhouettes from the
world's relief, a band of sea where the sea lies in that direction), the ground in the region's
vegetation colour, a road, houses and trees. Per-image randomness (camera pitch, exposure, white
balance, object placement, sensor noise) keeps the task from being trivial.

Only numpy here: the pool workers that run it never import shapely or torch. The camera is
level, so one horizon row serves all four views and sky and ground are plain row slices.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

HEADINGS = (0, 90, 180, 270)
RAYS_PER_VIEW = 5  # rays at -45, -22.5, 0, 22.5, 45 degrees of a 90-degree view
RAYS_TOTAL = 16
# (4, 5) indices into the 16 compass rays (22.5 degrees apart), left to right for each heading.
VIEW_RAYS = (np.arange(4)[:, None] * 4 + np.arange(-2, 3)[None, :]) % RAYS_TOTAL
VERTICAL_FOV_RAD = np.pi / 2
RELIEF_EXAGGERATION = 2.5  # real slopes are a few degrees: invisible at 128 px
SENSOR_NOISE = 5.0  # standard deviation in 0..255 units
NOISE_SEED = 7_771  # the sensor-noise tile is fixed; each view takes a random window of it

HAZE_RGB = np.array([214, 221, 230], np.float32)
CLOUD_RGB = np.array([238, 240, 243], np.float32)
SEA_NEAR_RGB = np.array([34, 92, 146], np.float32)
SEA_FAR_RGB = np.array([86, 146, 188], np.float32)
ASPHALT_RGB = np.array([86, 86, 90], np.float32)
GRAVEL_RGB = np.array([182, 172, 150], np.float32)
LINE_RGB = np.array([232, 232, 226], np.float32)


def render_views(scene: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """The four views (headings 0, 90, 180, 270) of one location: uint8 (4, size, size, 3).

    `scene` holds one location's entries of `synthetic_world.scene_parameters`.
    """
    s = int(size)
    horizon = int(round(s * (0.5 + rng.normal(0.0, 0.02))))
    horizon = min(max(horizon, s // 4), 3 * s // 4)
    columns = _column_weights(s).T  # rays -> image columns
    mountain_px = _mountain_profile(scene["horizon_angle"][VIEW_RAYS] @ columns, s, rng)
    sea_px = s * (scene["sea_band"][VIEW_RAYS] @ columns)  # (4, S)

    image = np.empty((4, s, s, 3), np.float32)
    image[:, :horizon] = _sky(scene, horizon, s, rng)
    _paint_mountains(image[:, :horizon], scene, mountain_px)
    image[:, horizon:] = _ground(scene, s - horizon, s, rng)
    road_centres = _paint_road(image, scene, horizon, s, rng)
    if sea_px.max() >= 0.5:
        _paint_sea(image[:, horizon:], sea_px, rng)
    _paint_objects(image, scene, horizon, horizon + sea_px, road_centres, rng)
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


@lru_cache(maxsize=64)
def _interpolation_matrix(cells: int, size: int) -> np.ndarray:
    """(size, cells): smooth interpolation of a coarse random grid onto `size` pixels."""
    position = np.clip((np.arange(size) + 0.5) / size * cells - 0.5, 0, cells - 1.001)
    low = position.astype(int)
    frac = position - low
    frac = frac * frac * (3 - 2 * frac)  # smoothstep: no creases at the coarse nodes
    matrix = np.zeros((size, cells), np.float32)
    matrix[np.arange(size), low] = 1 - frac
    matrix[np.arange(size), low + 1] = frac
    return matrix


def _smooth_noise(rng: np.random.Generator, cells: tuple[int, int], shape: tuple[int, int]):
    """(4, rows, cols) smooth noise in [0, 1): a coarse random grid, upsampled."""
    coarse = rng.random((4, *cells), dtype=np.float32)
    rows = _interpolation_matrix(cells[0], shape[0])
    cols = _interpolation_matrix(cells[1], shape[1])
    return rows @ coarse @ cols.T


def _mountain_profile(angle: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Silhouette height in pixels per column, (4, S): relief plus a rough ridge line."""
    height = np.clip(RELIEF_EXAGGERATION * angle / VERTICAL_FOV_RAD, 0, 0.42) * s
    ridge = 0.7 * _ridge_noise(rng, 6, s) + 0.3 * _ridge_noise(rng, 17, s)  # in [0, 1)
    return height * (0.85 + 0.3 * ridge) + 3.0 * ridge


def _ridge_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    return rng.random((4, cells), dtype=np.float32) @ _interpolation_matrix(cells, size).T


def _sky(scene, horizon: int, s: int, rng: np.random.Generator) -> np.ndarray:
    """(4, horizon, S, 3): haze at the horizon, the region's sky colour above, clouds."""
    up = ((horizon - np.arange(horizon, dtype=np.float32)) / horizon) ** 0.6
    sky = HAZE_RGB + (scene["sky"] - HAZE_RGB) * up[:, None]  # (horizon, 3)
    cloudiness = min(max(scene["cloudiness"] + rng.normal(0, 0.1), 0.0), 0.9)
    puffs = 0.65 * _smooth_noise(rng, (2, 4), (horizon, s))
    puffs += 0.35 * _smooth_noise(rng, (4, 9), (horizon, s))
    # Clouds thin out towards the horizon, where the haze takes over.
    cover = np.clip((puffs - (1 - cloudiness)) * 5, 0, 1) * np.sqrt(up)[:, None]
    sky = sky[None, :, None, :]
    return sky + (CLOUD_RGB - sky) * cover[..., None]


def _paint_mountains(sky: np.ndarray, scene, mountain_px: np.ndarray) -> None:
    """Silhouettes over the sky rows, in place; low distant ridges fade into the haze."""
    horizon, s = sky.shape[1], sky.shape[2]
    rows = np.arange(horizon, dtype=np.float32)[None, :, None]
    mask = rows >= horizon - mountain_px[:, None, :]
    clarity = np.clip(mountain_px / (0.25 * s), 0.25, 0.8)[..., None]  # (4, S, 1)
    colour = HAZE_RGB + (scene["mountain"] - HAZE_RGB) * clarity
    sky[:] = np.where(mask[..., None], colour[:, None], sky)


def _ground(scene, rows: int, s: int, rng: np.random.Generator) -> np.ndarray:
    """(4, rows, S, 3): vegetation colour with patches of bare soil, hazier far away."""
    texture = 0.875 + 0.25 * _smooth_noise(rng, (6, 12), (rows, s))
    ground = scene["ground"] * texture[..., None]
    soil = np.clip((_smooth_noise(rng, (3, 7), (rows, s)) - 0.62) * 4, 0, 0.7)[..., None]
    ground += (scene["soil"] - ground) * soil
    haze = 0.45 * np.exp(-np.arange(rows, dtype=np.float32) / (0.06 * s))[:, None, None]
    return ground + (HAZE_RGB - ground) * haze


def _paint_sea(ground: np.ndarray, sea_px: np.ndarray, rng: np.random.Generator) -> None:
    """A band of sea below the horizon, lighter far away, with glitter; in place."""
    band = int(math.ceil(sea_px.max()))
    rows = np.arange(band, dtype=np.float32)[None, :, None]
    depth = np.clip(rows / np.maximum(sea_px[:, None, :], 1), 0, 1)[..., None]
    sea = SEA_FAR_RGB + (SEA_NEAR_RGB - SEA_FAR_RGB) * depth
    sea *= 1 + 0.06 * rng.standard_normal(depth.shape[:3] + (1,), dtype=np.float32)
    top = ground[:, :band]
    top[:] = np.where((rows < sea_px[:, None, :])[..., None], sea, top)


def _paint_road(image, scene, horizon: int, s: int, rng: np.random.Generator) -> list:
    """A road along a random bearing: towards a vanishing point where a view looks along it,
    across the bottom where it looks sideways. Returns each view's vanishing column or None.
    """
    bearing = rng.uniform(0, 180)
    gravel = rng.random() < scene["gravel"]
    colour = (GRAVEL_RGB if gravel else ASPHALT_RGB) * rng.uniform(0.85, 1.15)
    t = ((np.arange(horizon, s) - horizon + 0.5) / (s - horizon)).astype(np.float32)[:, None]
    cols = np.arange(s, dtype=np.float32)[None, :]
    centres = []
    for view, heading in enumerate(HEADINGS):
        relative = (bearing - heading + 90) % 180 - 90  # the road runs both ways
        if abs(relative) >= 50:
            top = int(s * rng.uniform(0.84, 0.9))
            image[view, top:] = colour
            image[view, top : top + max(1, s // 64)] = LINE_RGB * 0.9
            centres.append(None)
            continue
        vanish = s / 2 + s / 2 * math.tan(math.radians(relative))
        offset = np.abs(cols - (vanish + (s / 2 + rng.normal(0, 0.06 * s) - vanish) * t))
        below = image[view, horizon:]
        below[:] = np.where((offset < 0.55 * s * t)[..., None], colour, below)
        if not gravel:
            dash = (np.log(t) * 6 % 2 < 1) & (offset < 0.02 * s * t + 0.4)
            below[:] = np.where(dash[..., None], LINE_RGB, below)
        centres.append(vanish)
    return centres


def _paint_objects(image, scene, horizon: int, sea_bottom, road_centres, rng) -> None:
    """Houses and trees standing on the ground, far ones first so near ones cover them."""
    s = image.shape[1]
    depth = s - horizon
    objects = []
    for view in range(4):
        n_houses = rng.poisson(0.3 + 6.0 * scene["settlement"])
        n_trees = rng.poisson(1.0 + 9.0 * scene["tree_density"])
        for kind, count in (("house", n_houses), ("tree", n_trees)):
            for _ in range(count):
                objects.append((horizon + 1 + rng.random() ** 1.5 * depth * 1.1, view, kind))
    objects.sort(key=lambda item: item[0])
    for base, view, kind in objects:
        scale = (base - horizon) / depth
        x = _beside_road(road_centres[view], scale, s, rng)
        if base < sea_bottom[view, min(max(int(x), 0), s - 1)]:
            continue  # nothing stands in the sea
        paint = _paint_house if kind == "house" else _paint_tree
        paint(image[view], scene, x, base, scale, rng)


def _beside_road(vanish: float | None, scale: float, s: int, rng) -> float:
    if vanish is None:  # the road crosses the bottom: anywhere goes
        return rng.uniform(0, s)
    road_x = vanish + (s / 2 - vanish) * scale
    side = 1 if rng.random() < 0.5 else -1
    return road_x + side * (0.6 * s * scale + rng.uniform(1, 0.5 * s))


def _paint_house(canvas, scene, x, base, scale, rng) -> None:
    s = canvas.shape[0]
    height = s * (0.02 + 0.3 * scale) * rng.uniform(0.7, 1.3)
    width = height * rng.uniform(1.0, 2.0)
    wall = scene["wall"] * rng.uniform(0.85, 1.1)
    roof = scene["roof"] * rng.uniform(0.8, 1.15)
    top = base - height
    _fill(canvas, x - width / 2, top, x + width / 2, base, wall)
    window = height * 0.18
    if window >= 1.5:
        for wx in np.arange(x - width / 2 + window, x + width / 2 - window, 2.5 * window):
            _fill(canvas, wx, top + window, wx + window, top + 2.2 * window, wall * 0.35)
    roof_height = height * rng.uniform(0.35, 0.6)
    r0, r1 = int(max(top - roof_height, 0)), int(max(top, 0))
    c0, c1 = int(max(x - width / 2 - 1, 0)), int(min(x + width / 2 + 2, s))
    if r1 <= r0 or c1 <= c0:
        return
    rows = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
    reach = (width / 2 + 1) * (rows - (top - roof_height)) / roof_height
    mask = np.abs(np.arange(c0, c1, dtype=np.float32)[None, :] - x) < reach
    patch = canvas[r0:r1, c0:c1]
    patch[:] = np.where(mask[..., None], roof, patch)


def _paint_tree(canvas, scene, x, base, scale, rng) -> None:
    s = canvas.shape[0]
    height = s * (0.04 + 0.5 * scale) * rng.uniform(0.6, 1.3)
    cypress = rng.random() < scene["cypress"]
    width = height * (rng.uniform(0.18, 0.28) if cypress else rng.uniform(0.5, 0.9))
    colour = scene["tree"] * rng.uniform(0.75, 1.15)
    trunk = height * (0.05 if cypress else 0.25)
    _fill(canvas, x - width * 0.06, base - trunk, x + width * 0.06 + 0.5, base, colour * 0.45)
    cy, ry, rx = base - trunk - (height - trunk) / 2, (height - trunk) / 2, width / 2
    r0, r1 = int(max(cy - ry, 0)), int(min(cy + ry + 1, s))
    c0, c1 = int(max(x - rx, 0)), int(min(x + rx + 1, s))
    if r1 <= r0 or c1 <= c0:
        return
    dy = (np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5 - cy) / max(ry, 0.5)
    dx = (np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5 - x) / max(rx, 0.5)
    inside = dx**2 + dy**2 < 1
    shade = (1.1 - 0.25 * (dx + dy))[..., None]  # lit from the upper left
    patch = canvas[r0:r1, c0:c1]
    patch[:] = np.where(inside[..., None], colour * shade, patch)


def _fill(canvas, x0, y0, x1, y1, colour) -> None:
    s = canvas.shape[0]
    r0, r1 = min(max(int(y0), 0), s), min(max(math.ceil(y1), 0), s)
    c0, c1 = min(max(int(x0), 0), s), min(max(math.ceil(x1), 0), s)
    canvas[r0:r1, c0:c1] = colour


@lru_cache(maxsize=8)
def _noise_tile(size: int) -> np.ndarray:
    rng = np.random.default_rng(NOISE_SEED)
    return SENSOR_NOISE * rng.standard_normal((size + 61, size + 67, 3), dtype=np.float32)


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera variation per view: exposure, white balance and sensor noise; to uint8."""
    s = image.shape[1]
    exposure = rng.uniform(0.8, 1.2, (4, 1, 1, 1)).astype(np.float32)
    image *= exposure * rng.normal(1.0, 0.04, (4, 1, 1, 3)).astype(np.float32)
    tile = _noise_tile(s)
    for view in range(4):
        dy, dx = rng.integers(0, 61), rng.integers(0, 67)
        image[view] += tile[dy : dy + s, dx : dx + s]
    return np.clip(image, 0, 255, out=image).astype(np.uint8)
