"""The structures along the road (`Layout.lines`): dry-stone walls, fences, hedges, guard rails,
wind screens, rows of maize and vines, the edges of woods. Each is a band of some height that
follows the road's curve (walls between fields run across it), found per image column by
casting the column's ray."""

from __future__ import annotations

import math

import numpy as np

from geoguess.synthetic.render.camera import CAMERA_HEIGHT_M, View, road_frame
from geoguess.synthetic.render.colours import METAL_RGB, STONE_WALL_RGB, TIMBER_RGB
from geoguess.synthetic.render.layout import Layout
from geoguess.synthetic.render.light import Light, Palette
from geoguess.synthetic.render.noise import hash_noise


def _line_depth(view: View, layout: Layout, across: float):
    """Per column, the depth where the column's ray meets the road-parallel curve at `across`."""
    east, north = view.ray_directions()
    a, n = road_frame(layout, east, north)
    k = layout.curve
    with np.errstate(divide="ignore", invalid="ignore"):
        straight = np.where(np.abs(n) > 1e-9, across / n, np.inf)
        qa = k * a * np.abs(a)
        disc = n * n - 4 * qa * across
        root = np.sqrt(np.maximum(disc, 0))
        r1, r2 = (n - root) / (2 * qa), (n + root) / (2 * qa)
        r1 = np.where(r1 > 0, r1, np.inf)
        r2 = np.where(r2 > 0, r2, np.inf)
        curved = np.where(disc >= 0, np.minimum(r1, r2), np.inf)
        lam = np.where(np.abs(qa) < 1e-7, straight, curved)
    lam = np.where(lam > 0.8, lam, np.inf)
    return lam, lam * a


def _cross_depth(view: View, layout: Layout, along: float):
    """Per column, the depth where the ray meets the line across the road at `along`."""
    east, north = view.ray_directions()
    a, n = road_frame(layout, east, north)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(np.abs(a) > 1e-9, along / a, np.inf)
    lam = np.where(lam > 0.8, lam, np.inf)
    return lam, lam * n


def paint_line(canvas, zbuf, view: View, layout, line, palette, light: Light, land_limit):
    """A structure of given height along the road: wall, guard rail, wind screen, maize, vines,
    trees."""
    kind, offset, a0, a1, height, params = line
    s, f, horizon = view.size, view.focal, view.horizon
    if params.get("across_road"):  # straight, at a fixed distance along the road
        lam, along = _cross_depth(view, layout, offset)
        across = float(np.mean((a0, a1)))
    else:
        lam, along = _line_depth(view, layout, offset)
        across = offset
    valid = np.isfinite(lam) & (along >= a0) & (along <= a1) & (lam < land_limit) & (lam < 800)
    if not valid.any():
        return
    lam, along = np.where(valid, lam, 1.0), np.where(valid, along, 0.0)
    gap_m = None  # per column: the open height under a canopy (umbrella pines)
    if kind == "wood":
        top_m, gap_m = _wood_profile(params["style"], along, height)
    elif kind == "hedge":
        top_m = height * (0.9 + 0.15 * hash_noise(along / 1.5, 1.0))
    else:
        top_m = np.full(s, height, np.float32)
    foot = horizon + f * CAMERA_HEIGHT_M / lam
    top = horizon + f * (CAMERA_HEIGHT_M - top_m) / lam
    r0 = int(max(math.floor(np.where(valid, top, s).min()), 0))
    r1 = int(min(math.ceil(np.where(valid, foot, 0).max()) + 1, s))
    if r1 <= r0:
        return
    rows = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
    mask = valid[None, :] & (rows >= top[None, :]) & (rows < foot[None, :] + 0.5)
    if gap_m is not None:
        under = horizon + f * (CAMERA_HEIGHT_M - gap_m) / lam
        mask &= rows < under[None, :]
    if kind == "fence":  # posts and two rails, see-through
        v_rows = (rows - top[None, :]) / np.maximum(foot - top, 1e-3)[None, :]
        post = ((along / 2.5) % 1.0 < 0.08 + 0.5 / np.maximum(f / lam, 0.5))[None, :]
        rail = (np.abs(v_rows - 0.15) < 0.07) | (np.abs(v_rows - 0.55) < 0.07)
        mask &= post | rail
    if kind == "wind_screen":  # upright slats with narrow slits between them
        mask &= ((along / 0.6) % 1.0 > 0.2 - 0.1 * np.minimum(lam / 40, 1))[None, :]
    mask &= lam[None, :] < zbuf[r0:r1]
    if not mask.any():
        return
    v = np.clip((rows - top[None, :]) / np.maximum(foot - top, 1e-3)[None, :], 0, 1)  # 0 at top
    colour = _line_colour(kind, along, v, lam, palette, params)
    side = 1.0 + 0.25 * light.direct * _facing(view, layout, across, light)
    colour = colour * side
    haze = (1 - np.exp(-lam / (light.visibility_km * 200.0)))[None, :, None]
    colour = (colour + (light.haze - colour) * haze) * light.tint
    region, depth = canvas[r0:r1], zbuf[r0:r1]
    region[mask] = np.broadcast_to(colour, (*mask.shape, 3))[mask]
    depth[mask] = np.broadcast_to(lam[None, :], mask.shape)[mask]


