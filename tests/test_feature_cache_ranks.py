"""The feature cache built by the ranks of a distributed run together: each encodes its share of
the blocks, rank 0 joins them into the file one process would have written, and a rank slower
than the default collective timeout does not end the run. Two real gloo processes, bounded by
a timeout. And `model.inference_block`: the blocks of the no-gradient passes."""

from __future__ import annotations

import multiprocessing
import time
import traceback
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from geoguess.models.feature_cache import FeatureCache, Ranks

WORLD_SIZE = 2
RANK_TIMEOUT_S = 180
# The default group's timeout in the ranks, and how long rank 0 takes over its first block:
# longer, so that a wait under the default timeout would fail.
DEFAULT_TIMEOUT_S = 4
SLOW_S = 8
LOCATIONS, BLOCK = 37, 4


def images() -> np.ndarray:
    generator = np.random.default_rng(0)
    return generator.integers(0, 256, (LOCATIONS, 4, 3, 5, 5), dtype=np.uint8)


class Encoder:
    """Per-view means; remembers the blocks it was given (and sleeps first, when slow)."""

    def __init__(self, slow: bool = False) -> None:
        self.blocks: list[int] = []
        self.slow = slow

    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        if self.slow and not self.blocks:
            time.sleep(SLOW_S)
        self.blocks.append(len(views))
        return views.float().flatten(2).mean(-1) / 255


def _rank_main(rank: int, store: Path, folder: Path, results) -> None:
    try:
        import torch.distributed as dist
        from lightning.pytorch.strategies import DDPStrategy

        dist.init_process_group(
            "gloo",
            init_method=f"file://{store}",
            rank=rank,
            world_size=WORLD_SIZE,
            timeout=timedelta(seconds=DEFAULT_TIMEOUT_S),
        )
        encode = Encoder(slow=rank == 0)
        ranks = Ranks(rank, WORLD_SIZE, DDPStrategy())
        cache = FeatureCache.build_or_load(folder, "k", images(), encode, BLOCK, ranks=ranks)
        results.put((rank, (encode.blocks, np.array(cache.array))))
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - handed to the test, which fails with it
        results.put((rank, traceback.format_exc()))


@pytest.mark.slow
def test_ranks_build_the_cache_one_process_would_even_when_one_is_slow(tmp_path):
    alone = Encoder()
    (tmp_path / "one").mkdir()
    expected = FeatureCache.build_or_load(tmp_path / "one", "k", images(), alone, BLOCK).array
    assert np.allclose(expected, images().astype(np.float32).reshape(37, 4, -1).mean(-1) / 255)

    folder = tmp_path / "ranks"
    folder.mkdir()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(target=_rank_main, args=(r, tmp_path / "store", folder, results))
        for r in range(WORLD_SIZE)
    ]
    for process in processes:
        process.start()
    try:
        answers = {}
        for _ in processes:
            rank, answer = results.get(timeout=RANK_TIMEOUT_S)
            assert not isinstance(answer, str), answer
            answers[rank] = answer
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    # Each rank encoded its share of the single process's blocks, the same blocks.
    shares = [answers[r][0] for r in range(WORLD_SIZE)]
    assert shares[0] + shares[1] == alone.blocks == [4] * 9 + [1]
    assert len(shares[0]) == 5 and len(shares[1]) == 5
    for rank in range(WORLD_SIZE):
        assert np.array_equal(answers[rank][1], expected)  # the same bits, on every rank
    assert [p.name for p in folder.iterdir()] == ["features-k.npy"]  # no part is left


def _network(inference_block):
    from tests.test_lonely_rank import fitted_data
    from tests.test_models import _network

    return _network(fitted_data(), inference_block=inference_block)


@pytest.mark.parametrize(
    ("block", "passes", "variant"),
    [(None, [64, 64, 32], ""), (16, [64, 64, 32], ""), (5, [20] * 8, ":block5")],
)
def test_inference_block_sets_the_passes_and_keys_other_blocks_apart(block, passes, variant):
    """`model.inference_block`: null is 16 locations on the CPU, the blocks cached features
    were always made with (their key unchanged); another size is a feature cache of its own."""
    network = _network(block).eval()
    seen = []
    network.backbone.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
    with torch.no_grad():
        network.encode_views(torch.zeros((40, 4, 3, 8, 8), dtype=torch.uint8))
    assert seen == passes and network.feature_variant() == variant
    assert network.inference_block(torch.device("cuda")) == (block or 64)


def test_checkpoints_from_before_the_setting_keep_blocks_of_16_on_the_cpu():
    from geoguess.models.spec import NetworkSpec, SpecError

    network = _network(None)
    spec = network.spec.to_dict()
    assert spec["inference_block"] is None
    del spec["inference_block"]
    assert NetworkSpec.from_dict(spec) == network.spec  # resumes under today's default
    assert network.inference_block() == 16
    with pytest.raises(SpecError, match="model.inference_block=0"):
        NetworkSpec.from_dict({**spec, "inference_block": 0})
