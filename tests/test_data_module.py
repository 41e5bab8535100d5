"""The datamodule against docs/data-interface.md: batches, train-only fitting, statistics,
augmentation, on_invalid, prediction, and the round trip on the real sample."""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from geoguess.data import DataError, FittedData, FolderDataModule, GeoguesserDataset
from geoguess.data import stats as stats_mod
from geoguess.data.targets import TargetSpace
from geoguess.geo import build_grid, haversine_km
from geoguess.synthetic import SyntheticDataModule
from geoguess.utils.io import OutputExistsError
from tests.conftest import REPO_ROOT
from tests.data_helpers import (
    croatia,
    data_settings,
    set_cell,
    touch_newer,
    truncate,
    view_path,
    write_dataset,
)

SIZE = 32
N = 60


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("module") / "data"
    return root, write_dataset(root, N, size=40, seed=11)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def make_dm(root, cache_dir, **kwargs) -> FolderDataModule:
    """conf/data/folder.yaml's settings, small and fast, with `kwargs` over them."""
    kwargs.setdefault("image_size", SIZE)
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("batch_size", 8)
    kwargs.setdefault("split_by", "hash")
    kwargs.setdefault("grid", partial(build_grid, spacing=0.5, drop_empty=True))
    settings = {**data_settings(), "cache_dir": cache_dir, **kwargs}
    return FolderDataModule(root, country=croatia(), progress=False, **settings)


@pytest.fixture(scope="module")
def ready(dataset, cache_dir, tmp_path_factory) -> FolderDataModule:
    run_dir = tmp_path_factory.mktemp("run")
    dm = make_dm(dataset[0], cache_dir, run_dir=run_dir)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def all_batches(loader) -> dict:
    batches = list(loader)
    return {
        "images": torch.cat([b["images"] for b in batches]),
        "latlon": torch.cat([b["latlon"] for b in batches]),
        "target": torch.cat([b["target"] for b in batches]),
        "class_id": torch.cat([b["class_id"] for b in batches]),
        "uuid": [u for b in batches for u in b["uuid"]],
    }


def test_batches_follow_the_contract(ready, dataset):
    _, frame = dataset
    batch = next(iter(ready.train_dataloader()))
    assert batch["images"].dtype == torch.uint8
    assert batch["images"].shape == (8, 4, 3, SIZE, SIZE)
    assert batch["latlon"].dtype == torch.float64 and batch["latlon"].shape == (8, 2)
    assert batch["target"].dtype == torch.float32 and batch["target"].shape == (8, 2)
    assert batch["class_id"].dtype == torch.int64 and batch["class_id"].shape == (8,)
    assert isinstance(batch["uuid"], list) and all(isinstance(u, str) for u in batch["uuid"])
    coords = frame.set_index("uuid")
    for name, loader in [("val", ready.val_dataloader()), ("test", ready.test_dataloader())]:
        seen = all_batches(loader)
        assert seen["uuid"] == ready.splits[name]["uuid"].tolist()
        expected = coords.loc[seen["uuid"], ["latitude", "longitude"]].to_numpy()
        assert np.array_equal(seen["latlon"].numpy(), expected)  # float64, exact
        assert (seen["class_id"] >= 0).all()
        assert (seen["class_id"] < ready.fitted.grid.num_classes).all()


def test_splits_are_disjoint_and_cover_the_data(ready, dataset):
    _, frame = dataset
    splits = {name: set(s["uuid"]) for name, s in ready.splits.items()}
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"])
    assert not (splits["val"] & splits["test"])
    assert set.union(*splits.values()) == set(frame["uuid"])
    assert len(splits["train"]) > len(splits["val"]) > 0


def test_targets_grid_and_statistics_are_fitted_on_train_only(ready):
    train = ready.splits["train"]
    fitted = ready.fitted
    assert fitted.targets == TargetSpace.fit(train["latitude"], train["longitude"])
    targets = all_batches(ready.val_dataloader())["target"]
    train_targets = np.concatenate([b["target"] for b in ready.train_dataloader()])
    assert train_targets.min() == pytest.approx(0, abs=1e-6)
    assert train_targets.max() == pytest.approx(1, abs=1e-6)
    assert targets.numpy() == pytest.approx(
        fitted.targets.normalize(*ready.splits["val"][["latitude", "longitude"]].T.to_numpy()),
        abs=1e-6,
    )
    table = fitted.grid.table
    assert table["train_count"].sum() == len(train) and (table["train_count"] > 0).all()
    # Per-class mean coordinates of the training locations.
    first = table.iloc[0]
    members = train[fitted.grid.assign(train["latitude"], train["longitude"]) == 0]
    x, y = fitted.targets.projector.forward(members["latitude"], members["longitude"])
    lat, lon = fitted.targets.projector.inverse(x.mean(), y.mean())
    assert (first["train_latitude"], first["train_longitude"]) == pytest.approx(
        (float(lat), float(lon))
    )
    # Channel statistics over the training images only, straight from the cache.
    cache = ready.report.cache
    views = np.asarray(cache.open())[[cache.index[u] for u in train["uuid"]]] / 255.0
    assert fitted.image_mean == pytest.approx(views.mean(axis=(0, 1, 3, 4)), abs=1e-9)
    assert fitted.image_std == pytest.approx(views.std(axis=(0, 1, 3, 4)), abs=1e-9)