def _wood_profile(style: str, along: np.ndarray, height: float):
    """Per column: the top of a wood's edge (m), and the open height under it (m) or None."""
    jitter = hash_noise(along / 4.0, 3.0)
    if style == "conifer":  # saw teeth of spruce and fir
        phase = (along / 3.5) % 1.0
        return height * (0.75 + 0.3 * (1 - 2 * np.abs(phase - 0.5))) + 2 * jitter, None
    if style in ("cypresses", "poplars"):  # a row of columns, sky between them
        phase = (along / 3.5) % 1.0
        shape = np.sqrt(np.clip(1 - ((phase - 0.5) / 0.32) ** 2, 0, 1))
        top = height * (0.85 + 0.25 * jitter) * shape
        return np.where(shape > 0, top, -1.0), None
    if style == "umbrella":  # flat crowns of pines on bare trunks
        phase = (along / 6.0) % 1.0
        top = height * (0.92 + 0.1 * np.sqrt(np.clip(1 - (2 * phase - 1) ** 2, 0, 1)))
        trunk = np.abs(phase - 0.5) < 0.05
        return top, np.where(trunk, 0.0, height * (0.62 + 0.1 * jitter))
    if style == "macchia":  # low, dense, ragged scrub
        return height * (0.7 + 0.45 * hash_noise(along / 1.5, 5.0)), None
    phase = (along / 7.0) % 1.0  # round crowns of oak and beech
    return height * (
        0.8 + 0.25 * np.sqrt(np.clip(1 - (2 * phase - 1) ** 2, 0, 1))
    ) + 2 * jitter, None


def _facing(view: View, layout: Layout, across: float, light: Light) -> float:
    """+1 when a structure on this side of the road faces the sun, -1 when it is in shade."""
    normal = math.radians(layout.bearing + (-90 if across > 0 else 90))  # faces the road
    return math.cos(normal - math.radians(light.sun_azimuth))


def _line_colour(kind, along, v, lam, palette: Palette, params) -> np.ndarray:
    rows = v.shape[0]
    a = np.broadcast_to(along[None, :], v.shape)
    if kind == "wall":  # dry stone: blocks with dark joints
        block = hash_noise(a / 0.45 + np.floor(v * 4) * 0.5, v * 4)
        joint = ((a / 0.45 + np.floor(v * 4) * 0.5) % 1 < 0.12) | ((v * 4) % 1 < 0.15)
        shade = (0.75 + 0.35 * block) * np.where(joint & (lam[None, :] < 25), 0.6, 1.0)
        return STONE_WALL_RGB * shade[..., None]
    if kind == "guardrail":
        band = (v > 0.15) & (v < 0.55)
        post = (a % 4.0) < 0.25
        colour = np.where((band | post)[..., None], METAL_RGB, np.float32(np.nan))
        colour = np.where(np.isnan(colour), palette.grass * 0.8, colour)
        groove = (np.abs(v - 0.35) < 0.05)[..., None]
        return np.where(groove, METAL_RGB * 0.7, colour)
    if kind == "maize":
        leaf = hash_noise(a / 0.35, v * 6)
        stalk = (a / 0.35) % 1 < 0.35
        tassel = (v < 0.12)[..., None]
        base = palette.maize * (0.7 + 0.45 * leaf)[..., None]
        base = np.where(stalk[..., None], base * 0.8, base)
        return np.where(tassel, base * 1.15 + 15, base)
    if kind == "vine":
        leaf = hash_noise(a / 0.5, v * 4 + params["row"] * 7)
        colour = palette.foliage * (0.65 + 0.45 * leaf)[..., None]
        if palette.bare:
            colour = np.where((leaf > 0.55)[..., None], TIMBER_RGB, palette.soil)
        post = (a % 5.0) < 0.3
        return np.where(post[..., None], np.float32(150.0), colour)
    if kind == "wind_screen":  # grey panels on steel posts
        post = (a % 4.0) < 0.25
        return np.where(
            post[..., None], METAL_RGB * 0.7, METAL_RGB * 0.85 * (0.9 + 0.2 * v[..., None])
        )
    if kind == "fence":
        return TIMBER_RGB * 1.3 * (0.85 + 0.3 * hash_noise(a / 2.5, v * 2))[..., None]
    leaf = hash_noise(a / 1.2, v * 10)
    style = params.get("style", "round")
    if kind == "hedge" or style in ("round", "macchia", "poplars"):
        base = palette.foliage * 0.85
        if palette.bare and kind == "wood" and style in ("round", "poplars"):
            base = TIMBER_RGB * 0.9 + palette.grass * 0.1
        if style == "macchia":
            base = palette.evergreen
    else:
        base = palette.evergreen * (1.1 if style == "umbrella" else 1.0)
    if style == "umbrella":  # the trunks below the canopy
        base = np.where((v > 0.4)[..., None], TIMBER_RGB * 0.7, base)
    shade = (0.7 + 0.45 * leaf) * (1.05 - 0.3 * v)
    return base * shade[..., None] + np.zeros((rows, 1, 1), np.float32)
