"""Training augmentation as a batch operation on the device that trains.

The loader hands over uint8 batches straight from the image cache; `BatchAugment` then gives
each view a random resized crop (70-100 % of the area, aspect 0.9-1.1, no flips: a flip swaps
east and west and the heading order would lie) and a brightness/contrast jitter, drawn from the
same distributions as the torchvision transforms it replaces:

    RandomResizedCrop(S, scale=(0.7, 1.0), ratio=(0.9, 1.1), antialias=True)
    ColorJitter(brightness=0.2, contrast=0.2)     (its two adjustments in random order)

applied to each view on its own. Every random number of location `i` in epoch `e` comes from
`numpy.random.default_rng([seed, e, i])`, so an augmented batch is a pure function of (seed,
epoch, location indices, pixels): the same whatever the batch size, worker count, rank or what
ran before, and a resumed run reproduces it exactly.

Two kernels compute the same pixels (up to rounding, see `BatchAugment`): on CUDA every view is
warped at once in float (`grid_sample`) and jittered with batched tensor ops; on the CPU each
view is cropped and resized by torch's uint8 antialiased kernel (the one torchvision uses) and
jittered with one 256-entry lookup table, which is several times faster there than float math.

What the CPU kernel approximates: the contrast pivot (torchvision: the mean grayscale of the
whole view) is the mean over every k-th row, about `PIVOT_ROWS` rows (0.35 grey levels from the
full mean on average, at most 1.5, over 400 real Street View views at 224 px). A pivot error e
moves every output value by (1 - contrast) e, at most 0.2 e: under a tenth of a grey level on
average, which changes about 2 % of the output values by one level (at most 2 after the
brightness factor). An image striped with the sampling period would fool it; photographs are
not. The CPU kernel is bit-identical with and without OpenCV (which only makes it faster).
"""

from __future__ import annotations

import array
import functools
import math
import os
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# torchvision's RandomResizedCrop tries this many (scale, ratio) draws before a centre crop.
CROP_ATTEMPTS = 10
# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
BACKENDS = ("auto", "batched", "per_view")


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


class BatchAugment:
    """Augments a training batch `uint8 [B, V, 3, H, W]` on its device; returns uint8, same shape.

    `augment(images, indices, epoch)`: `indices` are the batch's dataset indices (the batch's
    "index"), `epoch` the current epoch. Output views have the input's size.

    `backend`: "batched" (float math on all views at once: the choice on a GPU), "per_view"
    (uint8 kernels view by view: the choice on a CPU) or "auto" (by the images' device). Both
    follow torchvision's uint8 pipeline (resized crop rounded to integers, each adjustment
    truncated, the contrast pivot the mean grayscale). The per-view kernel takes that mean
    before flooring each gray value, over every k-th row (see the module's note); the batched
    one samples the crop with `grid_sample`, whose edge rows may blend half a pixel from
    outside the crop. Both stay within a few grey levels of torchvision given the same
    parameters, on average well under one.
    """

    def __init__(
        self,
        seed: int = 0,
        scale: tuple[float, float] = (0.7, 1.0),
        ratio: tuple[float, float] = (0.9, 1.1),
        brightness: float = 0.2,
        contrast: float = 0.2,
        backend: str = "auto",
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
        if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"scale={scale} and ratio={ratio} must be increasing and positive")
        self.seed = int(seed)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.backend = backend

    def params(self, indices, epoch: int, views: int, height: int, width: int) -> ViewParams:
        return sample_params(
            self.seed,
            epoch,
            _as_numpy(indices),
            views,
            height,
            width,
            self.scale,
            self.ratio,
            self.brightness,
            self.contrast,
        )

    def __call__(self, images: torch.Tensor, indices, epoch: int) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(
                f"expected uint8 images [B, V, 3, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        batch, views, _, height, width = images.shape
        if batch == 0:
            return images
        params = self.params(indices, epoch, views, height, width)
        if len(params.top) != batch:
            raise ValueError(f"{len(params.top)} indices for a batch of {batch}")
        backend = self.backend
        if backend == "auto":
            backend = "per_view" if images.device.type == "cpu" else "batched"
        if backend == "per_view":
            return augment_per_view(images, params)
        return augment_batched(images, params)


def _as_numpy(indices) -> np.ndarray:
    if isinstance(indices, torch.Tensor):
        return indices.detach().cpu().numpy()
    return np.asarray(indices)


# ---------------------------------------------------------------------------------------------
# Batched float kernel (GPU)


def augment_batched(images: torch.Tensor, params: ViewParams) -> torch.Tensor:
    """All views at once: one `grid_sample` for the crops, tensor ops for the jitter."""
    batch, views, channels, height, width = images.shape
    n = batch * views
    device = images.device
    flat = images.reshape(n, channels, height, width).float()
    grid = _crop_grids(params, n, height, width, device)
    # Bilinear, sampling the crop's pixel centres exactly as a resize of the crop does; at
    # the crop's edge half a pixel of the neighbouring row may blend in (torchvision clamps).
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = _jitter_float(out.round_(), params, n, device)
    return out.to(torch.uint8).reshape(images.shape)


def _crop_grids(params: ViewParams, n: int, height: int, width: int, device) -> torch.Tensor:
    """`[n, H, W, 2]` sampling positions in grid_sample's normalised coordinates."""

    def axis(start, length, size):
        # Output pixel k samples input x = start + (k + 0.5) * length / size - 0.5, which
        # grid_sample (align_corners=False) calls (2 x + 1) / size - 1.
        start = torch.as_tensor(start.reshape(n, 1), dtype=torch.float32, device=device)
        length = torch.as_tensor(length.reshape(n, 1), dtype=torch.float32, device=device)
        k = torch.arange(size, dtype=torch.float32, device=device) + 0.5
        x = start + k * length / size
        return 2 * x / size - 1

    gx = axis(params.left, params.width, width)  # [n, W]
    gy = axis(params.top, params.height, height)  # [n, H]
    return torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)


