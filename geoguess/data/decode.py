"""Decoding the four views of a location: the pixels at one size, or only the proof that every
byte decodes (a truncated JPEG has a valid header, so only a full decode shows it).

Used by the image cache's build (`cache.py`), by the verification pass without a cache, and by
the loaders and prediction when they read files directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from geoguess.utils.processes import pool_context

# Verification only needs every byte decoded, not pixels at any size: the smallest DCT scale.
VERIFY_SIZE = 8
# Locations per task sent to a worker: large enough to amortise pickling, small enough to stream.
CHUNKSIZE = 4


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """`uint8 [3, size, size]` RGB of one image file; raises on any unreadable or truncated file.

    `draft` lets libjpeg decode at 1/2, 1/4 or 1/8 scale (still reading every byte), which is
    2-4x faster than a full decode followed by the same resize.
    """
    with _strict_truncation(), Image.open(path) as img:
        img.draft("RGB", (size, size))
        rgb = img.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()


def verify_image(path: str | Path) -> None:
    """Decode every byte of an image at the smallest scale; raises when it does not decode."""
    with _strict_truncation(), Image.open(path) as img:
        img.draft("RGB", (VERIFY_SIZE, VERIFY_SIZE))
        img.load()


@contextlib.contextmanager
def _strict_truncation():
    # Some libraries switch PIL to accept truncated files, which would hide broken images.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def describe_failure(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"does not decode ({text})"


def decode_location(paths: Sequence[str], size: int | None) -> tuple[np.ndarray | None, dict]:
    """The four views as `uint8 [4, 3, S, S]` (None when `size` is None: verify only).

    Returns (array or None, {path: reason} of the views that failed); a location with any
    failed view has no array.
    """
    failures: dict[str, str] = {}
    views = []
    for path in paths:
        try:
            if size is None:
                verify_image(path)
            else:
                views.append(decode_image(path, size))
        except Exception as exc:  # noqa: BLE001 - any decoder error makes the file unusable
            failures[str(path)] = describe_failure(exc)
    if failures or size is None:
        return None, failures
    return np.stack(views), failures


def view_key(path: str | Path) -> str:
    """`<uuid>/<heading>.jpg`: how verdicts name a view, valid wherever the dataset lives."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}"


def _decode_task(task: tuple[Sequence[str], int | None]) -> tuple[np.ndarray | None, dict]:
    return decode_location(*task)


def decode_all(
    paths: Sequence[Sequence[str]], size: int | None, workers: int
) -> Iterator[tuple[np.ndarray | None, dict]]:
    """`decode_location` over every location, in order, in `workers` processes (0/1: here).

    `imap` hands results back in order as they finish, so callers can stream them to disk.
    """
    tasks = ((list(p), size) for p in paths)
    if workers <= 1 or len(paths) < 2 * CHUNKSIZE:
        yield from map(_decode_task, tasks)
        return
    with pool_context().Pool(workers) as pool:
        yield from pool.imap(_decode_task, tasks, chunksize=CHUNKSIZE)
