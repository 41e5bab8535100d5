"""Every rank of a distributed run trains on its share of one order: the training sampler
(`BlockShuffle` or `LocationShuffle`) is chosen once, by rank 0, and kept by a resumed run,
whatever memory each process finds free. Two real gloo processes, bounded by a timeout."""

from __future__ import annotations

import multiprocessing
import traceback
from datetime import timedelta
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from geoguess.data import FolderDataModule
from geoguess.data import sampler as sampler_mod
from geoguess.data.sampler import BlockShuffle, LocationShuffle
from geoguess.geo import build_grid
from tests.data_helpers import croatia, data_settings, write_dataset

WORLD_SIZE = 2
RANK_TIMEOUT_S = 240
# Free memory each rank finds: under the former per-rank rule rank 0 would take BlockShuffle
# (its cache does not fit in 0 bytes) and rank 1 LocationShuffle.
FREE_MEMORY = {0: 0, 1: 2**62}


def make_dm(root: Path, cache_dir: Path) -> FolderDataModule:
    small = {"cache_dir": cache_dir, "num_workers": 0, "batch_size": 4, "augment": False}
    return FolderDataModule(
        root,
        **{**data_settings(), **small, "split": (1.0, 0.0, 0.0), "split_by": "hash"},
        country=croatia(),
        progress=False,
        image_size=16,
        seed=0,
        grid=partial(build_grid, spacing=0.5, drop_empty=True),
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    """A dataset whose image cache is built (the ranks only load it)."""
    root = tmp_path_factory.mktemp("ranks") / "data"
    write_dataset(root, 40, size=24, seed=3)
    cache_dir = root.parent / "cache"
    make_dm(root, cache_dir).prepare_data()
    return root, cache_dir


def epoch_indices(dm: FolderDataModule, epoch: int) -> list[int]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [int(i) for batch in loader for i in batch["index"]]


def _rank_main(rank: int, root: Path, cache_dir: Path, store: Path, results) -> None:
    try:
        import torch.distributed as dist
        from lightning.pytorch.strategies import DDPStrategy

        sampler_mod.available_memory_bytes = lambda: FREE_MEMORY[rank]
        dist.init_process_group(
            "gloo",
            init_method=f"file://{store}",
            rank=rank,
            world_size=WORLD_SIZE,
            timeout=timedelta(seconds=RANK_TIMEOUT_S // 2),
        )
        dm = make_dm(root, cache_dir)
        dm.setup("fit")
        # What Lightning's trainer offers the data module under DDP: the rank, the world size
        # and the strategy's broadcast.
        dm.trainer = SimpleNamespace(
            global_rank=rank, world_size=WORLD_SIZE, strategy=DDPStrategy(), training=False
        )
        kind = type(dm.train_dataloader().sampler.sampler).__name__
        epochs = [epoch_indices(dm, e) for e in range(2)]
        results.put((rank, kind, epochs, len(dm.datasets["train"])))
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - handed to the test, which fails with it
        results.put((rank, "error", traceback.format_exc(), 0))


@pytest.mark.slow
def test_ranks_that_find_different_free_memory_still_partition_the_data(prepared, tmp_path):
    root, cache_dir = prepared
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    store = tmp_path / "store"
    ranks = [
        context.Process(target=_rank_main, args=(r, root, cache_dir, store, results))
        for r in range(WORLD_SIZE)
    ]
    for process in ranks:
        process.start()
    try:
        answers = {}
        for _ in ranks:
            rank, kind, epochs, n = results.get(timeout=RANK_TIMEOUT_S)
            assert kind != "error", epochs
            answers[rank] = (kind, epochs, n)
    finally:
        for process in ranks:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    kinds = {kind for kind, _, _ in answers.values()}
    assert kinds == {"BlockShuffle"}  # rank 0's choice, on every rank
    n = answers[0][2]
    assert n == 40 and n % WORLD_SIZE == 0  # no padding: each index exactly once
    for epoch in range(2):
        shares = [answers[r][1][epoch] for r in range(WORLD_SIZE)]
        assert sorted(shares[0] + shares[1]) == list(range(n))
        assert len(shares[0]) == len(shares[1]) == n // WORLD_SIZE
    assert answers[0][1][0] != answers[0][1][1]  # a new order each epoch


def test_a_resumed_run_keeps_the_order_of_its_checkpoint(prepared, monkeypatch):
    root, cache_dir = prepared
    monkeypatch.setattr(sampler_mod, "available_memory_bytes", lambda: 0)
    first = make_dm(root, cache_dir)
    first.setup("fit")
    assert isinstance(first.train_dataloader().sampler.sampler, BlockShuffle)
    state = first.state_dict()
    assert state["train_order"] == "block"

    # Resumed where the cache fits in memory: it still reads in blocks, the same order.
    monkeypatch.setattr(sampler_mod, "available_memory_bytes", lambda: 2**62)
    resumed = make_dm(root, cache_dir)
    resumed.load_state_dict(state)
    resumed.setup("fit")
    assert isinstance(resumed.train_dataloader().sampler.sampler, BlockShuffle)
    assert epoch_indices(resumed, 3) == epoch_indices(first, 3)

    fresh = make_dm(root, cache_dir)  # the same machine, a new run: chooses for itself
    fresh.setup("fit")
    assert isinstance(fresh.train_dataloader().sampler.sampler, LocationShuffle)
    assert fresh.state_dict()["train_order"] == "location"


def test_a_checkpoint_without_an_order_lets_the_run_choose(prepared, monkeypatch):
    root, cache_dir = prepared
    monkeypatch.setattr(sampler_mod, "available_memory_bytes", lambda: 2**62)
    dm = make_dm(root, cache_dir)
    dm.load_state_dict({"fitted": None})  # a checkpoint written before the order was kept
    dm.setup("fit")
    assert isinstance(dm.train_dataloader().sampler.sampler, LocationShuffle)
    with pytest.raises(Exception, match="training order 'random'"):
        dm.load_state_dict({"train_order": "random"})
    assert np.array_equal(
        epoch_indices(dm, 0), LocationShuffle(len(dm.datasets["train"]), 0).order(0)
    )