def _jitter_float(x: torch.Tensor, params: ViewParams, n: int, device) -> torch.Tensor:
    """torchvision's uint8 brightness and contrast on integer-valued `[n, 3, H, W]` floats.

    Each adjustment truncates to integers and the contrast pivot is the mean of the floored
    grayscale, as torchvision computes on uint8 images.
    """

    def column(values, dtype=torch.float32):
        return torch.as_tensor(values.reshape(n, 1, 1, 1), dtype=dtype, device=device)

    b, c = column(params.brightness), column(params.contrast)
    contrast_first = column(params.contrast_first, torch.bool)
    weights = torch.tensor(GRAY_WEIGHTS, device=device).view(1, 3, 1, 1)
    brightened = (x * b).clamp_(0, 255).floor_()
    before_contrast = torch.where(contrast_first, x, brightened)
    gray = (before_contrast * weights).sum(1, keepdim=True).floor_()
    mean = gray.mean((2, 3), keepdim=True)
    contrasted = (before_contrast * c + (1 - c) * mean).clamp_(0, 255).floor_()
    return torch.where(contrast_first, (contrasted * b).clamp_(0, 255).floor_(), contrasted)


# ---------------------------------------------------------------------------------------------
# Per-view uint8 kernel (CPU)


def augment_per_view(
    images: torch.Tensor, params: ViewParams, threads: int | None = None
) -> torch.Tensor:
    """View by view: torch's uint8 antialiased resize of the crop, then one lookup table.

    The result has the shape `[B, V, 3, H, W]` and a channels-last layout (each view stored
    `[H, W, 3]`), which is what the resize kernel produces: no pass to reorder it, and
    `images.flatten(0, 1)` is a channels-last batch for the backbone.

    The views are spread over `threads` threads (default: torch's intra-op thread count), each
    running torch single-threaded: the kernels are too small to split, and splitting each one
    over the cores costs more in synchronisation than it saves.
    """
    batch, views, channels, height, width = images.shape
    source = images.contiguous().numpy()
    out = np.empty((batch, views, height, width, channels), dtype=np.uint8)
    # Python scalars once per batch: indexing numpy arrays per view costs more than the jitter.
    columns = [
        getattr(params, name).reshape(-1).tolist()
        for name in ("top", "left", "height", "width", "brightness", "contrast", "contrast_first")
    ]
    positions = [(b, v) for b in range(batch) for v in range(views)]
    jobs = [(*where, *values) for where, *values in zip(positions, *columns, strict=True)]
    threads = max(1, min(threads or torch.get_num_threads(), len(jobs)))
    pending = queue.SimpleQueue()  # each thread takes the next view: none idles while one lags
    for job in jobs:
        pending.put(job)
    with _torch_threads(1):
        if threads == 1:
            _augment_views(source, out, pending)
        else:
            pool = _helper_pool(threads - 1)
            helpers = [
                pool.submit(_augment_views, source, out, pending) for _ in range(threads - 1)
            ]
            _augment_views(source, out, pending)  # this thread works too
            for helper in helpers:
                helper.result()
    return torch.from_numpy(out).permute(0, 1, 4, 2, 3)