def test_fitted_is_saved_and_round_trips(ready):
    saved = json.loads((ready.run_dir / "fitted.json").read_text())
    assert saved == ready.fitted.to_dict()
    restored = FittedData.from_dict(saved)
    assert restored.targets == ready.fitted.targets
    assert restored.to_dict() == ready.fitted.to_dict()
    lat, lon = ready.splits["val"]["latitude"], ready.splits["val"]["longitude"]
    assert (restored.grid.assign(lat, lon) == ready.fitted.grid.assign(lat, lon)).all()
    # Checkpoints (torch.load with weights_only) need plain types only.
    torch.save(ready.state_dict(), ready.run_dir / "state.pt")
    assert torch.load(ready.run_dir / "state.pt", weights_only=True)["fitted"] == saved
    # setup is idempotent: the fitted data and the file stay as they are.
    before = ready.fitted
    ready.setup("fit")
    ready.setup("test")
    assert ready.fitted is before
    # A second datamodule in the same run reproduces the file; a different one never clobbers it.
    twin = make_dm(ready.roots[0], ready.cache_dir, run_dir=ready.run_dir)
    twin.setup("fit")
    assert twin.fitted.to_dict() == saved
    other = make_dm(ready.roots[0], ready.cache_dir, run_dir=ready.run_dir, split=[0.6, 0.2, 0.2])
    with pytest.raises(OutputExistsError):
        other.setup("fit")
    assert json.loads((ready.run_dir / "fitted.json").read_text()) == saved


def test_loaders_hand_over_cache_rows_with_their_index(ready):
    # Augmentation is a batch operation on the training device (geoguess.data.augment), so
    # every loader hands over the cache's pixels, with the dataset index that keys it.
    cache = ready.report.cache
    array = cache.open()
    for loader, name in ((ready.val_dataloader(), "val"), (ready.train_dataloader(), "train")):
        batch = next(iter(loader))
        rows = [cache.index[u] for u in batch["uuid"]]
        assert np.array_equal(batch["images"].numpy(), array[rows])
        uuids = ready.splits[name]["uuid"]
        assert [uuids[i] for i in batch["index"].tolist()] == batch["uuid"]


def test_statistics_are_cached_and_recomputed_when_a_file_changes(tmp_path, monkeypatch):
    root = tmp_path / "data"
    frame = write_dataset(root, 20, size=32, seed=12)
    first = make_dm(root, tmp_path / "cache")
    first.setup("fit")

    def no_recompute(*args, **kwargs):
        raise AssertionError("statistics recomputed although nothing changed")

    with monkeypatch.context() as patch:
        patch.setattr(stats_mod, "stats_from_memmap", no_recompute)
        again = make_dm(root, tmp_path / "cache")
        again.setup("fit")
    assert again.fitted.image_mean == first.fitted.image_mean

    uuid = first.splits["train"]["uuid"][0]
    path = view_path(root, uuid, 0)
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(path)
    touch_newer(path)
    changed = make_dm(root, tmp_path / "cache")
    changed.setup("fit")
    assert changed.report.key != first.report.key
    assert all(
        a > b for a, b in zip(changed.fitted.image_mean, first.fitted.image_mean, strict=True)
    )
    assert set(changed.splits["train"]["uuid"]) == set(first.splits["train"]["uuid"])
    assert len(frame) == 20


