"""Loggers that combine, and a W&B run a dashboard can use (read back from its offline log)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train_helpers import FAST, composed, dataset, folder_data, run_training
from tests.wandb_records import read_run

QUICK = [o for o in FAST if not o.startswith("logger=")]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return dataset(tmp_path_factory.getbasetemp(), num_locations=80, image_size=32)


def test_loggers_combine_in_one_run(data_root, tmp_path):
    """`logger=[csv,tensorboard]`: both write (each file holds its logger under its name)."""
    results = run_training([*QUICK, *folder_data(data_root), "logger=[csv,tensorboard]"], tmp_path)
    assert results["status"] == "ok"
    (metrics,) = (tmp_path / "csv").glob("version_*/metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    assert "val/haversine_km" in header and "train/loss" in header, header
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents*"))


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["logger=none"], []),
        (["logger=csv"], ["CSVLogger"]),
        (["logger=[csv,tensorboard]"], ["CSVLogger", "TensorBoardLogger"]),
        (["logger=many_loggers"], ["WandbLogger", "CSVLogger", "TensorBoardLogger"]),
        (["logger=many_loggers", "logger.wandb=null"], ["CSVLogger", "TensorBoardLogger"]),
    ],
)
def test_build_loggers_builds_every_entry(overrides, names, tmp_path, monkeypatch):
    from geoguess.models.loggers import build_loggers, finish

    monkeypatch.setenv("WANDB_MODE", "offline")
    with composed(overrides, tmp_path) as cfg:
        loggers = build_loggers(cfg)
        finish(loggers)
    assert [type(logger).__name__ for logger in loggers] == names


def test_a_logger_entry_without_target_is_refused(tmp_path):
    from geoguess.errors import GeoguessError
    from geoguess.models.loggers import build_loggers

    with (
        composed(["logger=csv", "+logger.save_dir=x"], tmp_path) as cfg,
        pytest.raises(GeoguessError, match="logger.save_dir is not a logger"),
    ):
        build_loggers(cfg)


def test_sweep_group_and_tags_name_what_ran(tmp_path):
    from geoguess.models.loggers import choice_tags, sweep_name

    sweep = ["hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path}/train-multirun/2026-12-06_21"]
    with composed([*sweep, "experiment=smoke", "head=regression"], tmp_path):
        assert sweep_name() == "train-multirun-2026-12-06_21"
        assert choice_tags() == [
            "experiment:smoke",
            "backbone:tiny",
            "head:regression",
            "grid:square",
            "data:synthetic",
        ]
    with composed([], tmp_path):
        assert sweep_name() is None
        assert "experiment:None" not in choice_tags() and "head:classification" in choice_tags()


def test_result_summary_is_computed_from_the_results():
    from geoguess.models.loggers import result_summary

    results = {
        "baseline_test_haversine_km": 120.0,
        "test_haversine_km": 90.0,
        "test_snapped_share": 0.25,
        "num_classes": 17,
        "dataset": "synthetic-abc",
        "split_sizes": {"train": 64, "val": 8, "test": 8},
    }
    assert result_summary(results) == {
        "test/baseline_km": 120.0,
        "test/error_over_baseline": 0.75,
        "test/snapped_share": 0.25,
        "num_classes": 17,
        "dataset": "synthetic-abc",
        "split_sizes/train": 64,
        "split_sizes/val": 8,
        "split_sizes/test": 8,
    }
    assert result_summary({"test_haversine_km": 90.0, "num_classes": None}) == {}


def test_wandb_run_has_what_a_dashboard_needs(data_root, tmp_path, monkeypatch):
    """The offline record: the nested config with the overrides beside it (a group override
    does not replace its block), the results in the summary, the tags, the best checkpoint as
    a model artifact with the results as metadata."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [*QUICK, *folder_data(data_root), "logger=wandb", "grid.spacing=0.5"]
    results = run_training(overrides, tmp_path)
    assert results["status"] == "ok"
    (record,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    run = read_run(record)

    assert run.config["data"]["root"] == str(data_root)  # nested, not the string "folder"
    assert run.config["grid"]["spacing"] == 0.5 and run.config["backbone"]["name"] == "tiny"
    assert run.config["overrides"]["data"] == "folder"
    assert run.config["overrides"]["grid.spacing"] == 0.5
    assert run.config["overrides"]["data.root"] == str(data_root)

    baseline, error = results["baseline_test_haversine_km"], results["test_haversine_km"]
    assert run.summary["test/baseline_km"] == pytest.approx(baseline)
    assert run.summary["test/error_over_baseline"] == pytest.approx(error / baseline)
    assert run.summary["test/snapped_share"] == pytest.approx(results["test_snapped_share"])
    assert run.summary["num_classes"] == results["num_classes"] > 1
    assert run.summary["dataset"] == results["dataset"]

    assert {"backbone:tiny", "head:classification", "grid:square", "data:folder"} <= set(run.tags)

    (artifact,) = [a for a in run.artifacts if a["type"] == "model"]
    assert artifact["files"] == [Path(results["best_checkpoint"]).name]
    assert set(artifact["aliases"]) >= {"best"}
    assert artifact["metadata"]["test_haversine_km"] == pytest.approx(error)
    assert (
        json.loads((tmp_path / "results.json").read_text())["best_checkpoint"]
        == (artifact["metadata"]["best_checkpoint"])
    )
