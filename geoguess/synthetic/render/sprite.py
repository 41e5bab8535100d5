"""`Sprite`: where one object stands in one view, and how its painter puts pixels there (depth
test, sunlit side, haze)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geoguess.synthetic.render.camera import View
from geoguess.synthetic.render.layout import Layout
from geoguess.synthetic.render.light import Light


@dataclass
class Sprite:
    """Where one object stands in one view, and how to put pixels there."""

    canvas: np.ndarray
    zbuf: np.ndarray
    x: float  # column of the object's foot
    base: float  # row of the object's foot
    ppm: float  # pixels per metre
    depth: float
    haze: float
    light: Light
    view: View
    layout: Layout

    def box(self, left_m, top_m, right_m, bottom_m):
        """Pixel bounds (r0, r1, c0, c1) and pixel-centre coordinates in metres, or None."""
        s = self.canvas.shape[0]
        c0 = int(max(math.floor(self.x + left_m * self.ppm), 0))
        c1 = int(min(math.ceil(self.x + right_m * self.ppm) + 1, s))
        r0 = int(max(math.floor(self.base - top_m * self.ppm), 0))
        r1 = int(min(math.ceil(self.base - bottom_m * self.ppm) + 1, s))
        if c1 <= c0 or r1 <= r0:
            return None
        xm = (np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5 - self.x) / self.ppm
        ym = (self.base - np.arange(r0, r1, dtype=np.float32)[:, None] - 0.5) / self.ppm
        return (r0, r1, c0, c1), xm, ym

    def put(self, box, mask, colour, sunlit=None) -> None:
        """Paint `colour` where `mask` and nearer than what is there; lit and hazed."""
        r0, r1, c0, c1 = box
        mask = mask & (self.depth < self.zbuf[r0:r1, c0:c1])
        if not mask.any():
            return
        colour = np.asarray(colour, np.float32)
        shade = 0.72 + 0.38 * self.light.direct
        if sunlit is not None:
            shade = shade * (1 + 0.3 * self.light.direct * sunlit)
        colour = colour * (shade[..., None] if np.ndim(shade) else shade)
        colour = (colour + (self.light.haze - colour) * self.haze) * self.light.tint
        region = self.canvas[r0:r1, c0:c1]
        region[mask] = np.broadcast_to(colour, (*mask.shape, 3))[mask]
        self.zbuf[r0:r1, c0:c1][mask] = self.depth

    def sun_side(self, xm, half_width) -> np.ndarray:
        """-1..1 across an object: positive on the side that faces the sun."""
        relative = math.radians(self.light.sun_azimuth - self.view.heading)
        return np.clip(xm / max(half_width, 1e-3), -1, 1) * math.sin(relative)
