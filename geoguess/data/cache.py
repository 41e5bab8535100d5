"""Decoding the views once: the memory-mapped uint8 image cache and the per-image verdicts.

One parallel pass (`decode.py` decodes each location) decodes every image at a DCT-reduced scale (`Image.draft`), resizes it to
`image.size` and writes the `uint8 [N, 4, 3, S, S]` array to disk: the array file is created at
its full size first, and each worker process writes its own rows straight into it (`os.pwrite`
at the row's offset), so no pixels pass through a pipe and memory stays flat however large the
dataset. The same pass proves that every image decodes (a truncated JPEG has a valid header, so
only a full decode shows it); its verdicts are kept under the dataset key so that validation
costs once. Layout, under the cache folder:

    <key>/verdicts.json               failed images of the dataset with this key
    <key>/<S>px.npy, <key>/<S>px.json the image array (a self-describing .npy) and its manifest
                                      (uuid order, failures)
    <key>/stats-<S>px-<hash>.json     image statistics of one training split
    <key>/<S>px.lock                  held while a process builds <S>px.npy: another one that
                                      needs the same cache waits, then loads it
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from geoguess.data.decode import decode_all, decode_location, view_key
from geoguess.data.io import HEADINGS, image_paths
from geoguess.utils.io import make_temp_file, write_json_atomic
from geoguess.utils.processes import pool_context

log = logging.getLogger(__name__)

# 2: the array is a .npy file (was raw .u8 bytes with the shape in the manifest).
CACHE_VERSION = 2
CACHE_FOLDER = ".geoguess-cache"
# Locations a build worker decodes before one write: a few MB per write, memory flat in N.
WRITE_ROWS = 8


# ---------------------------------------------------------------------------------------------
# Keys and locations of cache files


def file_stats(
    frame: pd.DataFrame, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(size, mtime_ns) of each view, `int64 [N, 4]`; -1 where missing or not in `mask`."""
    sizes = np.full((len(frame), len(HEADINGS)), -1, dtype=np.int64)
    mtimes = np.full_like(sizes, -1)
    rows = np.flatnonzero(mask) if mask is not None else range(len(frame))
    for i in rows:
        root, uuid = frame["root"].iat[i], frame["uuid"].iat[i]
        for j, path in enumerate(image_paths(root, uuid)):
            try:
                st = path.stat()
            except OSError:
                continue
            if path.is_file():
                sizes[i, j], mtimes[i, j] = st.st_size, st.st_mtime_ns
    return sizes, mtimes


def dataset_key(frame: pd.DataFrame, sizes: np.ndarray, mtimes: np.ndarray) -> str:
    """sha256 of the dataset's contents: uuids, coordinates and every view's size and mtime.

    Independent of row order and of where the data lives, so a moved or reordered dataset keeps
    its cache; any edited, replaced or added file or coordinate gives a new key.
    """
    columns = [frame[c].astype(str).tolist() for c in ("uuid", "latitude_raw", "longitude_raw")]
    digest = hashlib.sha256(f"geoguess-data-v{CACHE_VERSION}\n".encode())
    for i in np.argsort(np.asarray(columns[0], dtype=object), kind="stable"):
        stats = ",".join(f"{s}:{m}" for s, m in zip(sizes[i], mtimes[i], strict=True))
        digest.update(f"{columns[0][i]}\t{columns[1][i]}\t{columns[2][i]}\t{stats}\n".encode())
    return digest.hexdigest()


def default_cache_root(first_root: Path) -> Path:
    """`<first root>/.geoguess-cache` when writable, else `~/.cache/geoguess` (XDG respected)."""
    beside = Path(first_root) / CACHE_FOLDER
    if _writable(beside):
        return beside
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "geoguess"


def _writable(folder: Path) -> bool:
    try:
        # A dataset folder without write bits is meant to stay untouched, even by root (whom
        # os.access lets write anywhere).
        if not folder.exists() and not folder.parent.stat().st_mode & 0o222:
            return False
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def key_dir(cache_root: Path, key: str) -> Path:
    return Path(cache_root) / key[:24]


# ---------------------------------------------------------------------------------------------
# Verdicts


def load_verdicts(cache_root: Path, key: str) -> dict[str, str] | None:
    """{view_key: reason} of the failed views of the dataset `key`; None when not yet decoded."""
    path = key_dir(cache_root, key) / "verdicts.json"
    data = _read_json(path)
    if data is None or data.get("key") != key:
        return None
    return dict(data["failed"])


