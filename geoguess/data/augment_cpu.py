"""The CPU kernel of the training augmentation (`augment.py`): view by view, torch's uint8
antialiased resize of the crop (the kernel torchvision uses), then one 256-entry lookup table for
the brightness and contrast jitter, which is several times faster on a CPU than float math.

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
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from geoguess.data.augment_params import GRAY_WEIGHTS, ViewParams


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
    try:  # optional: without OpenCV the numpy and Pillow paths give the same bytes
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
