"""The zones' own landmarks (`style.ZONE_EXTRAS`): kažuni, haystacks, church towers (stone
campanile, onion dome, neo-Gothic spire), wind turbines, well sweeps and hayracks."""

from __future__ import annotations

import numpy as np

from geoguess.synthetic.render.colours import (
    DRY_GRASS_RGB,
    PLASTERS,
    ROOFS,
    STONE_WALL_RGB,
    TIMBER_RGB,
)
from geoguess.synthetic.render.light import Palette
from geoguess.synthetic.render.noise import hash_noise
from geoguess.synthetic.render.sprite import Sprite


def paint_kazun(sp: Sprite, params, palette) -> None:
    """Istria's kazun: a round dry-stone hut under a corbelled stone cone."""
    box = sp.box(-1.8, 4.6, 1.8, 0)
    if box is None or sp.ppm < 0.8:
        return
    bounds, xm, ym = box
    course = hash_noise(xm / 0.4 + np.floor(ym / 0.3) * 0.5, ym / 0.3)
    stone = STONE_WALL_RGB * (0.8 + 0.3 * course)[..., None]
    drum = (np.abs(xm) < 1.6) & (ym < 2.3)
    cone = (ym >= 2.3) & (np.abs(xm) < 1.75 * (1 - (ym - 2.3) / 2.3))
    door = (np.abs(xm) < 0.35) & (ym < 1.4)
    sp.put(bounds, drum | cone, stone, sp.sun_side(xm, 1.6))
    sp.put(bounds, door, np.float32([45, 40, 36]))


def paint_haystack(sp: Sprite, params, palette: Palette) -> None:
    """A haystack of the mountain meadows: a cone of hay round a pole sticking out on top."""
    height = params["height"]
    box = sp.box(-1.3, height + 0.8, 1.3, 0)
    if box is None or height * sp.ppm < 1.5:
        return
    bounds, xm, ym = box
    u, v = xm / 1.3, ym / height
    hay = (v < 1) & (np.abs(u) < np.clip(1.25 * np.sqrt(np.clip(1 - v, 0, 1)), 0, 1))
    pole = (np.abs(xm) < max(0.06, 0.4 / sp.ppm)) & (v >= 0.9)
    colour = (palette.grass * 0.35 + DRY_GRASS_RGB * 0.65) * 0.85
    sp.put(bounds, pole, TIMBER_RGB * 0.6)
    sp.put(bounds, hay, colour * (0.85 + 0.3 * hash_noise(xm * 4, ym * 4))[..., None],
           sp.sun_side(xm, 1.3))  # fmt: skip


def _tower_shaft(sp: Sprite, params, colour):
    """A square church tower's shaft with its belfry openings; returns the box or None."""
    height, width = params["height"], params["width"]
    half = width / 2
    box = sp.box(-half - 0.4, height * 1.9, half + 0.4, 0)
    if box is None or height * sp.ppm < 3:
        return None
    bounds, xm, ym = box
    shaft = (np.abs(xm) <= half) & (ym < height)
    sp.put(bounds, shaft, colour, sp.sun_side(xm, half))
    belfry = (np.abs(np.abs(xm) - half / 2) < half / 4) & (ym > height - 3.2) & (ym < height - 1)
    sp.put(bounds, belfry, np.float32([40, 38, 36]))
    return bounds, xm, ym


def paint_campanile(sp: Sprite, params, palette) -> None:
    """The coast's stone bell tower under a low pyramid roof."""
    stone = STONE_WALL_RGB * params["shade"]
    box = _tower_shaft(sp, params, stone)
    if box is None:
        return
    bounds, xm, ym = box
    height, half = params["height"], params["width"] / 2 + 0.3
    roof = (ym >= height) & (np.abs(xm) < half * (1 - (ym - height) / (0.9 * half)))
    sp.put(bounds, roof, ROOFS[1] * params["shade"], sp.sun_side(xm, half))


def paint_onion_tower(sp: Sprite, params, palette) -> None:
    """A baroque plastered tower under an onion dome and a lantern spike."""
    box = _tower_shaft(sp, params, PLASTERS[params["plaster"]] * params["shade"])
    if box is None:
        return
    bounds, xm, ym = box
    height, half = params["height"], params["width"] / 2
    v = (ym - height) / (1.4 * half)  # 0..1 over the dome
    bulb = half * 1.3 * np.clip(np.sin(np.pi * np.clip(v, 0, 1)), 0, 1) ** 0.6 * (1.25 - 0.6 * v)
    dome = (v >= 0) & (v < 1) & (np.abs(xm) < np.maximum(bulb, 0.15))
    spike = (v >= 1) & (v < 1.5) & (np.abs(xm) < max(0.12, 0.5 / sp.ppm))
    sp.put(bounds, dome | spike, np.float32([66, 92, 82]), sp.sun_side(xm, half))


