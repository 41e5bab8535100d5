"""The random parameters of the training augmentation (`augment.py`): per view a resized crop
as torchvision's `RandomResizedCrop(scale=(0.7, 1.0), ratio=(0.9, 1.1))` draws it and a
brightness/contrast jitter as its `ColorJitter(0.2, 0.2)` does, every number of location `i` in
epoch `e` from `numpy.random.default_rng([seed, e, i])` alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# torchvision's RandomResizedCrop tries this many (scale, ratio) draws before a centre crop.
CROP_ATTEMPTS = 10
# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class ViewParams:
    """Per-view augmentation parameters, numpy arrays of shape `[B, V]`.

    The crop is rows `top:top+height`, columns `left:left+width` of the input view; `brightness`
    and `contrast` are the jitter factors; `contrast_first` says which adjustment came first.
    """

    top: np.ndarray
    left: np.ndarray
    height: np.ndarray
    width: np.ndarray
    brightness: np.ndarray
    contrast: np.ndarray
    contrast_first: np.ndarray


def sample_params(
    seed: int,
    epoch: int,
    indices: Sequence[int] | np.ndarray,
    views: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.7, 1.0),
    ratio: tuple[float, float] = (0.9, 1.1),
    brightness: float = 0.2,
    contrast: float = 0.2,
) -> ViewParams:
    """The parameters of every view of the locations `indices` in `epoch`.

    Follows torchvision's `RandomResizedCrop.make_params` (up to 10 draws of an area fraction,
    uniform in `scale`, and an aspect ratio, log-uniform in `ratio`; the first that fits gives
    the crop, its offsets uniform; none fits: the centre crop of the aspect limits) and
    `ColorJitter.make_params` (factors uniform in [1 - x, 1 + x], a random order). Location i's
    numbers come from `default_rng([seed, epoch, i])` alone.
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    # Per location: [views, attempts, (area, log-ratio, top, left)] and [views, 3 jitter draws].
    crop_u = np.empty((len(indices), views, CROP_ATTEMPTS, 4))
    jitter_u = np.empty((len(indices), views, 3))
    for k, index in enumerate(indices.tolist()):
        rng = np.random.default_rng([int(seed), int(epoch), index])
        crop_u[k] = rng.random((views, CROP_ATTEMPTS, 4))
        jitter_u[k] = rng.random((views, 3))
    top, left, crop_h, crop_w = _crop_boxes(crop_u, height, width, scale, ratio)
    b_lo, b_hi = max(0.0, 1.0 - brightness), 1.0 + brightness
    c_lo, c_hi = max(0.0, 1.0 - contrast), 1.0 + contrast
    return ViewParams(
        top=top,
        left=left,
        height=crop_h,
        width=crop_w,
        brightness=b_lo + (b_hi - b_lo) * jitter_u[..., 0],
        contrast=c_lo + (c_hi - c_lo) * jitter_u[..., 1],
        contrast_first=jitter_u[..., 2] < 0.5,
    )


def _crop_boxes(u: np.ndarray, height: int, width: int, scale, ratio):
    """torchvision's RandomResizedCrop boxes from uniform draws `u [..., attempts, 4]`."""
    area = height * width
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    # np.round rounds halves to even, as Python's round() in torchvision.
    w = np.round(np.sqrt(target_area * aspect)).astype(np.int64)
    h = np.round(np.sqrt(target_area / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = np.argmax(fits, axis=-1)[..., None]
    found = fits.any(axis=-1)
    w = np.take_along_axis(w, first, -1)[..., 0]
    h = np.take_along_axis(h, first, -1)[..., 0]
    u_top = np.take_along_axis(u[..., 2], first, -1)[..., 0]
    u_left = np.take_along_axis(u[..., 3], first, -1)[..., 0]
    # Uniform integers in [0, height - h] and [0, width - w], as torch.randint.
    top = np.minimum((u_top * (height - h + 1)).astype(np.int64), height - h)
    left = np.minimum((u_left * (width - w + 1)).astype(np.int64), width - w)
    if not found.all():
        fb_top, fb_left, fb_h, fb_w = _centre_crop(height, width, ratio)
        top, left = np.where(found, top, fb_top), np.where(found, left, fb_left)
        h, w = np.where(found, h, fb_h), np.where(found, w, fb_w)
    return top, left, h, w


def _centre_crop(height: int, width: int, ratio) -> tuple[int, int, int, int]:
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w
