"""`GeoguesserDataset`: one item per location, its four views as `uint8 [4, 3, S, S]`.

Items are unaugmented: training augmentation is a batch operation on the device that trains
(`geoguess.data.augment.BatchAugment`), keyed by each item's "index". `batch_loader` reads
whole batches from the image cache at once (one fancy index into the memory map per batch).
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from geoguess.data.cache import ImageCache
from geoguess.data.decode import decode_location
from geoguess.data.io import HEADINGS, image_paths
from geoguess.data.sampler import BatchesOf

log = logging.getLogger(__name__)


class GeoguesserDataset(Dataset):
    """Locations with targets; images from the memory-mapped cache or decoded from the files.

    `frame` holds `uuid, latitude, longitude, root`; `targets` (float32 [N, 2]) and `class_ids`
    (int64 [N]) may be NaN / -1 (prediction). The memmap is opened lazily in each process, so
    the dataset pickles cheaply into DataLoader workers.
    """

    def __init__(
        self,
        frame,
        image_size: int,
        targets: np.ndarray | None = None,
        class_ids: np.ndarray | None = None,
        cache: ImageCache | None = None,
        on_failure: str = "drop",
    ) -> None:
        n = len(frame)
        self.uuids: list[str] = frame["uuid"].astype(str).tolist()
        self.latlon = frame[["latitude", "longitude"]].to_numpy(dtype=np.float64)
        self.roots: list[str] = frame["root"].astype(str).tolist()
        self.targets = (
            np.full((n, 2), np.nan, np.float32)
            if targets is None
            else np.asarray(targets, np.float32)
        )
        self.class_ids = (
            np.full(n, -1, np.int64) if class_ids is None else np.asarray(class_ids, np.int64)
        )
        self.image_size = int(image_size)
        self.cache = cache
        self.rows = np.array([cache.index[u] for u in self.uuids]) if cache is not None else None
        if on_failure not in ("drop", "substitute"):
            raise ValueError(f"on_failure={on_failure!r} is not 'drop' or 'substitute'")
        self.on_failure = on_failure
        self._memmap = None
        self._failed: set[int] = set()

    def __len__(self) -> int:
        return len(self.uuids)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_memmap"] = None  # each worker maps the file itself
        return state

    def paths(self, index: int) -> list[Path]:
        return image_paths(self.roots[index], self.uuids[index])

    def load_views(self, index: int) -> np.ndarray | None:
        """`uint8 [4, 3, S, S]` of one location, or None (logged) when a view fails to decode."""
        if self.cache is not None:
            return np.array(self._array()[self.rows[index]])
        views, failures = decode_location([str(p) for p in self.paths(index)], self.image_size)
        for path, reason in failures.items():
            log.warning("%s %s; location %s excluded", path, reason, self.uuids[index])
        return views

    def __getitem__(self, index: int) -> dict | None:
        """One location; None ("drop") or the next readable one ("substitute") when its views
        no longer decode, so a file broken after validation never ends an epoch."""
        tries = len(self) if self.on_failure == "substitute" else 1
        for offset in range(tries):
            i = (index + offset) % len(self)
            if i in self._failed:
                continue
            views = self.load_views(i)
            if views is not None:
                return self._item(i, views)
            self._failed.add(i)
        if self.on_failure == "drop":
            return None
        raise RuntimeError("no location of this dataset has readable images")

    def _array(self) -> np.ndarray:
        if self._memmap is None:
            self._memmap = self.cache.open()
        return self._memmap

    def _item(self, i: int, views: np.ndarray) -> dict:
        return {
            "images": torch.from_numpy(views),
            "latlon": torch.tensor(self.latlon[i]),
            "target": torch.tensor(self.targets[i]),
            "class_id": torch.tensor(self.class_ids[i], dtype=torch.int64),
            "uuid": self.uuids[i],
            "index": torch.tensor(i, dtype=torch.int64),
            # The image cache's row (-1 without a cache): the key of cached backbone features.
            "row": torch.tensor(self.rows[i] if self.rows is not None else -1, dtype=torch.int64),
        }

    def read_batch(self, indices: Sequence[int], images: bool = True) -> dict:
        """The batch of `indices`, as `collate` of their items gives it, read at once.

        From the cache: one fancy index into the memory map (no per-item tensors, no collate
        copy). Without a cache: item by item, with the failure handling of `__getitem__`.
        `images=False` (with a cache): the batch without its "images", for a model that reads
        the locations' cached backbone features by their "row" instead.
        """
        if self.cache is None:
            return self.collate([self[i] for i in indices])
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if not len(indices):
            return self.collate([])
        views = {"images": torch.from_numpy(self._array()[self.rows[indices]])} if images else {}
        return {
            **views,
            "latlon": torch.from_numpy(self.latlon[indices]),
            "target": torch.from_numpy(self.targets[indices]),
            "class_id": torch.from_numpy(self.class_ids[indices]),
            "uuid": [self.uuids[i] for i in indices.tolist()],
            "index": torch.from_numpy(indices),
            "row": torch.from_numpy(self.rows[indices]),
        }

    def collate(self, items: list[dict | None]) -> dict:
        """`default_collate` of the readable items; an all-unreadable batch comes out empty."""
        items = [item for item in items if item is not None]
        if items:
            return default_collate(items)
        s = self.image_size
        return {
            "images": torch.zeros((0, len(HEADINGS), 3, s, s), dtype=torch.uint8),
            "latlon": torch.zeros((0, 2), dtype=torch.float64),
            "target": torch.zeros((0, 2), dtype=torch.float32),
            "class_id": torch.zeros(0, dtype=torch.int64),
            "uuid": [],
            "index": torch.zeros(0, dtype=torch.int64),
            "row": torch.zeros(0, dtype=torch.int64),
        }


class BatchReader(Dataset):
    """`reader[list of indices]` is the whole batch (`GeoguesserDataset.read_batch`).

    For a DataLoader with `batch_size=None` whose sampler yields index lists (`batch_loader`).
    With `blocks` (`BlockShuffle.blocks`: lists of dataset indices whose cache rows are read
    together), the first batch that touches a block asks the kernel to read the block's whole
    span of the cache file in the background (`POSIX_FADV_WILLNEED`): one large sequential read
    instead of page faults row by row, for disks where random reads are slow (on the virtual
    disk it was measured on it did not pay off; see docs/performance.md).
    """

    # Blocks remembered as already read ahead (more than a shuffle buffer holds).
    REMEMBERED_BLOCKS = 64

    def __init__(self, dataset: GeoguesserDataset, blocks: Sequence[np.ndarray] | None = None):
        self.dataset = dataset
        # Whether batches carry their images (read at each batch: an epoch's loader sees the
        # value set before its iterator was made).
        self.images = True
        self._spans: np.ndarray | None = None
        self._block_of: np.ndarray | None = None
        if blocks is not None and dataset.cache is not None and len(dataset):
            self._block_of = np.empty(len(dataset), dtype=np.int64)
            self._spans = np.empty((len(blocks), 2), dtype=np.int64)
            for b, members in enumerate(blocks):
                self._block_of[members] = b
                rows = dataset.rows[members]
                self._spans[b] = rows.min(), rows.max() + 1
        self._fd: int | None = None
        self._advised: dict[int, None] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_fd=None, _advised={})  # each worker opens the file itself
        return state

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: Sequence[int]) -> dict:
        if self._spans is not None and hasattr(os, "posix_fadvise"):
            self._read_ahead(np.asarray(indices, dtype=np.int64))
        if not self.images:
            return self.dataset.read_batch(indices, images=False)
        return self.dataset.read_batch(indices)

    def _read_ahead(self, indices: np.ndarray) -> None:
        cache = self.dataset.cache
        if self._fd is None:
            self._fd = os.open(cache.data_path, os.O_RDONLY)
        for block in np.unique(self._block_of[indices]).tolist():
            if block in self._advised:
                continue
            self._advised[block] = None
            if len(self._advised) > self.REMEMBERED_BLOCKS:
                self._advised.pop(next(iter(self._advised)))
            start, stop = self._spans[block]
            offset = cache.offset + int(start) * cache.row_bytes
            os.posix_fadvise(
                self._fd, offset, int(stop - start) * cache.row_bytes, os.POSIX_FADV_WILLNEED
            )

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


class PrefetchingLoader(DataLoader):
    """A `DataLoader` whose batches, without worker processes, are read one ahead by a thread.

    In-process reading is the fastest from a warm cache (no batch crosses a process boundary),
    but it leaves the caller's CPU work (the batch augmentation, a training step) and the
    reading of the next batch in turn: a background thread reads the next batch meanwhile
    (the memory-map copy releases the GIL). The order of batches is the sampler's, unchanged.
    With worker processes it is a plain `DataLoader`.

    Its iterators start at their first batch, not when made: Lightning makes the training
    iterator before an epoch begins (`FitLoop.setup_data`, and on a resumed run that one serves
    the first epoch), before it calls the sampler's `set_epoch` and before the epoch's seeding
    (`EpochSeed`). Started then, a resumed epoch read epoch 0's order (the thread's and the
    workers' first draws from the sampler) and took the iterator's base seed from the global
    torch generator before the seeding instead of after it, as the uninterrupted run does.
    """

    def __iter__(self):
        return _StartsAtFirstBatch(self._start)

    def _start(self):
        epoch = getattr(getattr(self.sampler, "sampler", None), "epoch", None)
        if epoch == 0:
            # The first epoch's iterator was made before the epoch's seeding until its start was
            # deferred, so its draw of a base seed from torch's generator did not advance the
            # seeded stream: restored here, runs keep the numbers they had.
            with torch.random.fork_rng(devices=[]):
                iterator = super().__iter__()
        else:
            iterator = super().__iter__()
        return iterator if self.num_workers > 0 else _ReadAhead(iterator)


class _StartsAtFirstBatch:
    """An iterator made by `start()` at the first `next()`."""

    def __init__(self, start) -> None:
        self._start = start
        self._iterator = None

    def __iter__(self):
        return self

    def __next__(self):
        if self._iterator is None:
            self._iterator = self._start()
        return next(self._iterator)


class _ReadAhead:
    """Iterates `iterator` in a daemon thread, one item ahead of its consumer; exceptions are
    raised in the consumer. Dropping this object (an epoch cut short) stops the thread."""

    _END = object()

    def __init__(self, iterator) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        # The thread holds the queue and the event, not this object, so that dropping it stops
        # the thread.
        self._thread = threading.Thread(
            target=_read_ahead, args=(iterator, self._queue, self._stop), daemon=True
        )
        _READERS[self._thread] = self._stop
        self._thread.start()

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is _ReadAhead._END:
            self._stop.set()
            raise StopIteration
        if isinstance(item, _Failure):
            self._stop.set()
            raise item.error
        return item

    def __del__(self) -> None:
        self._stop.set()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


# Live read-ahead threads and their stop events. A daemon thread still inside torch's C++ code
# when the interpreter finalizes (a run ended by Ctrl+C, the loader never dropped) is unwound
# by pthread_exit through frames that do not allow it: "terminate called without an active
# exception", SIGABRT instead of the run's exit code. So they are stopped and joined at exit,
# before finalization begins.
_READERS: dict[threading.Thread, threading.Event] = {}


@atexit.register
def _stop_readers(timeout: float = 10.0) -> None:
    for thread, stop in list(_READERS.items()):
        stop.set()
        thread.join(timeout)


def _read_ahead(iterator, out: queue.Queue, stop: threading.Event) -> None:
    try:
        _read_into(iterator, out, stop)
    finally:
        _READERS.pop(threading.current_thread(), None)


def _read_into(iterator, out: queue.Queue, stop: threading.Event) -> None:
    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in iterator:
            if not put(item):
                return
        put(_ReadAhead._END)
    except BaseException as error:  # handed to the consumer, raised there
        put(_Failure(error))


def batch_loader(
    dataset: GeoguesserDataset,
    sampler,
    batch_size: int,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool | None = None,
    read_ahead: bool = False,
) -> DataLoader:
    """A loader of whole batches: `sampler` (`LocationShuffle`, `BlockShuffle`) in batches.

    `num_workers=0` reads in this process, the fastest from a warm cache (no batch crosses a
    process boundary), one batch ahead in a thread (`PrefetchingLoader`); `pin_memory`
    defaults to whether CUDA is available. `read_ahead` with a `BlockShuffle` sampler asks the
    kernel for each block's whole span at its first use (see `BatchReader`; it did not pay off
    on the virtual disk it was measured on, see docs/performance.md).
    """
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    blocks = getattr(sampler, "blocks", None) if read_ahead else None
    return PrefetchingLoader(
        BatchReader(dataset, blocks),
        batch_size=None,
        sampler=BatchesOf(sampler, batch_size, drop_last),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
