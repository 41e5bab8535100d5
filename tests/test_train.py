"""End-to-end training runs on tiny generated datasets (CPU, a few batches each)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from geoguess.errors import GeoguessError
from geoguess.train import RESULT_KEYS
from tests.train_helpers import (
    FAST,
    composed,
    dataset,
    fast_experiment,
    folder_data,
    run_cli,
    run_training,
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return dataset(tmp_path_factory.getbasetemp(), num_locations=80, image_size=32)


def check_run_outputs(run: Path, results: dict) -> None:
    """Everything a run promises in its directory."""
    on_disk = json.loads((run / "results.json").read_text())
    assert tuple(on_disk) == RESULT_KEYS
    assert on_disk == pytest.approx(results)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert Path(results["best_checkpoint"]).is_file()
    assert Path(results["best_checkpoint"]).parent == run / "checkpoints"
    frame = pd.read_csv(run / "predictions_test.csv")
    assert list(frame.columns) == [
        "uuid",
        "latitude",
        "longitude",
        "true_latitude",
        "true_longitude",
        "error_km",
    ]
    assert frame["error_km"].mean() == pytest.approx(results["test_haversine_km"], rel=1e-6)
    assert (run / "test_errors.png").stat().st_size > 10_000
    assert (run / "fitted.json").is_file()
    for key in ("val_haversine_km", "test_haversine_km", "baseline_test_haversine_km"):
        assert 0 < results[key] < 1000
    assert (
        0 <= results["test_acc_1km"] <= results["test_acc_25km"] <= results["test_acc_100km"] <= 1
    )
    assert 0 < results["test_geoguessr_score"] < 5000
    assert results["train_seconds"] > 0


@pytest.mark.parametrize("unfreeze", ["never", "at_epoch", "gradual"])
@pytest.mark.parametrize("fusion", ["concat", "mean", "attention"])
@pytest.mark.parametrize("head", ["classification", "regression"])
def test_every_head_fusion_unfreeze_combination_trains(head, fusion, unfreeze, data_root, tmp_path):
    overrides = [
        *FAST,
        *folder_data(data_root),
        f"head={head}",
        f"model.fusion={fusion}",
        f"unfreeze={unfreeze}",
        "trainer.max_epochs=2",
    ]
    results = run_training(overrides, tmp_path)
    check_run_outputs(tmp_path, results)
    assert results["epochs"] == 2
    if head == "classification":
        assert (
            results["num_classes"]
            == json.loads((tmp_path / "fitted.json").read_text())["grid"]["table"]["class_id"][-1]
            + 1
        )
    else:
        assert results["num_classes"] is None


class Probe:
    """Snapshots of the backbone's parameters and BatchNorm statistics at every epoch end."""

    def __init__(self) -> None:
        from lightning.pytorch.callbacks import Callback

        snapshots = self.snapshots = []

        class _Callback(Callback):
            def on_train_epoch_end(self, trainer, module):
                snapshots.append(
                    {k: v.detach().clone() for k, v in module.backbone.state_dict().items()}
                )

        self.callback = _Callback()


def _fit_with_probe(cfg, run_dir: Path, epochs: int) -> tuple[list[dict], dict, list[list[str]]]:
    import lightning as L
    from hydra.utils import instantiate

    from geoguess.models.backbones import stage_parameters
    from geoguess.models.module import build_module

    L.seed_everything(0)
    country = instantiate(cfg.country)
    dm = instantiate(
        cfg.data, country=country, grid=instantiate(cfg.grid), image_size=32, run_dir=run_dir
    )
    dm.setup("fit")
    module = build_module(cfg, dm.fitted)
    initial = {k: v.detach().clone() for k, v in module.backbone.state_dict().items()}
    probe = Probe()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[instantiate(cfg.unfreeze), probe.callback],
    )
    trainer.fit(module, datamodule=dm)
    return probe.snapshots, initial, stage_parameters(module.backbone)


def _changed(before: dict, after: dict, names) -> bool:
    return any(not torch.equal(before[n], after[n]) for n in names)


def test_at_epoch_keeps_backbone_and_batchnorm_statistics_frozen_until_its_epoch(
    data_root, tmp_path
):
    overrides = [*FAST, *folder_data(data_root), "unfreeze=at_epoch", "unfreeze.epoch=1"]
    with composed(overrides, tmp_path) as cfg:
        snapshots, initial, _ = _fit_with_probe(cfg, tmp_path, epochs=2)
    stats = [k for k in initial if k.endswith("running_mean")]
    weights = [k for k in initial if k.endswith("weight")]
    assert stats and weights
    assert not _changed(initial, snapshots[0], weights + stats)  # epoch 0: frozen, eval mode
    assert _changed(snapshots[0], snapshots[1], weights)  # epoch 1: trains
    assert _changed(snapshots[0], snapshots[1], stats)


def test_gradual_unfreezes_one_more_stage_from_the_last_every_epoch(data_root, tmp_path):
    overrides = [*FAST, *folder_data(data_root), "unfreeze=gradual", "unfreeze.every=1"]
    with composed(overrides, tmp_path) as cfg:
        snapshots, initial, stages = _fit_with_probe(cfg, tmp_path, epochs=3)
    before = [initial, *snapshots]
    for epoch in range(3):
        trainable = stages[len(stages) - epoch :] if epoch else []
        frozen = stages[: len(stages) - epoch]
        for names in trainable:
            assert _changed(before[epoch], before[epoch + 1], names), (epoch, names[:1])
        for names in frozen:
            assert not _changed(before[epoch], before[epoch + 1], names), (epoch, names[:1])