_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _helper_pool(count: int) -> ThreadPoolExecutor:
    """At least `count` threads, kept from batch to batch (starting and joining threads for
    each batch took 1-2 ms, a tenth of a batch)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < count:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(count, thread_name_prefix="augment"), count
        return _pool


def _forget_pool() -> None:
    global _pool, _pool_size, _pool_lock
    # A forked child has none of the parent's threads: a pool inherited would never run.
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _augment_views(source: np.ndarray, out: np.ndarray, pending: queue.SimpleQueue) -> None:
    """Augments views taken from `pending` until it is empty."""
    # One crop buffer per thread, large enough for the largest crop (the whole view).
    scratch = np.empty(source.shape[2] * source[0, 0, 0].size, dtype=np.uint8)
    while True:
        try:
            b, v, *view_params = pending.get_nowait()
        except queue.Empty:
            return
        _augment_view(source[b, v], out[b, v], scratch, *view_params)


def _augment_view(
    image: np.ndarray,
    out: np.ndarray,
    scratch: np.ndarray,
    top: int,
    left: int,
    h: int,
    w: int,
    brightness: float,
    contrast: float,
    contrast_first: bool,
) -> None:
    """Writes the augmented `image [3, H, W]` into `out [H, W, 3]` (uint8, contiguous)."""
    channels, height, width = image.shape
    # The crop, reordered to [h, w, 3]: torch's vectorised uint8 kernel (the one Pillow-SIMD
    # uses) wants channels last.
    crop = scratch[: h * w * channels].reshape(h, w, channels)
    _channels_last(image[:, top : top + h, left : left + w], crop)
    resize_into(crop, out)
    table = _jitter_table(_pivot_histograms(out), brightness, contrast, contrast_first)
    _apply_table(out, table)


def _resize_out_op():
    """torch's antialiased bilinear resize writing into a given tensor (no allocation per view),
    or None where this torch has no such private op."""
    try:
        return torch.ops.aten._upsample_bilinear2d_aa.out
    except (AttributeError, RuntimeError):
        return None


_RESIZE_OUT = _resize_out_op()


def resize_into(image: np.ndarray, out: np.ndarray, write_op=_RESIZE_OUT) -> None:
    """`image [h, w, C]` resized (bilinear, antialiased) into `out [H, W, C]`, both uint8.

    With `write_op` None (a torch without the private op), the public `F.interpolate`, which
    runs the same kernel, allocates the result and it is copied."""
    source, target = _chw_view(image), _chw_view(out)
    size = list(out.shape[:2])
    if write_op is not None:
        write_op(source, size, False, None, None, out=target)
    else:
        resized = F.interpolate(source, size=size, mode="bilinear", antialias=True)
        target.copy_(resized)


def _chw_view(array: np.ndarray) -> torch.Tensor:
    """`[1, C, H, W]` channels-last tensor on the memory of `array [H, W, C]`."""
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


# The contrast pivot is taken from about this many evenly spaced rows of each view.
PIVOT_ROWS = 32


@functools.cache
def _opencv():
    """OpenCV when it is installed, else None: its channel merge, histograms and lookup table
    take about half of the time of numpy's and Pillow's, for the same bytes."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def _channels_last(planes: np.ndarray, out: np.ndarray) -> None:
    """Writes `planes [3, h, w]` (rows may be strided) into `out [h, w, 3]`."""
    cv2 = _opencv()
    if cv2 is not None:
        cv2.merge(list(planes), dst=out)
        return
    for c, plane in enumerate(planes):  # numpy's strided copy: twice as fast as torch's
        out[..., c] = plane


