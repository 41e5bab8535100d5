"""Training orders: pure functions of (seed, epoch), full coverage, DDP split, block locality."""

from __future__ import annotations

import numpy as np
import pytest

from geoguess.data.sampler import (
    BatchesOf,
    BlockShuffle,
    LocationShuffle,
    blocks_by_row,
    should_block_shuffle,
)


def epoch_order(sampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def split_rows(n_cache: int, n_split: int, seed: int = 0) -> np.ndarray:
    """Cache rows of a split: a random subset of the cache, in the split's (frame) order."""
    return np.random.default_rng(seed).choice(n_cache, n_split, replace=False)


@pytest.mark.parametrize(
    "make",
    [lambda: LocationShuffle(103, seed=5), lambda: BlockShuffle(split_rows(150, 103), seed=5)],
    ids=["location", "block"],
)
def test_order_is_a_function_of_seed_and_epoch_and_covers_every_index(make):
    sampler = make()
    first = epoch_order(sampler, 0)
    assert sorted(first) == list(range(103))
    second = epoch_order(sampler, 1)
    assert sorted(second) == list(range(103)) and second != first
    # No hidden state: a new sampler (a resumed run) at epoch 1 gives epoch 1's order, and
    # iterating twice or going back gives the same orders.
    resumed = make()
    assert epoch_order(resumed, 1) == second
    assert list(resumed) == second
    assert epoch_order(resumed, 0) == first
    other_seed = make()
    other_seed.seed = 6
    assert epoch_order(other_seed, 0) != first


def test_location_shuffle_is_numpys_permutation():
    order = epoch_order(LocationShuffle(50, seed=3), 7)
    assert order == np.random.default_rng([3, 7]).permutation(50).tolist()
    assert list(LocationShuffle(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_blocks_hold_consecutive_cache_rows():
    rows = split_rows(1000, 700, seed=1)
    blocks = blocks_by_row(rows, 64)
    assert [len(b) for b in blocks] == [64] * 10 + [60]
    flat = np.concatenate(blocks)
    assert sorted(flat.tolist()) == list(range(700))
    # Each block is a run of the split's rows in cache order: sorted, and no split row of
    # another block falls inside its span.
    sorted_rows = np.sort(rows)
    for k, block in enumerate(blocks):
        assert np.array_equal(rows[block], sorted_rows[64 * k : 64 * k + len(block)])


def test_block_shuffle_reads_blocks_within_a_buffer():
    rows = split_rows(5000, 4000, seed=2)
    sampler = BlockShuffle(rows, seed=0, block_size=50, buffer_blocks=4)
    order = np.array(epoch_order(sampler, 3))
    block_of = np.empty(4000, dtype=np.int64)
    for b, members in enumerate(sampler.blocks):
        block_of[members] = b
    # Each window of 200 consecutive positions (one buffer) draws from exactly 4 blocks,
    # every block of it whole.
    for start in range(0, 4000, 200):
        window = block_of[order[start : start + 200]]
        assert len(set(window.tolist())) == 4
        assert all(np.sum(window == b) == 50 for b in set(window.tolist()))
    # Within the buffer the locations are mixed: consecutive positions rarely share a block.
    same = np.mean(block_of[order[1:]] == block_of[order[:-1]])
    assert same < 0.5

    # A batch of 32 reads from at most two buffers' blocks; a per-location shuffle from ~32.
    def blocks_per_batch(order):
        return max(len(set(block_of[order[s : s + 32]].tolist())) for s in range(0, 4000, 32))

    assert blocks_per_batch(order) <= 8
    assert blocks_per_batch(np.array(epoch_order(LocationShuffle(4000), 3))) > 24


@pytest.mark.parametrize("world_size,n", [(2, 10), (3, 10), (4, 3)])
def test_ddp_ranks_split_the_epoch_and_pad_to_equal_length(world_size, n):
    for make in (
        lambda r: LocationShuffle(n, seed=1, rank=r, world_size=world_size),
        lambda r: BlockShuffle(split_rows(2 * n, n), seed=1, rank=r, world_size=world_size),
    ):
        ranks = [epoch_order(make(r), 2) for r in range(world_size)]
        length = -(-n // world_size)
        assert all(len(r) == length == len(make(0)) for r in ranks)
        everything = [i for r in ranks for i in r]
        assert set(everything) == set(range(n))  # every index on some rank
        assert len(everything) - len(set(everything)) == length * world_size - n  # padding
        # The ranks interleave one whole-epoch order, as DistributedSampler does.
        whole = make(0).order(2)
        padded = np.resize(whole, length * world_size)
        for r in range(world_size):
            assert ranks[r] == padded[r::world_size].tolist()
    with pytest.raises(ValueError, match="rank"):
        LocationShuffle(5, rank=2, world_size=2)


def test_ddp_drop_last_drops_the_remainder():
    ranks = [list(LocationShuffle(10, rank=r, world_size=3, drop_last=True)) for r in range(3)]
    assert [len(r) for r in ranks] == [3, 3, 3]
    assert len({i for r in ranks for i in r}) == 9


def test_batches_of_pass_the_epoch_on():
    sampler = LocationShuffle(10, seed=4)
    batches = BatchesOf(sampler, 4)
    batches.set_epoch(2)
    got = list(batches)
    assert len(got) == len(batches) == 3 and [len(b) for b in got] == [4, 4, 2]
    assert [i for b in got for i in b] == epoch_order(LocationShuffle(10, seed=4), 2)
    assert len(BatchesOf(sampler, 4, drop_last=True)) == 2
    assert [len(b) for b in BatchesOf(sampler, 4, drop_last=True)] == [4, 4]


def test_should_block_shuffle_compares_with_available_memory():
    assert should_block_shuffle(10 * 2**30, available=8 * 2**30)
    assert not should_block_shuffle(2 * 2**30, available=8 * 2**30)
    # The real figure: a 1 kB cache fits, one larger than the whole address space does not.
    assert not should_block_shuffle(1024)
    assert should_block_shuffle(2**62)