def test_on_invalid_error_lists_problems_and_skip_leaves_them_out(tmp_path, caplog):
    root = tmp_path / "data"
    frame = write_dataset(root, 20, size=32, seed=13)
    truncate(view_path(root, frame["uuid"][3], 90))
    set_cell(root, 7, "latitude", "nan")
    view_path(root, frame["uuid"][9], 0).unlink()
    with pytest.raises(DataError) as error:
        make_dm(root, tmp_path / "cache", run_dir=tmp_path / "run-error").setup("fit")
    message = str(error.value)
    assert "3 problem(s) make 3 of 20 locations unusable" in message
    assert (
        f"{view_path(root, frame['uuid'][3], 90)} ({root / 'data.csv'} row 4): does not decode"
        in message
    )
    assert (
        f"{root / 'data.csv'} row 8 (uuid '{frame['uuid'][7]}'): latitude 'nan' is not a number"
        in message
    )
    assert (
        f"{view_path(root, frame['uuid'][9], 0)} ({root / 'data.csv'} row 10): missing file"
        in message
    )
    assert "data.on_invalid=skip" in message
    # The list the message points to exists, with every problem.
    listed = tmp_path / "run-error" / "invalid_locations.csv"
    assert str(listed) in message
    assert set(pd.read_csv(listed)["uuid"]) == {frame["uuid"][i] for i in (3, 7, 9)}

    run_dir = tmp_path / "run-skip"
    dm = make_dm(root, tmp_path / "cache", on_invalid="skip", run_dir=run_dir)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert "leaving out 3 of 20 locations" in caplog.text
    bad = {frame["uuid"][i] for i in (3, 7, 9)}
    used = set().union(*(set(s["uuid"]) for s in dm.splits.values()))
    assert used == set(frame["uuid"]) - bad
    invalid = pd.read_csv(run_dir / "invalid_locations.csv")
    assert list(invalid.columns[:2]) == ["uuid", "reason"]
    assert set(invalid["uuid"]) == bad


def test_without_cache_batches_equal_and_later_failures_do_not_crash(tmp_path, caplog):
    root = tmp_path / "data"
    write_dataset(root, 24, size=32, seed=14)
    cached = make_dm(root, tmp_path / "cache", augment=False)
    cached.setup("fit")
    direct = make_dm(root, tmp_path / "cache", augment=False, cache=False)
    direct.setup("fit")
    assert direct.report.cache is None
    assert direct.fitted.image_mean == pytest.approx(cached.fitted.image_mean, abs=1e-9)
    a, b = all_batches(cached.val_dataloader()), all_batches(direct.val_dataloader())
    assert a["uuid"] == b["uuid"] and torch.equal(a["images"], b["images"])

    # A view that breaks after validation: evaluation leaves its location out, training
    # borrows the next one; both name the file, neither crashes.
    broken_val = direct.splits["val"]["uuid"][0]
    broken_train = direct.splits["train"]["uuid"][0]
    truncate(view_path(root, broken_val, 180))
    truncate(view_path(root, broken_train, 180))
    with caplog.at_level(logging.WARNING):
        val = all_batches(direct.val_dataloader())
        train = all_batches(direct.train_dataloader())
    assert broken_val not in val["uuid"] and len(val["uuid"]) == len(direct.splits["val"]) - 1
    assert broken_train not in train["uuid"] and len(train["uuid"]) == len(direct.splits["train"])
    assert str(view_path(root, broken_val, 180)) in caplog.text
    assert str(view_path(root, broken_train, 180)) in caplog.text


def test_spatial_split_and_fraction(tmp_path):
    root = tmp_path / "data"
    write_dataset(root, 80, size=16, seed=15)
    dm = make_dm(root, tmp_path / "cache", split_by="spatial", spatial_gap_km=8)
    dm.setup("fit")
    train, held = dm.splits["train"], pd.concat([dm.splits["val"], dm.splits["test"]])
    assert len(held) > 0
    d = haversine_km(
        held["latitude"].to_numpy()[:, None],
        held["longitude"].to_numpy()[:, None],
        train["latitude"].to_numpy(),
        train["longitude"].to_numpy(),
    )
    assert d.min() >= 8
    half = make_dm(root, tmp_path / "cache", split_by="spatial", spatial_gap_km=8, fraction=0.5)
    half.setup("fit")
    for name in ("train", "val", "test"):
        assert set(half.splits[name]["uuid"]) <= set(dm.splits[name]["uuid"])
    assert len(half.splits["train"]) < len(dm.splits["train"])


def test_loaders_read_the_cache_here_and_decode_in_workers(ready, dataset, cache_dir):
    """With the cache, whole batches are read in this process; without it, workers decode."""
    assert ready.val_dataloader().num_workers == 0
    direct = make_dm(dataset[0], cache_dir, num_workers=2, augment=False, cache=False)
    direct.setup("fit")
    loader = direct.val_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    assert torch.equal(all_batches(loader)["images"], all_batches(ready.val_dataloader())["images"])