@pytest.mark.parametrize("experiment", ["smoke", "quickstart", "original"])
def test_every_experiment_runs_a_short_training(experiment, data_root, tmp_path):
    overrides = [
        f"experiment={experiment}",
        *folder_data(data_root),
        "logger=none",
        "image.size=32",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
    ]
    if experiment == "original":
        # The original's ResNeXt-101 on a GPU, shrunk to what a CPU test affords; the rest
        # (spacing 0.21, batch 8, Adam 2e-5, plateau, unfreeze at epoch 1) is kept.
        overrides += ["trainer=cpu", "trainer.precision=32-true", "backbone=tiny"]
    with composed(overrides, tmp_path) as cfg:
        if experiment == "original":
            assert cfg.grid.spacing == 0.21 and cfg.data.batch_size == 8
    results = run_training(overrides, tmp_path)
    check_run_outputs(tmp_path, results)


def test_smoke_beats_the_baseline_twice(tmp_path):
    """The real `experiment=smoke` (its own generated dataset), only without a logger."""
    overrides = [
        "experiment=smoke",
        f"data.root={tmp_path / 'smoke-data'}",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    run = tmp_path / "run"
    results = run_training(overrides, run)
    check_run_outputs(run, results)
    print("smoke results:", json.dumps(results, indent=1))
    assert results["baseline_test_haversine_km"] >= 2 * results["test_haversine_km"], results


def test_multirun_over_two_spacings_writes_two_runs_logged_offline_to_wandb(data_root, tmp_path):
    args = [
        "-m",
        "grid.spacing=0.5,0.8",
        *fast_experiment(tmp_path / "conf"),
        *folder_data(data_root),
        "logger=wandb",
    ]
    done = run_cli("train", args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    # The default layout: outputs/<command>-multirun/<time>/<num>
    (sweep,) = (tmp_path / "outputs" / "train-multirun").iterdir()
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in runs] == ["0", "1"]
    results = [json.loads((run / "results.json").read_text()) for run in runs]
    assert all(tuple(r) == RESULT_KEYS for r in results)
    assert results[0]["num_classes"] > results[1]["num_classes"]  # finer grid, more classes
    for run in runs:
        # One W&B run per job (wandb.finish() between them), offline, in the job's directory.
        offline = list((run / "wandb").glob("offline-run-*"))
        assert len(offline) == 1, list((run / "wandb").iterdir())
    assert "wandb sync" in done.stdout


def test_resume_from_last_after_a_crash_mid_epoch(data_root, tmp_path, monkeypatch):
    from geoguess.models.module import GeoguessModule

    overrides = [
        *FAST,
        *folder_data(data_root),
        "trainer.max_epochs=3",
        "scheduler=plateau",
        "logger=csv",
    ]
    original_step = GeoguessModule.training_step
    epochs_run = []

    def crashing_step(self, batch, batch_idx):
        if self.current_epoch == 2 and batch_idx == 1:
            raise RuntimeError("simulated crash in the middle of epoch 2")
        return original_step(self, batch, batch_idx)

    def counting_start(self):
        epochs_run.append(self.current_epoch)

    monkeypatch.setattr(GeoguessModule, "on_train_epoch_start", counting_start, raising=False)
    monkeypatch.setattr(GeoguessModule, "training_step", crashing_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(overrides, tmp_path)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "results.json").exists()
    assert epochs_run == [0, 1, 2]

    monkeypatch.setattr(GeoguessModule, "training_step", original_step)
    results = run_training([*overrides, "ckpt_path=last"], tmp_path)
    assert epochs_run == [0, 1, 2, 2]  # only the interrupted epoch ran again
    check_run_outputs(tmp_path, results)
    assert results["epochs"] == 3
    # The interrupted session's metrics are kept beside the resumed session's.
    first = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    resumed = pd.read_csv(tmp_path / "csv" / "resumed-1" / "metrics.csv")
    assert set(first["epoch"].dropna()) == {0, 1, 2}
    assert min(resumed["epoch"].dropna()) == 2  # (the test metrics come after, at epoch 3)
    assert {"train/loss", "val/loss", "val/haversine_km", "val/median_km"} <= set(first.columns)
    assert {"test/haversine_km", "test/median_km", "test/acc_25km"} <= set(resumed.columns)


def test_nan_loss_stops_the_run_with_a_clear_message(data_root, tmp_path, monkeypatch):
    from geoguess.models.heads import ClassificationHead

    monkeypatch.setattr(
        ClassificationHead, "loss", lambda self, logits, batch: logits.sum() * float("nan")
    )
    with pytest.raises(GeoguessError, match="training loss became nan.*lower optimizer.lr"):
        run_training([*FAST, *folder_data(data_root)], tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_finished_runs_are_never_clobbered_and_resume_needs_a_checkpoint(data_root, tmp_path):
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(GeoguessError, match="already holds a finished run"):
        run_training([*FAST, *folder_data(data_root)], tmp_path)
    fresh = tmp_path / "fresh"
    with pytest.raises(GeoguessError, match="ckpt_path=last: there is no"):
        run_training([*FAST, *folder_data(data_root), "ckpt_path=last"], fresh)


def test_configuration_errors_raised_inside_targets_are_clear(data_root, tmp_path):
    with pytest.raises(GeoguessError, match="neither one of"):
        run_training([*FAST, *folder_data(data_root), "backbone.name=no_such_net"], tmp_path)
    with pytest.raises(GeoguessError, match="data.root must be given"):
        run_training([*FAST, "data=folder"], tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(GeoguessError, match="trainer=cpu runs without one"):
            run_training([*FAST, *folder_data(data_root), "trainer=gpu"], tmp_path)