def _pivot_histograms(view: np.ndarray) -> np.ndarray:
    """`[3, 256]` channel counts of every k-th row of `view [H, W, 3]` (about `PIVOT_ROWS`).

    The pivot (a mean) moves the output by (1 - contrast) times its error, at most 0.2 x: a
    mean over a few dozen rows spread evenly over the whole view is within about a grey level
    of the full one (see the module's note), and counting a seventh of the pixels costs a
    seventh.
    """
    step = max(1, len(view) // PIVOT_ROWS)
    rows = view[step // 2 :: step]  # centred: a vertical gradient's sample mean is unbiased
    cv2 = _opencv()
    if cv2 is not None:
        counts = [cv2.calcHist([rows], [c], None, [256], [0, 256]) for c in range(3)]
        return np.stack(counts).reshape(3, 256)
    rows = np.ascontiguousarray(rows)
    image = Image.frombuffer("RGB", (rows.shape[1], rows.shape[0]), rows, "raw", "RGB", 0, 1)
    return np.frombuffer(array.array("q", image.histogram()), dtype=np.int64).reshape(3, 256)


def _apply_table(view: np.ndarray, table: np.ndarray) -> None:
    """`view = table[view]` in place (OpenCV's or Pillow's lookup: both faster than np.take)."""
    cv2 = _opencv()
    if cv2 is not None:
        cv2.LUT(view, table, dst=view)
        return
    height, width, channels = view.shape
    image = Image.frombuffer("L", (width * channels, height), view, "raw", "L", 0, 1)
    # A buffer-backed image is read-only to Pillow; writable, the paste lands in `view`.
    image.readonly = False
    image.paste(image.point(table.tolist()))


class _torch_threads:
    """Temporarily sets torch's intra-op thread count."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __enter__(self):
        self.previous = torch.get_num_threads()
        if self.previous != self.count:
            torch.set_num_threads(self.count)

    def __exit__(self, *exc) -> None:
        if torch.get_num_threads() != self.previous:
            torch.set_num_threads(self.previous)


LEVELS = np.arange(256, dtype=np.float64)
WEIGHTS = np.array(GRAY_WEIGHTS)


def _jitter_table(
    histograms: np.ndarray, brightness: float, contrast: float, contrast_first: bool
) -> np.ndarray:
    """The uint8 -> uint8 table of one view's jitter, torchvision's uint8 arithmetic.

    Brightness and contrast act on each value alone, given the contrast pivot (the mean of the
    grayscale image entering the contrast step), which the view's channel `histograms`
    (`[3, 256]` counts) give: the pivot of the values after a table is the table's mean under
    the gray-weighted level frequencies. (In-place ufuncs: this runs once per view.)
    """
    frequency = WEIGHTS @ histograms
    frequency /= histograms[0].sum()
    if contrast_first:
        table = LEVELS * contrast
        table += (1 - contrast) * float(frequency @ LEVELS)
        np.maximum(table, 0, out=table)
        np.minimum(table, 255, out=table)
        np.floor(table, out=table)
        table *= brightness
    else:
        brightened = LEVELS * brightness
        np.minimum(brightened, 255, out=brightened)
        np.floor(brightened, out=brightened)
        table = brightened * contrast
        table += (1 - contrast) * float(frequency @ brightened)
        np.maximum(table, 0, out=table)
    np.minimum(table, 255, out=table)
    return table.astype(np.uint8)  # truncation: the floor of these non-negative values


# ---------------------------------------------------------------------------------------------
# The reference: torchvision, view by view (what the loader workers used to run)


class TorchvisionViewAugment:
    """The former per-view augmentation in torchvision v2; kept as the reference in tests and
    the benchmark's naive loader, not for training (it draws from torch's global RNG)."""

    def __init__(self, size: int, scale=(0.7, 1.0), ratio=(0.9, 1.1)) -> None:
        from torchvision.transforms import v2

        self.crop = v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True)
        self.jitter = v2.ColorJitter(brightness=0.2, contrast=0.2)
        self.transform = v2.Compose([self.crop, self.jitter])

    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(view) for view in views])
