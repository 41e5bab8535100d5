"""The renderer's fixed colours (RGB, 0..255): materials, sky and haze, and the keyframes of the
colours that change with the season. The light of each location tints them (`light`)."""

from __future__ import annotations

import numpy as np

# Season keyframes (0 early spring, 0.25 early summer, 0.5 late summer, 0.7 autumn, 0.85
# winter; cyclic) of the colours that change through the year.
SEASON_KEYS = np.array([0.0, 0.25, 0.5, 0.7, 0.85, 1.0])
GRASS = np.array(
    [[104, 150, 62], [92, 138, 52], [158, 150, 84], [132, 124, 70], [118, 110, 84], [104, 150, 62]],
    np.float32,
)
FOLIAGE = np.array(
    [[118, 160, 72], [62, 108, 46], [72, 104, 48], [176, 118, 52], [112, 96, 80], [118, 160, 72]],
    np.float32,
)
MAIZE = np.array(
    [[118, 146, 70], [78, 132, 52], [96, 130, 56], [190, 170, 104], [150, 128, 92], [118, 146, 70]],
    np.float32,
)
MAIZE_HEIGHT_M = np.array([0.3, 1.6, 2.5, 2.2, 0.0, 0.3], np.float32)
CONIFER_RGB = np.array([44, 74, 50], np.float32)
PINE_RGB = np.array([64, 96, 56], np.float32)
OLIVE_RGB = np.array([118, 132, 100], np.float32)
DRY_GRASS_RGB = np.array([168, 156, 104], np.float32)
SOILS = np.array([[128, 100, 74], [146, 96, 70], [132, 122, 104], [110, 92, 72]], np.float32)
ROCK_RGB = np.array([190, 188, 178], np.float32)
STONE_WALL_RGB = np.array([176, 170, 154], np.float32)
PLASTERS = np.array(
    [[236, 232, 224], [232, 216, 176], [228, 204, 128], [222, 184, 172], [226, 176, 126],
     [196, 196, 190], [214, 222, 200]],
    np.float32,
)  # fmt: skip
ROOFS = np.array(
    [[170, 78, 52], [150, 70, 50], [186, 98, 64], [112, 70, 56], [84, 84, 90]], np.float32
)
TIMBER_RGB = np.array([108, 76, 52], np.float32)
SHUTTERS = np.array([[70, 110, 70], [110, 80, 56], [120, 120, 116], [60, 90, 120]], np.float32)
ASPHALT_RGB = np.array([88, 88, 92], np.float32)
GRAVEL_RGB = np.array([180, 172, 152], np.float32)
LINE_RGB = np.array([232, 232, 226], np.float32)
METAL_RGB = np.array([168, 172, 176], np.float32)
SEA_DEEP_RGB = np.array([28, 78, 124], np.float32)
SKY_CLEAR_RGB = np.array([74, 126, 206], np.float32)
SKY_OVERCAST_RGB = np.array([178, 182, 188], np.float32)
HAZE_RGB = np.array([214, 220, 228], np.float32)
WARM_RGB = np.array([240, 196, 150], np.float32)  # low sun
CLOUD_RGB = np.array([240, 241, 244], np.float32)