def paint_spire(sp: Sprite, params, palette) -> None:
    """Slavonia's neo-Gothic tower: a plastered shaft under a tall, needle-like spire."""
    box = _tower_shaft(sp, params, PLASTERS[params["plaster"]] * params["shade"])
    if box is None:
        return
    bounds, xm, ym = box
    height, half = params["height"], params["width"] / 2 + 0.2
    rise = 0.9 * height
    spire = (ym >= height) & (np.abs(xm) < half * (1 - (ym - height) / rise))
    sp.put(bounds, spire, np.float32([58, 62, 68]), sp.sun_side(xm, half))


def paint_turbine(sp: Sprite, params, palette) -> None:
    """A wind turbine: a tapering white tower and three blades."""
    hub, blade = params["hub"], 0.48 * params["hub"]
    box = sp.box(-blade, hub + blade, blade, 0)
    if box is None or hub * sp.ppm < 4:
        return
    bounds, xm, ym = box
    thick = max(1.5, 1.2 / sp.ppm)  # at least a pixel wide: thinner would vanish at 64 px
    tower = (np.abs(xm) < np.maximum(thick, 2.2 * (1 - 0.5 * ym / hub))) & (ym < hub)
    dx, dy = xm, ym - hub
    r = np.hypot(dx, dy)
    blades = np.zeros_like(tower)
    for k in range(3):
        along, off = _bar_frame(dx, dy, params["phase"] + k * 2 * np.pi / 3)
        blades |= (
            (along > 0) & (along < blade) & (off < np.maximum(thick, 1.6 * (1 - along / blade)))
        )
    white = np.float32([232, 234, 236])
    sp.put(bounds, tower | blades | (r < 2.2), white, sp.sun_side(xm, 2.2))


def _bar_frame(dx, dy, angle: float):
    """Coordinates along a bar leaving the origin at `angle` (radians from the x axis) and the
    distance across it, for the offsets `dx`, `dy` from its pivot."""
    along = dx * np.cos(angle) + dy * np.sin(angle)
    return along, np.abs(-dx * np.sin(angle) + dy * np.cos(angle))


def paint_well_sweep(sp: Sprite, params, palette) -> None:
    """Slavonia's đeram: a post carrying a long tilted pole, a rope down to the well."""
    box = sp.box(-7.5, 9.2, 7.5, 0)
    if box is None or sp.ppm < 0.8:
        return
    bounds, xm, ym = box
    xm = xm * params["mirror"]
    thick = max(0.12, 0.45 / sp.ppm)
    post = (np.abs(xm) < thick * 1.4) & (ym < 4.2)
    a = np.radians(params["tilt"])  # the pole pivots on the post and rises towards the well
    along, off = _bar_frame(xm, ym - 4.2, a)
    pole = (along > -2.5) & (along < 7.5) & (off < thick)
    tip_x, tip_y = 7.5 * np.cos(a), 4.2 + 7.5 * np.sin(a)
    rope = (np.abs(xm - tip_x) < thick * 0.7) & (ym > 0.9) & (ym < tip_y)
    well = (np.abs(xm - tip_x) < 0.7) & (ym < 0.9)
    sp.put(bounds, post | pole | rope, TIMBER_RGB * 0.7)
    sp.put(bounds, well, STONE_WALL_RGB * 0.8)


def paint_hayrack(sp: Sprite, params, palette) -> None:
    """A kozolec: posts carrying horizontal slats under a narrow roof."""
    width, bays = params["width"], params["bays"]
    half = width / 2
    box = sp.box(-half - 0.6, 5.6, half + 0.6, 0)
    if box is None or sp.ppm < 0.8:
        return
    bounds, xm, ym = box
    thick = max(0.15, 0.45 / sp.ppm)
    pitch = width / bays
    post = (np.abs(((xm + half + pitch / 2) % pitch) - pitch / 2) < thick) & (np.abs(xm) <= half)
    slats = (np.abs(xm) <= half) & (ym > 1.0) & (ym < 4.6) & ((ym % 0.55) < max(0.18, 0.8 / sp.ppm))
    roof = (ym >= 4.6) & (ym < 5.5) & (np.abs(xm) < half + 0.6 - (ym - 4.6) * 0.6)
    sp.put(bounds, (post & (ym < 4.6)) | slats, TIMBER_RGB * 0.75)
    sp.put(bounds, roof, ROOFS[3], sp.sun_side(xm, half))
