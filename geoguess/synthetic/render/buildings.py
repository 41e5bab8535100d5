"""Houses by form (stone, plastered gable, alpine, Slavonian long house), their roofs, windows
and shutters."""

from __future__ import annotations

import numpy as np

from geoguess.synthetic.render.colours import (
    PLASTERS,
    ROOFS,
    SHUTTERS,
    STONE_WALL_RGB,
    TIMBER_RGB,
)
from geoguess.synthetic.render.light import Palette
from geoguess.synthetic.render.noise import hash_noise
from geoguess.synthetic.render.sprite import Sprite


def paint_house(sp: Sprite, params, palette: Palette) -> None:
    form, width = params["form"], params["width"]
    storeys = params["storeys"]
    wall_h = (2.9 * storeys + 0.6) if form != "alpine" else 2.8 * storeys
    if form == "stone":
        roof_h, wall_rgb = 1.3, STONE_WALL_RGB * 0.95
    elif form == "alpine":
        roof_h, wall_rgb = 0.9 * width, PLASTERS[params["plaster"]]
    elif form == "long":
        roof_h, wall_rgb = 0.55 * width, PLASTERS[params["plaster"]]
        wall_h = 3.4
    else:
        roof_h, wall_rgb = 0.42 * width, PLASTERS[params["plaster"]]
    wall_rgb = wall_rgb * params["shade"]
    roof_rgb = ROOFS[params["roof"]] * params["shade"]
    half = width / 2
    wing = width * 1.8 if form == "long" else 0.0  # the long side running back from the street
    box = sp.box(-half, wall_h + roof_h, half + wing, 0)
    if box is None or (wall_h + roof_h) * sp.ppm < 2:
        return
    bounds, xm, ym = box
    if wing:
        side_wall = (xm > half) & (ym < wall_h * 0.9)
        side_roof = (xm > half) & (ym >= wall_h * 0.9) & (ym < wall_h * 0.9 + 0.45 * roof_h)
        sp.put(bounds, side_wall, wall_rgb * 0.82)
        sp.put(bounds, side_roof, roof_rgb * 0.85)
    front = np.abs(xm) <= half
    wall = front & (ym < wall_h)
    if form == "stone":  # coursed stone, a low hipped roof wider than the wall
        course = hash_noise(xm / 0.6 + np.floor(ym / 0.35) * 0.5, ym / 0.35)
        texture = (0.82 + 0.3 * course)[..., None]
        roof = (ym >= wall_h) & (np.abs(xm) < half + 0.4 - (ym - wall_h) * 1.6)
    else:  # smooth plaster, a gable (triangle) facing the street
        texture = np.float32(1.0)
        roof = (ym >= wall_h) & (np.abs(xm) < (half + 0.3) * (1 - (ym - wall_h) / roof_h))
    sp.put(bounds, wall, wall_rgb * texture)
    if form == "alpine":  # timber cladding under the steep roof
        timber = (ym >= wall_h) & (np.abs(xm) < (half - 0.6) * (1 - (ym - wall_h) / roof_h))
        sp.put(bounds, timber, TIMBER_RGB)
        roof = roof & ~timber
    sp.put(bounds, roof, roof_rgb, sp.sun_side(xm, half))
    _paint_windows(sp, bounds, xm, ym, form, half, wall_h, storeys, params)


def _paint_windows(sp, bounds, xm, ym, form, half, wall_h, storeys, params) -> None:
    if sp.ppm * 0.9 < 1.0:
        return
    small = form == "stone"
    w, h = (0.7, 1.0) if small else (1.2, 1.3)
    pitch = 2.4 if small else 2.8
    across = (np.abs(((xm + half) % pitch) - pitch / 2) < w / 2) & (np.abs(xm) < half - 0.6)
    floors = np.zeros(xm.shape[0] if np.ndim(ym) else 1, bool)[:, None]
    for storey in range(storeys):
        bottom = 1.0 + storey * 2.9
        floors = floors | ((ym > bottom) & (ym < bottom + h))
    window = across & floors & (ym < wall_h)
    sp.put(bounds, window, np.float32([40, 42, 48]))
    if small and sp.ppm > 2.0:  # shutters beside the stone houses' windows
        shutter = (np.abs(((xm + half) % pitch) - pitch / 2) < w / 2 + 0.3) & ~across & floors
        shutter &= (np.abs(xm) < half - 0.3) & (ym < wall_h)
        sp.put(bounds, shutter, SHUTTERS[params["shutter"]])