def test_training_batches_are_augmented_on_the_device_reproducibly(ready):
    class Trainer:
        training, current_epoch = True, 3

    batch = next(iter(ready.train_dataloader()))
    raw = batch["images"].clone()
    ready.trainer = Trainer()
    try:
        first = ready.on_after_batch_transfer(dict(batch, images=raw.clone()), 0)["images"]
        again = ready.on_after_batch_transfer(dict(batch, images=raw.clone()), 0)["images"]
        Trainer.current_epoch = 4
        later = ready.on_after_batch_transfer(dict(batch, images=raw.clone()), 0)["images"]
        Trainer.training = False
        evaluated = ready.on_after_batch_transfer(dict(batch, images=raw.clone()), 0)["images"]
    finally:
        ready.trainer = None
    assert first.dtype == torch.uint8 and first.shape == raw.shape
    assert not torch.equal(first, raw) and torch.equal(first, again)  # (seed, epoch, index)
    assert not torch.equal(first, later)  # another epoch, another draw
    assert torch.equal(evaluated, raw)  # validation and test are never augmented


def test_bad_settings_are_clear_errors(dataset, cache_dir):
    for kwargs, pattern in [
        ({"split": [0.5, 0.5]}, "data.split"),
        ({"split_by": "random"}, "data.split_by"),
        ({"on_invalid": "ignore"}, "data.on_invalid"),
        ({"fraction": 0}, "data.fraction"),
        ({"root": None}, "data.root"),
    ]:
        with pytest.raises(DataError, match=pattern):
            make_dm(kwargs.pop("root", dataset[0]), cache_dir, **kwargs)
    with pytest.raises(DataError, match="a grid factory"):
        make_dm(dataset[0], cache_dir, grid=None)


def test_hydra_configs_instantiate(dataset, cache_dir):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        grid_factory = instantiate(compose("grid").grid)
        cfg = compose(
            "validate", overrides=[f"data.root={dataset[0]}", f"data.cache_dir={cache_dir}"]
        )
        synthetic = compose("validate", overrides=["data=synthetic"])
    assert cfg.image.size == 112  # what training reads by default (train.yaml's image group)
    assert cfg.data.split_by == "spatial"  # real data: neighbouring panoramas never straddle
    # As train.py does it: a partial, called with the run's objects.
    dm = instantiate(cfg.data, _partial_=True)(
        country=croatia(), grid=grid_factory, image_size=SIZE, seed=0, progress=False
    )
    assert isinstance(dm, FolderDataModule) and dm.roots == [dataset[0]]
    dm.num_workers = 0
    dm.setup("fit")
    assert dm.fitted.grid.spacing == 0.5 and "train_latitude" in dm.fitted.grid.table
    assert synthetic.data.root is None and synthetic.data.split_by == "hash"
    assert set(synthetic.data.generator) == {"num_locations", "seed", "image_size"}
    generated = instantiate(synthetic.data, _partial_=True)(
        country=croatia(), grid=grid_factory, image_size=SIZE, seed=0, progress=False
    )  # nothing is generated before prepare_data
    assert isinstance(generated, SyntheticDataModule) and generated.root is None
    assert generated.generator == dict(synthetic.data.generator)
    assert set(cfg.data) - {"_target_"} <= set(synthetic.data)