def save_verdicts(cache_root: Path, key: str, failed: dict[str, str]) -> None:
    path = key_dir(cache_root, key) / "verdicts.json"
    write_json_atomic(path, {"key": key, "failed": failed}, overwrite=True)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def verify_all(frame: pd.DataFrame, workers: int, progress: bool = True) -> dict[str, str]:
    """Decode every view without storing pixels; {view_key: reason} of those that fail."""
    paths = _all_paths(frame)
    failed: dict[str, str] = {}
    results = decode_all(paths, None, workers)
    for _, failures in _progress(results, len(paths), "verifying images", progress):
        failed.update({view_key(p): reason for p, reason in failures.items()})
    return failed


def _all_paths(frame: pd.DataFrame) -> list[list[str]]:
    return [
        [str(p) for p in image_paths(root, uuid)]
        for root, uuid in zip(frame["root"], frame["uuid"], strict=True)
    ]


def _progress(iterable, total: int, desc: str, enabled: bool):
    return tqdm(
        iterable, total=total, desc=desc, unit="loc", disable=None if enabled else True, leave=False
    )


# ---------------------------------------------------------------------------------------------
# The image cache


@dataclass(frozen=True)
class ImageCache:
    """A built cache: `uint8 [N, 4, 3, S, S]` in the .npy file `data_path`, row i = `uuids[i]`."""

    data_path: Path
    uuids: tuple[str, ...]
    image_size: int
    key: str
    failed: dict[str, str]

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return cache_shape(len(self.uuids), self.image_size)

    @property
    def row_bytes(self) -> int:
        """Bytes of one location (its four views)."""
        return int(np.prod(self.shape[1:]))

    @cached_property
    def offset(self) -> int:
        """Where row 0 starts in `data_path` (the length of the .npy header)."""
        return _npy_layout(self.data_path)[2]

    @cached_property
    def index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.uuids)}

    def open(self) -> np.ndarray:
        """The array, memory-mapped read-only (pages are read on first access)."""
        if not self.uuids:  # an empty file region cannot be mapped
            return np.zeros(self.shape, dtype=np.uint8)
        return np.load(self.data_path, mmap_mode="r")

    @classmethod
    def load(cls, cache_root: Path, key: str, image_size: int) -> ImageCache | None:
        """The cache of dataset `key` at `image_size`, or None when absent or incomplete."""
        data_path, manifest_path = _cache_paths(cache_root, key, image_size)
        manifest = _read_json(manifest_path)
        if manifest is None or manifest.get("key") != key:
            return None
        if manifest.get("version") != CACHE_VERSION or manifest.get("image_size") != image_size:
            return None
        cache = cls(data_path, tuple(manifest["uuids"]), image_size, key, manifest["failed"])
        try:
            shape, dtype, offset = _npy_layout(data_path)
            size = data_path.stat().st_size
        except (OSError, ValueError):
            return None
        if shape != cache.shape or dtype != np.uint8 or size != offset + np.prod(shape):
            return None
        return cache


def cache_shape(n: int, image_size: int) -> tuple[int, int, int, int, int]:
    return (n, len(HEADINGS), 3, image_size, image_size)


def _npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of a .npy file, reading only its header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if fortran:
            raise ValueError(f"{path} is stored in Fortran order")
        return tuple(shape), dtype, f.tell()


def _cache_paths(cache_root: Path, key: str, image_size: int) -> tuple[Path, Path]:
    folder = key_dir(cache_root, key)
    return folder / f"{image_size}px.npy", folder / f"{image_size}px.json"


def build_cache(
    cache_root: Path,
    key: str,
    frame: pd.DataFrame,
    image_size: int,
    workers: int | None = None,
    progress: bool = True,
) -> ImageCache:
    """Decode every location of `frame` into the cache (sorted by uuid); also saves verdicts.

    `workers`: decoding processes (None: every core this process may use; 0 or 1: in this
    process). Written to a temporary file and renamed, so an interrupted build leaves no half
    cache; locations with a failed view are stored as zeros and listed in the manifest. One
    process at a time builds a given cache (`building`): one that waited for another's build
    loads that cache instead of building it again.
    """
    data_path, manifest_path = _cache_paths(cache_root, key, image_size)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    with building(data_path.with_suffix(".lock")):
        built = ImageCache.load(cache_root, key, image_size)
        if built is not None:  # another process built it while this one waited
            return built
        return _build(cache_root, key, frame, image_size, workers, progress)


