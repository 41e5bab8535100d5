"""The renderer's noise: smooth random fields drawn from a location's generator, fixed blocky
textures in world coordinates, and the fixed tiles of sensor noise."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

NOISE_SEED = 7_771  # fixed noise tiles; each use takes a random window of them
SENSOR_NOISE = 4.0  # standard deviation in 0..255 units


@lru_cache(maxsize=64)
def interpolation_matrix(cells: int, size: int) -> np.ndarray:
    """(size, cells): smooth interpolation of a coarse random grid onto `size` pixels."""
    position = np.clip((np.arange(size) + 0.5) / size * cells - 0.5, 0, cells - 1.001)
    low = position.astype(int)
    frac = position - low
    frac = frac * frac * (3 - 2 * frac)  # smoothstep: no creases at the coarse nodes
    matrix = np.zeros((size, cells), np.float32)
    matrix[np.arange(size), low] = 1 - frac
    matrix[np.arange(size), low + 1] = frac
    return matrix


def smooth_grid_noise(rng: np.random.Generator, cells: tuple[int, int], shape: tuple[int, int]):
    """(rows, cols) smooth noise in [0, 1): a coarse random grid, upsampled."""
    coarse = rng.random(cells, dtype=np.float32)
    rows = interpolation_matrix(cells[0], shape[0])
    cols = interpolation_matrix(cells[1], shape[1])
    return rows @ coarse @ cols.T


@lru_cache(maxsize=4)
def _lattice() -> np.ndarray:
    """A fixed 64 x 64 tile of uniform noise for textures in world coordinates."""
    return np.random.default_rng(NOISE_SEED + 1).random((64, 64), dtype=np.float32)


def hash_noise(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Blocky noise in [0, 1) at integer cells of (u, v), repeating every 64 cells."""
    return _lattice()[np.floor(u).astype(np.int64) % 64, np.floor(v).astype(np.int64) % 64]


@lru_cache(maxsize=8)
def noise_tile(size: int) -> np.ndarray:
    rng = np.random.default_rng(NOISE_SEED)
    return SENSOR_NOISE * rng.standard_normal((size + 61, size + 67, 3), dtype=np.float32)