def test_generated_dataset_lives_in_the_cache_keyed_by_country(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOGUESS_CACHE_DIR", str(tmp_path / "cache-home"))
    generator = {"num_locations": 30, "seed": 0, "image_size": 32}
    dm = SyntheticDataModule(
        **{**data_settings("synthetic"), "generator": generator, "num_workers": 0},
        root=None,
        country=croatia(),
        grid=partial(build_grid, spacing=0.5, drop_empty=True),
        image_size=SIZE,
        seed=0,
        progress=False,
    )
    dm.prepare_data()
    dm.setup("fit")
    (root,) = dm.roots
    assert root.parent == tmp_path / "cache-home" and (root / "data.csv").exists()
    assert croatia().fingerprint[:12] in root.name and not dm.report.problems
    # data=synthetic splits by hash: 30 locations leave the val split empty, not the train one.
    batch = next(iter(dm.loader("train")))
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape[1:] == (4, 3, SIZE, SIZE)


def test_a_given_root_without_data_is_an_error_and_nothing_is_created(tmp_path):
    typo = tmp_path / "typo"
    dm = SyntheticDataModule(
        **{**data_settings("synthetic"), "num_workers": 0},
        root=str(typo),
        country=croatia(),
        grid=partial(build_grid, spacing=0.5, drop_empty=True),
        image_size=SIZE,
        seed=0,
        progress=False,
    )
    with pytest.raises(DataError, match="holds no dataset"):
        dm.prepare_data()
    assert not typo.exists()
    with pytest.raises(DataError, match="does not exist"):
        make_dm(typo, tmp_path / "cache").prepare_data()
    assert not typo.exists()


def test_real_sample_round_trip(real_sample, tmp_path):
    dm = make_dm(real_sample, tmp_path / "cache", image_size=56, batch_size=16)
    dm.prepare_data()
    dm.setup("fit")
    assert not dm.report.problems and sum(len(s) for s in dm.splits.values()) == 100
    csv = pd.read_csv(real_sample / "data.csv", index_col=0).set_index("uuid")
    batch = next(iter(dm.test_dataloader()))
    expected = csv.loc[batch["uuid"], ["latitude", "longitude"]].to_numpy()
    assert np.array_equal(batch["latlon"].numpy(), expected)
    assert batch["images"].shape[1:] == (4, 3, 56, 56)
    # Real photos: the sky makes the top brighter than the bottom, in every heading.
    top, bottom = (
        batch["images"][..., :10, :].float().mean(),
        batch["images"][..., -10:, :].float().mean(),
    )
    assert top > bottom
    assert 0.3 < dm.fitted.image_mean[0] < 0.7 and 0.1 < dm.fitted.image_std[0] < 0.35
    assert isinstance(dm.datasets["test"], GeoguesserDataset)


def test_a_split_of_very_few_locations_is_warned_about(tmp_path, caplog):
    """Spatial blocks on a small dataset can leave a split one or two locations: say so."""
    root = tmp_path / "data"
    write_dataset(root, 30, size=16, seed=15)
    dm = make_dm(root, tmp_path / "cache", split=(0.8, 0.1, 0.1))
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    sizes = {name: len(dm.splits[name]) for name in ("val", "test")}
    for name, size in sizes.items():
        assert (f"the {name} split holds only {size} locations" in caplog.text) == (0 < size < 10)
    assert any(0 < size < 10 for size in sizes.values())


def test_statistics_are_computed_once_by_rank_zero_before_the_others_set_up(tmp_path, monkeypatch):
    """Rank 0's prepare_data stores them; every rank's setup (after the barrier) reads them."""
    root = tmp_path / "data"
    write_dataset(root, 20, size=32, seed=13)
    computed = []
    compute = stats_mod.stats_from_memmap
    monkeypatch.setattr(
        stats_mod, "stats_from_memmap", lambda *a: computed.append(1) or compute(*a)
    )
    rank_zero = make_dm(root, tmp_path / "cache")
    rank_zero.prepare_data()
    assert len(computed) == 1
    other_rank = make_dm(root, tmp_path / "cache")
    other_rank.setup("fit")
    rank_zero.setup("fit")
    rank_zero.prepare_data()  # Lightning calls it again inside fit
    assert len(computed) == 1
    assert other_rank.fitted.image_mean == rank_zero.fitted.image_mean
    train = rank_zero.report.cache.open()[
        [rank_zero.report.cache.index[u] for u in rank_zero.splits["train"]["uuid"]]
    ]
    expected = train.reshape(-1, 3, SIZE * SIZE).transpose(1, 0, 2).reshape(3, -1).mean(1) / 255
    assert np.allclose(rank_zero.fitted.image_mean, expected)


def test_augmentation_parameters_are_drawn_before_the_transfer_and_travel_with_the_batch(ready):
    class Trainer:
        training, current_epoch = True, 2

    batch = next(iter(ready.train_dataloader()))
    raw = batch["images"].clone()
    ready.trainer = Trainer()
    try:
        alone = ready.on_after_batch_transfer(dict(batch, images=raw.clone()), 0)["images"]
        before = ready.on_before_batch_transfer(dict(batch, images=raw.clone()), 0)
        params = before["augment_params"]
        assert params.device.type == "cpu" and params.is_pinned() == torch.cuda.is_available()
        after = ready.on_after_batch_transfer(before, 0)
        Trainer.training = False
        evaluated = ready.on_before_batch_transfer(dict(batch, images=raw.clone()), 0)
    finally:
        ready.trainer = None
    assert "augment_params" not in after and torch.equal(after["images"], alone)
    assert not torch.equal(alone, raw)
    assert "augment_params" not in evaluated
