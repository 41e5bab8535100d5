"""Road furniture: delineator posts, utility poles and traffic signs."""

from __future__ import annotations

import numpy as np

from geoguess.synthetic.render.colours import METAL_RGB
from geoguess.synthetic.render.sprite import Sprite


def paint_post(sp: Sprite, params, palette) -> None:
    box = sp.box(-0.08, 1.0, 0.08, 0)
    if box is None or sp.ppm < 2:
        return
    bounds, xm, ym = box
    post = np.abs(xm) <= 0.08
    sp.put(bounds, post & (ym < 0.8), np.float32([236, 236, 232]))
    sp.put(bounds, post & (ym >= 0.8), np.float32([30, 30, 30]))


def paint_pole(sp: Sprite, params, palette) -> None:
    height = params["height"]
    box = sp.box(-0.9, height, 0.9, 0)
    if box is None or sp.ppm < 0.4:
        return
    bounds, xm, ym = box
    pole = np.abs(xm) < max(0.14, 0.6 / sp.ppm)
    arm = (np.abs(ym - height * 0.93) < max(0.08, 0.5 / sp.ppm)) & (np.abs(xm) < 0.9)
    sp.put(bounds, pole | arm, np.float32([72, 64, 56]))


def paint_sign(sp: Sprite, params, palette) -> None:
    box = sp.box(-0.45, 2.6, 0.45, 0)
    if box is None or sp.ppm < 1.5:
        return
    bounds, xm, ym = box
    pole = (np.abs(xm) < max(0.05, 0.5 / sp.ppm)) & (ym < 1.9)
    plate_y = ym - 2.2
    if params["shape"] == 0:  # triangle: warning
        plate = (plate_y > -0.35) & (np.abs(xm) < (0.4 - plate_y) * 0.6)
    elif params["shape"] == 1:  # disc: prohibition
        plate = xm**2 + plate_y**2 < 0.35**2
    else:  # rectangle: direction
        plate = (np.abs(xm) < 0.45) & (np.abs(plate_y) < 0.25)
    colours = np.float32([[210, 50, 40], [40, 90, 170], [230, 200, 60]])
    sp.put(bounds, pole, METAL_RGB * 0.8)
    sp.put(bounds, plate, colours[params["colour"]])
