"""A rank with nothing to do in a step or an epoch still takes part in the collectives, so the
other ranks never wait for it forever: two real gloo processes, each bounded by a timeout.

Rank 1 gets an all-unreadable (empty) training batch while rank 0 trains on a real one, and has
no validation outputs while rank 0 has some."""

from __future__ import annotations

import multiprocessing
import traceback
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from tests.test_models import _module, batch_of

WORLD_SIZE = 2
RANK_TIMEOUT_S = 180
LOCATIONS = 6


def fitted_data():
    """The `fitted` fixture of tests/test_models.py, made again in each process."""
    from geoguess.data import FittedData
    from geoguess.data.targets import TargetSpace
    from geoguess.geo import Country
    from tests.conf_helpers import from_conf
    from tests.data_helpers import croatia_points

    country = Country()
    lat, lon = croatia_points(300, seed=1)
    grid = from_conf("grid", "square", spacing=0.8)(country, train_lat=lat, train_lon=lon)
    return FittedData(
        TargetSpace.fit(lat, lon), grid, (0.4, 0.5, 0.45), (0.2, 0.25, 0.22), 32, country
    )


def empty_batch(batch: dict) -> dict:
    """What the loader gives for a batch whose every location is unreadable."""
    return {k: v[:0] for k, v in batch.items()}


class TrainingStep(nn.Module):
    """What Lightning's DDP wrapper does: the training step inside DDP's forward."""

    def __init__(self, module) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch: dict) -> torch.Tensor:
        return self.module.training_step(batch, 1)


def setup_module(world_size: int):
    torch.manual_seed(0)
    module = _module(fitted_data())
    module.log = lambda *args, **kwargs: None  # no Trainer attached
    datasets = {"val": SimpleNamespace(uuids=[f"loc{i}" for i in range(LOCATIONS)])}
    module.trainer = SimpleNamespace(
        world_size=world_size, datamodule=SimpleNamespace(datasets=datasets)
    )
    return module


def head_gradient_and_frame(module, batch: dict, ddp: bool) -> tuple[np.ndarray, list, list]:
    step = TrainingStep(module)
    if ddp:
        step = nn.parallel.DistributedDataParallel(step, find_unused_parameters=False)
    step(batch).backward()
    gradient = module.head.linear.weight.grad.detach().clone().numpy()
    if len(batch["uuid"]):
        module._eval_step("val", batch)
    frame = module._gather_frame("val")
    return gradient, frame["uuid"].tolist(), frame["error_km"].tolist()


def _rank_main(rank: int, store: Path, results) -> None:
    try:
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo",
            init_method=f"file://{store}",
            rank=rank,
            world_size=WORLD_SIZE,
            timeout=timedelta(seconds=RANK_TIMEOUT_S // 2),
        )
        module = setup_module(WORLD_SIZE)
        batch = batch_of(module.fitted, LOCATIONS)
        batch = batch if rank == 0 else empty_batch(batch)
        results.put((rank, head_gradient_and_frame(module, batch, ddp=True)))
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - handed to the test, which fails with it
        results.put((rank, traceback.format_exc()))


@pytest.mark.slow
def test_a_rank_without_locations_does_not_hang_the_others(tmp_path):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    store = tmp_path / "store"
    ranks = [
        context.Process(target=_rank_main, args=(r, store, results)) for r in range(WORLD_SIZE)
    ]
    for process in ranks:
        process.start()
    try:
        answers = {}
        for _ in ranks:
            rank, answer = results.get(timeout=RANK_TIMEOUT_S)
            assert not isinstance(answer, str), answer
            answers[rank] = answer
    finally:
        for process in ranks:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    # One process alone, on rank 0's batch: its gradient, its frame.
    alone = setup_module(1)
    gradient, uuids, errors = head_gradient_and_frame(
        alone, batch_of(alone.fitted, LOCATIONS), False
    )
    for rank in range(WORLD_SIZE):
        rank_gradient, rank_uuids, rank_errors = answers[rank]
        # DDP averages: rank 0's gradient and rank 1's zeros, halved, on both ranks.
        np.testing.assert_allclose(rank_gradient, gradient / 2, rtol=1e-5, atol=1e-8)
        assert rank_uuids == uuids and len(uuids) == LOCATIONS
        np.testing.assert_allclose(rank_errors, errors, rtol=1e-9)
    assert np.abs(gradient).sum() > 0


def test_an_empty_training_batch_gives_a_zero_loss_on_every_trainable_parameter():
    module = setup_module(1)
    module.network.backbone.requires_grad_(False)  # a frozen backbone: no graph through it
    loss = module.training_step(empty_batch(batch_of(module.fitted, LOCATIONS)), 0)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and not p.grad.any() for p in trainable)
    assert all(p.grad is None for p in module.network.backbone.parameters())


def test_an_empty_batch_logs_the_synchronised_entries_of_a_full_one_with_batch_size_0():
    """Entries synchronised at the epoch's end must exist on every rank, under the same names
    and settings; the per-step progress value is left out."""
    module = setup_module(1)
    logged = []
    module.log = lambda name, value, **settings: logged.append((name, settings))
    batch = batch_of(module.fitted, LOCATIONS)
    for stage, step in (("train", module.training_step), ("val", module.validation_step)):
        logged.clear()
        step(batch, 0)
        full = [(n, s) for n, s in logged if s.get("sync_dist")]
        logged.clear()
        step(empty_batch(batch), 0)
        assert [n for n, s in full] == [n for n, s in logged] and full, stage
        for (_, then), (_, now) in zip(full, logged, strict=True):
            assert now == {**then, "batch_size": 0}, stage


def test_evaluation_outputs_are_float64_guesses_for_every_head():
    """The gather across ranks needs one dtype per output on every rank (an empty rank makes
    its own empty tensors); a head that gave float32 would be cast, changing the CSV's text."""
    from geoguess.models.module import OUTPUTS
    from tests.test_models import CLASSIFICATION

    for kind in ("classification", "regression", "hybrid"):
        head = dataclasses_replace(CLASSIFICATION, kind=kind, offset_weight=1.0)
        module = _module(fitted_data(), head=head)
        guess = module.predictor.guess(batch_of(module.fitted, 3)["images"])
        for key in ("xy", "radius50", "radius90"):
            assert guess[key].dtype == OUTPUTS[key][1], (kind, key)


def dataclasses_replace(spec, **changes):
    import dataclasses

    return dataclasses.replace(spec, **changes)
