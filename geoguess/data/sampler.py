"""Training orders that are pure functions of (seed, epoch), and one that reads a cache in blocks.

`LocationShuffle` is a plain per-location shuffle; `BlockShuffle` shuffles blocks of consecutive
cache rows and then locations within a shuffle buffer of a few blocks, so that an epoch over a
cache larger than memory reads it mostly sequentially (see docs/performance.md). Neither keeps
random state between epochs: the order of epoch k is `f(seed, k)`, so a resumed run reproduces it.
Lightning calls `set_epoch` on samplers that have it. Under DDP each rank passes its `rank` and
`world_size` and takes every `world_size`-th index of the epoch's order, padded (by repeating the
start of the order) to equal length on every rank, as `DistributedSampler` does.

Only numpy: the samplers import no torch, so they are cheap to build and to test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np

# Locations per block and blocks per shuffle buffer. At 224 px a location is 602 kB: a block
# is 38 MB read sequentially, a buffer 8 blocks (300 MB of page cache).
BLOCK_SIZE = 64
BUFFER_BLOCKS = 8


class _EpochSampler:
    """Shared parts: epoch, DDP split and length."""

    def __init__(self, n: int, seed: int, rank: int, world_size: int, drop_last: bool) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.n = int(n)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = bool(drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        """The whole epoch's order of dataset indices (all ranks)."""
        raise NotImplementedError

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.world_size
        return -(-self.n // self.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_order(self.epoch).tolist())

    def rank_order(self, epoch: int) -> np.ndarray:
        """This rank's share of `order(epoch)`: every `world_size`-th index from `rank`."""
        order = self.order(epoch)
        total = len(self) * self.world_size
        if total > len(order):  # pad as DistributedSampler does: repeat from the start
            repeats = -(-total // max(len(order), 1))
            order = np.tile(order, repeats)
        return order[:total][self.rank :: self.world_size]

    def _rng(self, epoch: int, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, *stream])


class LocationShuffle(_EpochSampler):
    """Every index once per epoch in the order `permutation(n)` of `default_rng([seed, epoch])`.

    `shuffle=False` gives 0..n-1 (evaluation under DDP).
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        super().__init__(n, seed, rank, world_size, drop_last)
        self.shuffle = bool(shuffle)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return self._rng(epoch).permutation(self.n)


class BlockShuffle(_EpochSampler):
    """Blocks of consecutive cache rows in random order, locations shuffled within a buffer.

    `rows[i]` is the cache row of dataset index i (a split holds a subset of the cache's rows).
    The split's indices sorted by cache row are cut into blocks of `block_size`; the blocks are
    permuted, and each run of `buffer_blocks` consecutive blocks of that permutation is shuffled
    as one buffer. An epoch then reads `buffer_blocks` blocks at a time, each of them once, in
    any order within the buffer. Cache rows are sorted by uuid, which is unrelated to place, so
    neighbouring rows are no more alike than any two locations.
    """

    def __init__(
        self,
        rows: Sequence[int] | np.ndarray,
        seed: int = 0,
        block_size: int = BLOCK_SIZE,
        buffer_blocks: int = BUFFER_BLOCKS,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        super().__init__(len(rows), seed, rank, world_size, drop_last)
        if block_size < 1 or buffer_blocks < 1:
            raise ValueError("block_size and buffer_blocks must be at least 1")
        self.block_size = int(block_size)
        self.buffer_blocks = int(buffer_blocks)
        self.blocks = blocks_by_row(rows, self.block_size)

    def order(self, epoch: int) -> np.ndarray:
        rng = self._rng(epoch)
        blocks = [self.blocks[b] for b in rng.permutation(len(self.blocks))]
        parts = []
        for start in range(0, len(blocks), self.buffer_blocks):
            buffer = np.concatenate(blocks[start : start + self.buffer_blocks])
            parts.append(rng.permutation(buffer))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def blocks_by_row(rows: np.ndarray, block_size: int) -> list[np.ndarray]:
    """Dataset indices sorted by cache row, cut into consecutive blocks of `block_size`."""
    by_row = np.argsort(np.asarray(rows), kind="stable")
    return [by_row[s : s + block_size] for s in range(0, len(by_row), block_size)]


class BatchesOf:
    """Lists of `batch_size` indices from `sampler`, for a loader that reads a batch at once.

    Like `torch.utils.data.BatchSampler`, plus `set_epoch`, passed on to the sampler (Lightning
    looks for `set_epoch` on the loader's sampler).
    """

    def __init__(self, sampler: _EpochSampler, batch_size: int, drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, not {batch_size}")
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.sampler.rank_order(self.sampler.epoch).tolist()
        stop = len(self) * self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            yield order[start : start + self.batch_size]

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def available_memory_bytes() -> int:
    """Memory the system can give without swapping: MemAvailable, else free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def should_block_shuffle(cache_bytes: int, available: int | None = None) -> bool:
    """True when a cache of `cache_bytes` does not fit in the memory available now.

    An epoch of per-location random reads then goes to disk for nearly every location, while
    block shuffling reads whole blocks sequentially. (With an unknown amount of memory, 0, it is
    used: it costs little randomness, and random reads from disk cost much.)
    """
    available = available_memory_bytes() if available is None else available
    return cache_bytes > available
