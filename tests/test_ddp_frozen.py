"""A frozen backbone under DDP: frozen before DDP wraps the model and left out of it (plain
`ddp`, no search for unused parameters) when the same parameters train in every epoch; and
training batches without images while cached features stand for them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geoguess.builders import FIND_UNUSED, build_trainer
from tests.conf_helpers import from_conf
from tests.data_helpers import write_dataset
from tests.test_sampler_ranks import make_dm
from tests.train_helpers import FAST, composed, dataset, folder_data


def test_schedules_that_train_the_same_parameters_in_every_epoch():
    assert from_conf("unfreeze", "frozen").same_every_epoch(10) and from_conf(
        "unfreeze", "never"
    ).same_every_epoch(None)
    assert from_conf("unfreeze", "at_epoch", epoch=3).same_every_epoch(
        3
    )  # frozen for the whole run
    assert not from_conf("unfreeze", "at_epoch", epoch=3).same_every_epoch(4)
    assert not from_conf("unfreeze", "gradual", every=2).same_every_epoch(5) and from_conf(
        "unfreeze", "gradual", every=2
    ).same_every_epoch(2)


@pytest.mark.parametrize(
    ("schedule", "overrides", "find_unused"),
    [
        (from_conf("unfreeze", "frozen"), [], False),
        (from_conf("unfreeze", "never"), [], False),
        (from_conf("unfreeze", "at_epoch", epoch=1), [], True),
        (from_conf("unfreeze", "at_epoch", epoch=1), ["trainer.max_epochs=1"], False),
        (
            from_conf("unfreeze", "frozen"),
            ["trainer.strategy=ddp_spawn"],
            None,
        ),  # set by hand: kept
    ],
)
def test_ddp_searches_for_unused_parameters_only_when_a_schedule_unfreezes(
    schedule, overrides, find_unused, tmp_path
):
    with composed(["trainer=ddp", "trainer.devices=2", *overrides], tmp_path) as cfg:
        assert cfg.trainer.strategy in (FIND_UNUSED, "ddp_spawn")
        trainer = build_trainer(cfg, logger=False, callbacks=[schedule])
    kwargs = trainer.strategy._ddp_kwargs
    if find_unused is None:
        assert type(trainer.strategy).__name__ == "DDPStrategy"
        assert trainer.strategy._start_method == "spawn"
    else:
        assert kwargs.get("find_unused_parameters", False) is find_unused


@pytest.fixture(scope="module")
def cached_dm(tmp_path_factory):
    root = tmp_path_factory.mktemp("images") / "data"
    write_dataset(root, 12, size=24, seed=5)
    dm = make_dm(root, root.parent / "cache")
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_training_batches_skip_their_images_while_cached_features_stand_for_them(cached_dm):
    dm = cached_dm
    loader = dm.train_dataloader()
    with_images = next(iter(loader))
    assert with_images["images"].shape[1:] == (4, 3, 16, 16)
    dm.read_train_images(False)
    batch = next(iter(loader))
    assert "images" not in batch
    rows = dm.datasets["train"].rows[batch["index"].numpy()]
    assert np.array_equal(batch["row"].numpy(), rows) and len(rows) == 4
    assert "images" in next(iter(dm.loader("train")))  # passes besides training read them
    loader = dm.train_dataloader()  # a loader made later (the trainer's next fit) too
    assert "images" not in next(iter(loader))
    dm.read_train_images(True)
    again = next(iter(loader))
    assert again["images"].shape == with_images["images"].shape


def test_the_module_tells_the_data_when_cached_features_stand_for_the_images(cached_dm):
    from types import SimpleNamespace

    from tests.test_lonely_rank import setup_module

    module = setup_module(1)
    module.trainer = SimpleNamespace(datamodule=cached_dm)
    module.feature_cache = object()
    assert "images" not in next(iter(cached_dm.train_dataloader()))
    module.feature_cache = None  # the backbone starts training: the images again
    assert "images" in next(iter(cached_dm.train_dataloader()))


@pytest.mark.slow
def test_torchrun_ddp_with_a_frozen_backbone_and_its_feature_cache(tmp_path):
    """Two gloo ranks under torchrun: the feature cache built by both, plain DDP over fusion
    and head, training batches without images; the run ends as one process's would."""
    root = dataset(tmp_path, num_locations=40, image_size=32)
    from tests.cli import command_env

    args = [*FAST, *folder_data(root), "data.split_by=hash", "trainer=ddp", "trainer.devices=2"]
    args += ["unfreeze=frozen", "trainer.max_epochs=2", "seed=11"]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node=2"]
        + ["-m", "geoguess.train", *args, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "ok" and results["epochs"] == 2
    (features,) = (root / ".geoguess-cache").rglob("features-*.npy")
    assert np.load(features).shape[:2] == (40, 4)
    assert not list(features.parent.glob(".features-*"))  # no part is left
