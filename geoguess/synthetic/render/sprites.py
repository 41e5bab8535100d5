"""The objects standing on the ground (`Layout.sprites`): each projected into the views that see
it and drawn there by the painter of its kind (`_SPRITES`)."""

from __future__ import annotations

import math

import numpy as np

from geoguess.synthetic.render.buildings import paint_house
from geoguess.synthetic.render.camera import CAMERA_HEIGHT_M, View
from geoguess.synthetic.render.furniture import paint_pole, paint_post, paint_sign
from geoguess.synthetic.render.landmarks import (
    paint_campanile,
    paint_hayrack,
    paint_haystack,
    paint_kazun,
    paint_onion_tower,
    paint_spire,
    paint_turbine,
    paint_well_sweep,
)
from geoguess.synthetic.render.layout import Layout
from geoguess.synthetic.render.light import Light
from geoguess.synthetic.render.sprite import Sprite
from geoguess.synthetic.render.vegetation import paint_shrub, paint_tree


def paint_sprites(canvas, zbuf, view: View, layout: Layout, palette, light: Light, land_limit):
    """Houses, trees, posts and signs, each where its view sees it, with the depth test."""
    if not layout.sprites:
        return
    s, f = view.size, view.focal
    along = np.array([sprite[1] for sprite in layout.sprites])
    across = np.array([sprite[2] for sprite in layout.sprites])
    across = across + layout.curve * along * np.abs(along)
    b = math.radians(layout.bearing)
    east = along * math.sin(b) + across * math.cos(b)
    north = along * math.cos(b) - across * math.sin(b)
    depth, right = view.camera(east, north)
    column = s / 2 + f * right / np.maximum(depth, 1e-3)
    visible = (depth > 1.5) & (column > -0.3 * s) & (column < 1.3 * s)
    for index in np.flatnonzero(visible):
        z, col = float(depth[index]), float(column[index])
        limit = land_limit[min(max(int(col), 0), s - 1)]
        if z > limit:
            continue  # it would stand in the sea
        kind, _, _, params = layout.sprites[index]
        base = view.horizon + f * CAMERA_HEIGHT_M / z
        ppm = f / z  # pixels per metre at that depth
        haze = 1 - math.exp(-z / (light.visibility_km * 200.0))
        paint = _SPRITES[kind]
        paint(Sprite(canvas, zbuf, col, base, ppm, z, haze, light, view, layout), params, palette)


_SPRITES = {
    "kazun": paint_kazun,
    "haystack": paint_haystack,
    "tree": paint_tree,
    "olive": lambda sp, params, palette: paint_tree(
        sp, {**params, "form": "olive", "shade": 1.0}, palette
    ),
    "house": paint_house,
    "post": paint_post,
    "pole": paint_pole,
    "sign": paint_sign,
    "shrub": paint_shrub,
    "campanile": paint_campanile,
    "onion_tower": paint_onion_tower,
    "spire": paint_spire,
    "turbine": paint_turbine,
    "well_sweep": paint_well_sweep,
    "hayrack": paint_hayrack,
}
