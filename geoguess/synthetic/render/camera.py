"""The camera of one view (heading, image size, horizon row), the mapping between world metres,
the camera and the road's frame, and the depths that the sky and the sea leave in the depth
buffer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geoguess.synthetic.render.layout import Layout

CAMERA_HEIGHT_M = 2.5
FAR = np.float32(1e6)  # depth of the sky
SEA_DEPTH = np.float32(5e4)


@dataclass
class View:
    """One camera: heading, image size, horizon row; world <-> camera helpers."""

    heading: float
    size: int
    horizon: float

    @property
    def focal(self) -> float:
        return self.size / 2.0

    def camera(self, east, north):
        """World metres (east, north) -> (depth ahead, offset to the right)."""
        t = math.radians(self.heading)
        return east * math.sin(t) + north * math.cos(t), east * math.cos(t) - north * math.sin(t)

    def ray_directions(self):
        """Per column, the world direction (east, north) of the ray with unit forward depth."""
        t = math.radians(self.heading)
        x = (np.arange(self.size, dtype=np.float64) + 0.5 - self.size / 2) / self.focal
        return math.sin(t) + x * math.cos(t), math.cos(t) - x * math.sin(t)


def camera_to_world(view: View, depth, right):
    t = math.radians(view.heading)
    return depth * math.sin(t) + right * math.cos(t), depth * math.cos(t) - right * math.sin(t)


def road_frame(layout: Layout, east, north):
    b = math.radians(layout.bearing)
    return east * math.sin(b) + north * math.cos(b), east * math.cos(b) - north * math.sin(b)