@contextlib.contextmanager
def building(lock_path: Path):
    """Holds an exclusive `flock` on `lock_path` (created if missing, never removed: a removed
    lock file would let a third process lock a new one while the second still holds the old).

    Concurrent first runs (a sweep's jobs, every node of a cluster on a shared file system)
    would otherwise each decode the whole dataset into a temporary cache of its full size. The
    lock is released by the kernel when its holder dies, so a killed build blocks no one."""
    with open(lock_path, "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is building %s; waiting for it", lock_path.with_suffix(""))
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(cache_root, key, frame, image_size, workers, progress) -> ImageCache:
    frame = frame.sort_values("uuid", kind="stable")
    data_path, manifest_path = _cache_paths(cache_root, key, image_size)
    tmp_name = make_temp_file(data_path.parent, data_path.name)  # 0644, not mkstemp's 0600
    try:
        failed = write_array(
            Path(tmp_name), _all_paths(frame), image_size, worker_count(workers), progress
        )
        os.replace(tmp_name, data_path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    manifest = {
        "version": CACHE_VERSION,
        "key": key,
        "image_size": image_size,
        "layout": "uint8 [N, 4 headings (0, 90, 180, 270), 3 RGB, S, S]",
        "uuids": frame["uuid"].tolist(),
        "failed": failed,
    }
    write_json_atomic(manifest_path, manifest, overwrite=True)
    save_verdicts(cache_root, key, failed)
    return ImageCache(data_path, tuple(manifest["uuids"]), image_size, key, failed)


def write_array(
    path: Path, paths: Sequence[Sequence[str]], image_size: int, workers: int, progress: bool
) -> dict[str, str]:
    """Decode location i of `paths` into row i of a new .npy at `path`; {view_key: reason}.

    The file is created at full size (sparse: unwritten rows read as zeros, which is how a
    location with a failed view is stored); each task then decodes `WRITE_ROWS` consecutive
    locations and writes them with one `os.pwrite`, in whichever process decoded them.
    """
    shape = cache_shape(len(paths), image_size)
    if not paths:
        with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a name
            np.save(f, np.zeros(shape, dtype=np.uint8), allow_pickle=False)
        return {}
    header = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    offset = header.offset
    del header  # only the header and the file's length were needed
    tasks = [
        (start, [list(p) for p in paths[start : start + WRITE_ROWS]])
        for start in range(0, len(paths), WRITE_ROWS)
    ]
    failed: dict[str, str] = {}
    desc = f"caching images at {image_size}px"
    with _progress(None, len(paths), desc, progress) as bar:
        for done, failures in _run_writes(tasks, str(path), offset, image_size, workers):
            failed.update({view_key(p): reason for p, reason in failures.items()})
            bar.update(done)
    return dict(sorted(failed.items()))


def _run_writes(tasks, path: str, offset: int, image_size: int, workers: int):
    """(locations done, failures) of each task, run here or in `workers` processes."""
    if workers <= 1 or len(tasks) < 2:
        _open_output(path, offset, image_size)
        try:
            yield from map(_write_task, tasks)
        finally:
            _close_output()
        return
    context = pool_context()
    init = (path, offset, image_size)
    with context.Pool(workers, initializer=_open_output, initargs=init) as pool:
        # Unordered: a slow task never holds back the progress of the others.
        yield from pool.imap_unordered(_write_task, tasks, chunksize=1)


# Per-process state of a build: the output file, opened once per worker.
_OUTPUT: dict = {}


def _open_output(path: str, offset: int, image_size: int) -> None:
    _OUTPUT.update(fd=os.open(path, os.O_WRONLY), offset=offset, size=image_size)


def _close_output() -> None:
    os.close(_OUTPUT.pop("fd"))


def _write_task(task: tuple[int, list[list[str]]]) -> tuple[int, dict[str, str]]:
    start, locations = task
    size = _OUTPUT["size"]
    rows = np.zeros(cache_shape(len(locations), size), dtype=np.uint8)
    failed: dict[str, str] = {}
    for k, paths in enumerate(locations):
        views, failures = decode_location(paths, size)
        if views is not None:
            rows[k] = views
        failed.update(failures)
    data = memoryview(rows).cast("B")
    position = _OUTPUT["offset"] + start * rows[0].nbytes
    while data:  # pwrite may write less than asked (signals, some file systems)
        written = os.pwrite(_OUTPUT["fd"], data, position)
        data, position = data[written:], position + written
    return len(locations), failed


def worker_count(workers: int | None) -> int:
    if workers is not None:
        return int(workers)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def stats_path(cache_root: Path, key: str, image_size: int, train_uuids: Sequence[str]) -> Path:
    """Where the statistics of one training split live: keyed by the dataset and the split."""
    digest = hashlib.sha256("\n".join(sorted(train_uuids)).encode()).hexdigest()[:16]
    return key_dir(cache_root, key) / f"stats-{image_size}px-{digest}.json"
