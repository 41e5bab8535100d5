"""The ground below the horizon: the road and its markings, the verges, each field's own surface,
the far land, and the sea band where the sea lies."""

from __future__ import annotations

import math

import numpy as np

from geoguess.synthetic.render.camera import (
    CAMERA_HEIGHT_M,
    SEA_DEPTH,
    View,
    camera_to_world,
    road_frame,
)
from geoguess.synthetic.render.colours import (
    ASPHALT_RGB,
    DRY_GRASS_RGB,
    GRAVEL_RGB,
    LINE_RGB,
    ROCK_RGB,
)
from geoguess.synthetic.render.layout import Layout
from geoguess.synthetic.render.light import Light, Palette
from geoguess.synthetic.render.noise import hash_noise


def _ground_coordinates(view: View, layout: Layout, rows: np.ndarray):
    """Per ground pixel: depth ahead (m), and the point's (along, across) in the road's frame."""
    s, f = view.size, view.focal
    depth = f * CAMERA_HEIGHT_M / np.maximum(rows + 0.5 - view.horizon, 0.05)  # (R, 1)
    right = (np.arange(s, dtype=np.float32)[None, :] + 0.5 - s / 2) / f * depth  # (R, S)
    east, north = camera_to_world(view, depth, right)
    along, across = road_frame(layout, east, north)
    return np.broadcast_to(depth, right.shape), along, across - layout.curve * along * np.abs(along)


def paint_ground(canvas, zbuf, view, layout: Layout, palette, light, sea_px, rng) -> np.ndarray:
    """Road, verges, fields and far land below the horizon; the sea band where it lies.

    Returns per column the distance beyond which the land ends in the sea (inf: no sea).
    """
    s, horizon = view.size, view.horizon
    first = int(math.floor(horizon))
    rows = np.arange(first, s, dtype=np.float32)[:, None]
    depth, along, across = _ground_coordinates(view, layout, rows)
    dist = np.abs(across)
    texture = 0.9 + 0.2 * hash_noise(along * 1.3, across * 1.3)
    colour = np.broadcast_to(palette.grass * texture[..., None], (*depth.shape, 3)).copy()
    reach = np.zeros_like(dist)
    for plot in layout.plots:
        stretch = (np.sign(across) == plot.side) & (along >= plot.along0) & (along < plot.along1)
        reach = np.where(stretch, plot.depth, reach)
        inside = stretch & (dist > layout.half_width + layout.verge) & (dist < plot.depth)
        _field_ground(colour, inside, plot.kind, along, across, depth, palette)
    far = dist >= np.where(reach > 0, reach, 60.0)
    mottle = 0.3 * hash_noise(along / 40, across / 40)[..., None]
    mottled = palette.grass + (palette.soil - palette.grass) * mottle
    colour[far] = mottled[far] * 0.92
    road = dist < layout.half_width
    surface = GRAVEL_RGB if layout.gravel else ASPHALT_RGB
    colour[road] = surface * (0.93 + 0.1 * hash_noise(along * 2, across * 2))[road][:, None]
    if not layout.gravel:
        centre = (dist < 0.08 + 0.004 * depth) & (np.floor(along / 4.5) % 2 == 0)
        edge = np.abs(dist - layout.half_width + 0.25) < 0.08 + 0.004 * depth
        colour[centre | edge] = LINE_RGB
    shoulder = (dist >= layout.half_width) & (dist < layout.half_width + 0.7)
    colour[shoulder] = colour[shoulder] * 0.6 + GRAVEL_RGB * 0.4
    haze = 1 - np.exp(-depth / (light.visibility_km * 200.0))
    haze = np.maximum(haze, 0.4 * np.exp(-(rows - horizon) / (0.05 * s)))[..., None]
    shade = 0.75 + 0.35 * light.direct
    colour = colour * shade
    colour += (light.haze - colour) * haze
    canvas[first:] = colour * light.tint
    zbuf[first:] = depth
    land_limit = np.full(s, np.inf, np.float32)
    if sea_px.max() >= 0.5:
        land_limit = _paint_sea(canvas, zbuf, view, sea_px, palette, light, rng)
    return land_limit


def _field_ground(colour, side, kind, along, across, depth, palette: Palette) -> None:
    """Ground of one field kind, in place, where `side` is true."""
    if kind == "wood":
        colour[side] = colour[side] * 0.7
        return
    # Only the field's own pixels: most fields cover a small part of a view, or none of it.
    if not side.any():
        return
    along, across, depth = along[side], across[side], depth[side]
    if kind == "maize":  # rows along the road, or bare stubble out of season
        stripe = (np.floor(np.abs(across) / 0.8) % 2 == 0) & (depth < 40)
        value = np.where(stripe, 0.82, 1.0)[..., None] * (palette.maize * 0.6 + palette.soil * 0.4)
        colour[side] = value
    elif kind == "vineyard" or kind == "olive_grove":
        soil = palette.soil + (palette.grass - palette.soil) * palette.grassed
        colour[side] = soil * (0.9 + 0.2 * hash_noise(along * 3, across * 3))[:, None]
    elif kind == "karst":
        rock = hash_noise(along * 1.7 + 11, across * 1.7 + 5) > 0.78
        shadow = hash_noise(along * 1.7 + 11, across * 1.7 + 5.6) > 0.85
        dry = palette.grass * 0.8 + DRY_GRASS_RGB * 0.2
        patch = np.where(rock[..., None], (ROCK_RGB + palette.grass) * 0.5, dry)
        patch = np.where((shadow & ~rock)[..., None], patch * 0.75, patch)
        colour[side] = patch
    elif kind == "ploughed":  # furrows along the road
        furrow = 0.8 + 0.25 * (np.floor(np.abs(across) / 0.7) % 2)
        colour[side] = palette.soil * np.where(depth < 40, furrow, 0.9)[..., None]


def _paint_sea(canvas, zbuf, view: View, sea_px, palette: Palette, light: Light, rng):
    s, horizon = view.size, view.horizon
    top = int(math.floor(horizon))
    band = int(math.ceil(horizon + sea_px.max())) + 1
    rows = np.arange(top, min(band, s), dtype=np.float32)[:, None] + 0.5
    within = (rows >= horizon) & (rows < horizon + sea_px[None, :])
    depth = np.clip((rows - horizon) / np.maximum(sea_px[None, :], 1), 0, 1)[..., None]
    sea = light.haze + (palette.sea - light.haze) * (0.35 + 0.65 * depth)
    ripple = rng.standard_normal((rows.shape[0], 1, 1), dtype=np.float32)
    sea = sea * (1 + 0.05 * ripple + 0.04 * rng.standard_normal((1, s, 1), dtype=np.float32))
    region = canvas[top : top + rows.shape[0]]
    region[:] = np.where(within[..., None], sea * light.tint, region)
    zbuf[top : top + rows.shape[0]][within] = SEA_DEPTH
    px = np.maximum(sea_px, 1e-3)
    limit = view.focal * CAMERA_HEIGHT_M / px
    return np.where(sea_px >= 0.5, limit, np.inf).astype(np.float32)
