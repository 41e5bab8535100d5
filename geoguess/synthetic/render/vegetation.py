"""Trees (cypress, umbrella pine, olive, fir, deciduous, poplar, palm) and shrubs."""

from __future__ import annotations

import numpy as np

from geoguess.synthetic.render.colours import OLIVE_RGB, TIMBER_RGB
from geoguess.synthetic.render.light import Palette
from geoguess.synthetic.render.noise import hash_noise
from geoguess.synthetic.render.sprite import Sprite


def paint_tree(sp: Sprite, params, palette: Palette) -> None:
    form, height = params["form"], params["height"]
    if height * sp.ppm < 1.5:
        return
    if form == "palm":
        _paint_palm(sp, params, palette)
        return
    tone = {"cypress": 0.85, "pine": 1.1, "fir": 0.92, "olive": 1.0}
    if form == "olive":  # silvery grey-green leaves
        foliage = palette.evergreen * 0.6 + OLIVE_RGB * 0.4
    elif form in tone:
        foliage = palette.evergreen * tone[form]
    else:
        foliage = palette.foliage
    foliage = foliage * params["shade"]
    trunk_rgb = TIMBER_RGB * 0.6
    half = {"cypress": 0.09, "pine": 0.32, "olive": 0.6, "fir": 0.2, "deciduous": 0.33,
            "poplar": 0.1}[form] * height  # fmt: skip
    box = sp.box(-half, height, half, 0)
    if box is None:
        return
    bounds, xm, ym = box
    u, v = xm / half, ym / height  # -1..1 across, 0..1 up
    if form == "cypress":  # a narrow spindle, pointed at the top
        crown = (v > 0.04) & (
            np.abs(u) < 1.0 * np.clip(np.sin(np.pi * np.clip(v, 0, 1) ** 0.8), 0, 1) ** 0.7
        )
        trunk = (v <= 0.04) & (np.abs(u) < 0.25)
    elif form == "pine":  # a bare trunk under a flat umbrella crown
        crown = ((u**2) + ((v - 0.82) / 0.17) ** 2 < 1) & (v > 0.68)
        trunk = (v <= 0.75) & (np.abs(u + 0.1 * (v - 0.4)) < 0.06)
    elif form == "olive":  # a low, wide, ragged crown on a short twisted trunk
        rag = 0.85 + 0.3 * hash_noise(xm * 2.2 + params["shade"] * 50, ym * 2.2)
        crown = (u**2 + ((v - 0.6) / 0.38) ** 2) < rag
        trunk = (v < 0.35) & (np.abs(u - 0.1 * np.sin(v * 9)) < 0.12)
    elif form == "fir":  # a tiered cone
        tier = (v * 7) % 1.0
        crown = (v > 0.08) & (np.abs(u) < (1 - v) * (0.75 + 0.25 * tier))
        trunk = (v <= 0.08) & (np.abs(u) < 0.1)
    elif form == "poplar":  # a tall narrow column
        crown = (v > 0.1) & ((u**2 + ((v - 0.55) / 0.46) ** 2) < 1)
        trunk = (v <= 0.12) & (np.abs(u) < 0.2)
    else:  # deciduous: a big round crown on a trunk
        crown = (u**2 + ((v - 0.62) / 0.38) ** 2) < 1
        trunk = (v < 0.4) & (np.abs(u) < 0.1)
    if palette.bare and form in ("deciduous", "poplar"):
        twigs = hash_noise(xm * 3 + 7, ym * 3) > 0.55
        crown = crown & twigs
        foliage = TIMBER_RGB * 0.9
    texture = 0.8 + 0.35 * hash_noise(xm * 1.5, ym * 1.5)
    sp.put(bounds, trunk, trunk_rgb)
    sp.put(bounds, crown, foliage * texture[..., None], sp.sun_side(xm, half))


def _paint_palm(sp: Sprite, params, palette: Palette) -> None:
    """A palm of the southern coast: a thin bent trunk under a star of drooping fronds."""
    height = params["height"]
    radius = 0.45 * height
    box = sp.box(-radius, height + radius, radius + 0.08 * height, 0)
    if box is None:
        return
    bounds, xm, ym = box
    lean = 0.08 * height * (ym / height) ** 2
    trunk = (np.abs(xm - lean) < max(0.18, 0.5 / sp.ppm)) & (ym < height)
    dx, dy = xm - 0.08 * height, ym - height
    angle = np.arctan2(dy, dx)
    reach = radius * (0.75 + 0.25 * np.sin(angle))  # fronds droop: shorter below
    fronds = (np.hypot(dx, dy) < reach) & (np.cos(9 * angle + params["shade"] * 20) > 0.1)
    sp.put(bounds, trunk, TIMBER_RGB * 0.8)
    sp.put(bounds, fronds, palette.evergreen * params["shade"], sp.sun_side(xm, radius))


def paint_shrub(sp: Sprite, params, palette: Palette) -> None:
    height = params["height"]
    box = sp.box(-height * 0.8, height, height * 0.8, 0)
    if box is None or height * sp.ppm < 1:
        return
    bounds, xm, ym = box
    rag = 0.8 + 0.4 * hash_noise(xm * 3 + 5, ym * 3)
    bush = (xm / (0.8 * height)) ** 2 + ((ym - 0.45 * height) / (0.55 * height)) ** 2 < rag
    sp.put(bounds, bush, (palette.evergreen * 0.7 + palette.grass * 0.3), sp.sun_side(xm, height))
