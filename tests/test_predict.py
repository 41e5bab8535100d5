"""`geoguess.predict`: a checkpoint alone locates every folder of a dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from geoguess.errors import GeoguessError
from geoguess.predict import CheckpointError, predict, run
from tests.train_helpers import FAST, composed, dataset, folder_data, run_cli, run_training


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return dataset(tmp_path_factory.getbasetemp(), num_locations=80, image_size=32)


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("trained")
    # Whole test split (no batch limit), so that every test location has a prediction to match.
    results = run_training(
        [*FAST, *folder_data(data_root), "trainer.limit_test_batches=null"], run_dir
    )
    return {"run": run_dir, **results}


def copy_dataset(source: Path, target: Path, n: int = 12) -> Path:
    """The first `n` locations of `source` (images and csv rows), without its cache."""
    frame = pd.read_csv(source / "data.csv", index_col=0).iloc[:n]
    for uuid in frame["uuid"]:
        shutil.copytree(source / "images" / uuid, target / "images" / uuid)
    frame.to_csv(target / "data.csv")
    return target


def test_predictions_reproduce_the_test_predictions_of_training(trained, data_root):
    frame = predict(trained["best_checkpoint"], data_root, batch_size=16)
    uuids = sorted(p.name for p in (data_root / "images").iterdir() if p.is_dir())
    assert sorted(frame["uuid"]) == uuids  # every folder, once
    tested = pd.read_csv(trained["run"] / "predictions_test.csv")
    merged = tested.merge(frame, on="uuid", suffixes=("_train", ""))
    assert len(merged) == len(tested) > 0
    # Same weights, same images (decoded on the fly instead of from the cache).
    assert np.allclose(merged["latitude"], merged["latitude_train"], atol=1e-5)
    assert np.allclose(merged["longitude"], merged["longitude_train"], atol=1e-5)
    assert np.allclose(merged["error_km"], merged["error_km_train"], atol=1e-2)


def test_cli_writes_only_uuid_and_coordinates_and_prints_the_error(trained, data_root, tmp_path):
    output = tmp_path / "out" / "predictions.csv"
    args = [
        f"checkpoint={trained['best_checkpoint']}",
        f"data.root={data_root}",
        f"output={output}",
    ]
    done = run_cli("predict", args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = pd.read_csv(output)
    assert list(frame.columns) == ["uuid", "latitude", "longitude"]
    assert len(frame) == 80
    assert "mean error" in done.stdout and " km" in done.stdout
    assert not list(output.parent.glob(".*.tmp"))  # the atomic write left nothing behind


def _predict_cfg(checkpoint, root, output, *extra):
    return [f"checkpoint={checkpoint}", f"data.root={root}", f"output={output}", *extra]


def test_refuses_to_overwrite_unless_asked(trained, data_root, tmp_path, capsys):
    output = tmp_path / "predictions.csv"
    output.write_text("precious\n")
    with (
        composed(
            _predict_cfg(trained["best_checkpoint"], data_root, output), tmp_path, "predict"
        ) as cfg,
        pytest.raises(GeoguessError, match="already exists; pass overwrite=true"),
    ):
        run(cfg)
    assert output.read_text() == "precious\n"
    overrides = _predict_cfg(trained["best_checkpoint"], data_root, output, "overwrite=true")
    with composed(overrides, tmp_path, "predict") as cfg:
        run(cfg)
    assert len(pd.read_csv(output)) == 80


def test_missing_views_are_an_error_or_skipped(trained, data_root, tmp_path):
    root = copy_dataset(data_root, tmp_path / "data")
    broken = sorted((root / "images").iterdir())[3]
    (broken / "180.jpg").unlink()
    output = tmp_path / "p.csv"
    with (
        composed(
            _predict_cfg(trained["best_checkpoint"], root, output), tmp_path, "predict"
        ) as cfg,
        pytest.raises(GeoguessError, match=f"{broken.name}.*180.jpg"),
    ):
        run(cfg)
    assert not output.exists()
    overrides = _predict_cfg(trained["best_checkpoint"], root, output, "on_invalid=skip")
    with composed(overrides, tmp_path, "predict") as cfg:
        run(cfg)
    frame = pd.read_csv(output)
    assert len(frame) == 11 and broken.name not in set(frame["uuid"])


def test_data_csv_is_optional(trained, data_root, tmp_path, capsys):
    root = copy_dataset(data_root, tmp_path / "data", n=5)
    (root / "data.csv").unlink()
    output = tmp_path / "p.csv"
    with composed(
        _predict_cfg(trained["best_checkpoint"], root, output), tmp_path, "predict"
    ) as cfg:
        run(cfg)
    frame = pd.read_csv(output)
    assert len(frame) == 5 and frame[["latitude", "longitude"]].notna().all().all()
    assert "mean error" not in capsys.readouterr().out


def test_last_checkpoint_and_bad_checkpoints(trained, data_root, tmp_path):
    last = trained["run"] / "checkpoints" / "last.ckpt"
    assert len(predict(last, data_root)) == 80
    with pytest.raises(CheckpointError, match="does not exist"):
        predict(tmp_path / "missing.ckpt", data_root)
    junk = tmp_path / "junk.ckpt"
    torch.save({"state_dict": {}}, junk)
    with pytest.raises(CheckpointError, match="not a checkpoint written by geoguess.train"):
        predict(junk, data_root)
