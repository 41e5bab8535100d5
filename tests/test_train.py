"""End-to-end training runs on tiny generated datasets (CPU, a few batches each): every option,
run folders that are never clobbered, resumes that reproduce, sweeps that survive a failure."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from geoguess.errors import GeoguessError
from geoguess.results import PREDICTION_COLUMNS, RESULT_KEYS
from tests.cli import run_module
from tests.train_helpers import (
    FAST,
    composed,
    dataset,
    fast_experiment,
    folder_data,
    run_cli,
    run_training,
)
from tests.wandb_records import read_run


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return dataset(tmp_path_factory.getbasetemp(), num_locations=80, image_size=32)


def check_run_outputs(run: Path, results: dict) -> None:
    """Everything a run promises in its directory, checked against independent computations."""
    from geoguess import metrics

    on_disk = json.loads((run / "results.json").read_text())
    assert tuple(on_disk) == RESULT_KEYS and on_disk["status"] == "ok"
    # approx compares flat mappings: the split sizes (a nested mapping) exactly, on their own.
    assert on_disk.pop("split_sizes") == results["split_sizes"]
    assert on_disk == pytest.approx({k: v for k, v in results.items() if k != "split_sizes"})
    # (trainer.limit_test_batches may test fewer than the split holds)
    assert results["split_sizes"]["test"] >= len(pd.read_csv(run / "predictions_test.csv")) > 0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert Path(results["best_checkpoint"]).parent == run / "checkpoints"
    frame = pd.read_csv(run / "predictions_test.csv")
    assert list(frame.columns) == PREDICTION_COLUMNS
    assert frame["error_km"].mean() == pytest.approx(results["test_haversine_km"], rel=1e-6)
    assert frame["error_km_unsnapped"].mean() == pytest.approx(
        results["test_haversine_km_unsnapped"], rel=1e-6
    )
    # Errors recomputed from the coordinates, with pyproj's ellipsoidal distance (±0.5 %).
    from pyproj import Geod

    *_, metres = Geod(ellps="WGS84").inv(
        frame["longitude"], frame["latitude"], frame["true_longitude"], frame["true_latitude"]
    )
    assert (frame["error_km"] - metres / 1000).abs().max() <= 0.005 * frame["error_km"].max()
    stats = metrics.error_stats(frame["error_km"].to_numpy())
    assert results["test_median_km"] == pytest.approx(stats["median_km"])
    assert results["test_acc_25km"] == pytest.approx(stats["acc_25km"])
    assert (run / "test_errors.png").stat().st_size > 10_000
    fitted = json.loads((run / "fitted.json").read_text())
    assert results["num_classes"] in (None, len(fitted["grid"]["table"]["class_id"]))
    assert results["dataset"] == fitted["info"]["dataset_key"]
    for path in (run / "results.json", run / "predictions_test.csv", run / ".hydra/config.yaml"):
        assert path.stat().st_mode & 0o777 == 0o644, path


# The options two by two: every pair of (head, fusion, unfreeze, scheduler) values meets in at
# least one row, and every option of image, class points and optimizer runs at least once.
PAIRWISE = [
    ("classification", "concat", "never", "onecycle", ["head.points=clipped"]),
    ("classification", "mean", "at_epoch", "plateau", ["head.points=centroid"]),
    ("classification", "attention", "gradual", "cosine", ["head.points=train_mean"]),
    ("regression", "concat", "gradual", "plateau", ["image=56px"]),
    ("regression", "mean", "never", "cosine", ["optimizer=adam"]),
    ("regression", "attention", "at_epoch", "onecycle", []),
    ("classification", "concat", "at_epoch", "none", ["head.smoothing_km=30"]),
    ("regression", "mean", "gradual", "none", []),
    ("classification", "attention", "never", "plateau", []),
    ("hybrid", "mean", "at_epoch", "cosine", ["head.decode=top", "model.refine=knn", "tta=mirror"]),
]


@pytest.mark.parametrize("head, fusion, unfreeze, scheduler, extra", PAIRWISE)
def test_options_pairwise_train_for_real(
    head, fusion, unfreeze, scheduler, extra, data_root, tmp_path
):
    fast = [o for o in FAST if not (o.startswith("image.size") and "image=56px" in extra)]
    overrides = [
        *fast,
        *folder_data(data_root),
        "data.split_by=hash",
        "optimizer=adamw",
        f"head={head}",
        f"model.fusion={fusion}",
        f"unfreeze={unfreeze}",
        f"scheduler={scheduler}",
        "trainer.max_epochs=2",
        "logger=csv",
        *extra,
    ]
    results = run_training(overrides, tmp_path)
    check_run_outputs(tmp_path, results)
    assert results["epochs"] == 2
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    spec = checkpoint["geoguess"]["spec"]
    assert spec["fusion"] == fusion and spec["head"]["kind"] == head
    if "image=56px" in extra:
        assert checkpoint["geoguess"]["fitted"]["image_size"] == 56
    if head != "regression":
        points = next((e.split("=")[1] for e in extra if e.startswith("head.points")), "clipped")
        assert spec["head"]["points"] == points
    # Confidence radii, calibrated on validation, and what they cover on the test split.
    frame = pd.read_csv(tmp_path / "predictions_test.csv")
    assert (frame["radius90_km"] >= frame["radius50_km"]).all() and (frame["radius50_km"] > 0).all()
    inside = frame["error_km"] <= frame["radius90_km"]
    assert results["test_coverage90"] == pytest.approx(inside.mean())
    best = torch.load(results["best_checkpoint"], weights_only=True)["geoguess"]
    assert len(best["extras"]["radius_scale"]) == 2  # the calibration travels in the checkpoint
    assert ("retrieval" in best["extras"]) == ("model.refine=knn" in extra)
    assert best["inference"]["refine"] == ("knn" if "model.refine=knn" in extra else "none")
    if scheduler == "none":
        assert checkpoint["lr_schedulers"] == []
    else:  # stepped every epoch, or every batch (2 per epoch here) for onecycle
        # last.ckpt is saved at the last epoch's end, before plateau's step on that epoch's
        # validation (a resume takes that step: PlateauStepOnResume).
        steps = checkpoint["lr_schedulers"][0]["last_epoch"]
        assert steps == {"onecycle": 2 * 2, "plateau": 1}.get(scheduler, 2)
    lrs = pd.read_csv(next((tmp_path / "csv").glob("version_*/metrics.csv")))
    optimizer = "Adam" if "optimizer=adam" in extra else "AdamW"
    for part in ("head", "backbone"):
        assert any(c.startswith(f"lr-{optimizer}/{part}") for c in lrs.columns), lrs.columns


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

    from geoguess.builders import build_module as build_model
    from geoguess.models.backbones import stage_parameters

    L.seed_everything(0)
    dm = instantiate(cfg.data, _partial_=True)(
        country=instantiate(cfg.country),
        grid=instantiate(cfg.grid),
        image_size=32,
        seed=cfg.seed,
        run_dir=run_dir,
    )
    dm.setup("fit")
    module = build_model(cfg, dm.fitted)
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
    # Epoch 0: nothing of the backbone moved, running statistics included.
    assert not any(not torch.equal(initial[k], snapshots[0][k]) for k in initial)
    # Epoch 1: weights and running statistics train.
    assert _changed(snapshots[0], snapshots[1], [k for k in initial if "running_mean" in k])
    assert _changed(snapshots[0], snapshots[1], [k for k in initial if k.endswith("weight")])


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


EXPERIMENTS = sorted(
    p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml")
)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
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
    ]
    if experiment == "original":
        # The original's ResNeXt-101 on a GPU, shrunk to what a CPU test affords; the rest
        # (spacing 0.21, batch 8, Adam 2e-5, plateau, unfreeze at epoch 1) is kept.
        overrides += ["trainer=cpu", "trainer.precision=32-true", "backbone=tiny"]
    with composed(overrides, tmp_path) as cfg:
        if experiment == "original":
            assert cfg.grid.spacing == 0.21 and cfg.data.batch_size == 8
        if experiment.startswith("best_cpu"):
            assert cfg.head.kind == "hybrid" and cfg.tta == "mirror"
            assert cfg.grid.spacing == 0.8 and cfg.backbone.name == "efficientnet_lite0"
            assert cfg.model.hidden == 1024 and cfg.head.decode == "median"
        if experiment == "best_cpu":
            assert cfg.data.generator.image_size == 288  # image.size: 32 here, for speed
            assert cfg.model.frozen_precision == "bf16" and cfg.model.channels_last is True
    results = run_training(overrides, tmp_path)
    check_run_outputs(tmp_path, results)


@pytest.mark.slow
def test_a_short_real_training_beats_the_baseline(tmp_path, monkeypatch):
    """`experiment=smoke` on its own generated dataset: it must learn. (The synthetic world v2
    gives colour nothing away: a short run learns from shapes, slowly; see docs/synthetic.md.)"""
    monkeypatch.setenv("GEOGUESS_CACHE_DIR", str(tmp_path / "cache"))
    overrides = ["experiment=smoke", "logger=none", "data.num_workers=0"]
    run = tmp_path / "run"
    results = run_training(overrides, run)
    check_run_outputs(run, results)
    # 1.23x on the development machine (96.0 vs 118.0 km); a model that learned nothing: 1.0x.
    assert results["baseline_test_haversine_km"] >= 1.15 * results["test_haversine_km"], results


# -- sweeps -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sweep_writes_one_folder_per_job_and_survives_a_failed_job(data_root, tmp_path):
    args = [
        "-m",
        "grid.spacing=0.5,0.8",
        "optimizer.lr=1e-3,-1",
        *fast_experiment(tmp_path / "conf"),
        *folder_data(data_root),
        "data.split_by=hash",
        "logger=wandb",
    ]
    done = run_cli("train", args, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]  # a job failed: the sweep says so, at the end
    (sweep,) = (tmp_path / "outputs" / "train-multirun").iterdir()
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: int(p.name))
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]  # folder names paste unquoted
    results = [json.loads((job / "results.json").read_text()) for job in jobs]
    texts = [(job / "job.txt").read_text().split() for job in jobs]
    assert all("grid.spacing=0.5" in t for t in texts[:2]) and "optimizer.lr=-1" in texts[1]
    statuses = [r["status"] for r in results]
    assert statuses == ["ok", "failed", "ok", "failed"], [r["error"] for r in results]
    assert "refuses optimizer.lr=-1" in results[1]["error"]
    assert results[0]["num_classes"] > results[2]["num_classes"]  # finer grid, more classes
    assert f"{jobs[1]}: " in done.stderr and "2 job(s) of the sweep" in done.stderr
    for job in (jobs[0], jobs[2]):
        # One W&B run per job (wandb.finish() between them), offline, in the job's directory.
        (offline,) = (job / "wandb").glob("offline-run-*")
        # Ready for W&B's panels: the maps as images, the predictions as a table, and each
        # swept setting under the config's `overrides`.
        names = [p.name for p in offline.rglob("*") if p.is_file()]
        assert any(n.startswith("test_errors") and n.endswith(".png") for n in names), names
        assert any(n.startswith("grid") and n.endswith(".png") for n in names), names
        assert any(n.endswith(".table.json") for n in names), names
        (record,) = offline.glob("run-*.wandb")
        run = read_run(record)
        assert run.config["overrides"]["optimizer.lr"] == 1e-3
        assert run.config["overrides"]["grid.spacing"] == run.config["grid"]["spacing"]
        assert run.group == f"train-multirun-{sweep.name}"  # the sweep's jobs in one group
        # The printed checkpoint path works pasted unquoted into the next command.
        best = json.loads((job / "results.json").read_text())["best_checkpoint"]
        assert not set(best) & set("=, '\"")
    assert done.stdout.count("wandb sync") == 2  # once per successful job


@pytest.mark.slow
def test_torchrun_ddp_on_cpu_shares_one_folder_and_counts_each_location_once(data_root, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    args = [
        *FAST,
        *folder_data(data_root),
        "data.split_by=hash",
        "trainer=ddp",
        "trainer.devices=2",
    ]
    args = [a for a in args if not a.startswith("trainer.limit_test_batches")]
    from tests.cli import command_env

    done = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", "-m", "geoguess.train", *args],
        cwd=tmp_path,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "train").iterdir()  # one folder for both ranks
    results = json.loads((run / "results.json").read_text())
    assert tuple(results) == RESULT_KEYS and results["status"] == "ok"
    predictions = pd.read_csv(run / "predictions_test.csv")
    fitted = json.loads((run / "fitted.json").read_text())
    assert len(predictions) == predictions["uuid"].nunique() == fitted["info"]["counts"]["test"]
    assert done.stdout.count("results (") == 1  # rank 0 alone reports


def test_ddp_inside_a_local_sweep_is_refused(data_root, tmp_path):
    overrides = [*FAST, *folder_data(data_root), "trainer=ddp", "hydra.mode=MULTIRUN"]
    with pytest.raises(GeoguessError, match="trainer=ddp inside a local -m sweep"):
        run_training(overrides, tmp_path)


# -- run folders --------------------------------------------------------------------------------


def _digest(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_run_folders_are_never_clobbered(data_root, tmp_path):
    base = [*FAST, *folder_data(data_root), "data.split_by=hash"]
    finished = tmp_path / "finished"
    run_training(base, finished)
    before = _digest(finished)
    for extra in ([], ["ckpt_path=last"], ["trainer.max_epochs=3"]):
        with pytest.raises(GeoguessError, match="holds a finished run"):
            run_training([*base, *extra], finished)
    assert _digest(finished) == before  # the record still matches the results

    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    (interrupted / "checkpoints").mkdir()
    (interrupted / "checkpoints" / "last.ckpt").write_bytes(b"precious")
    with pytest.raises(GeoguessError, match="holds an interrupted run; resume it with"):
        run_training(base, interrupted)
    assert (interrupted / "checkpoints" / "last.ckpt").read_bytes() == b"precious"
    assert not (interrupted / ".hydra").exists()

    with pytest.raises(GeoguessError, match="ckpt_path=last: there is no"):
        run_training([*base, "ckpt_path=last"], tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists() or not any((tmp_path / "fresh").iterdir())


def test_checkpoints_from_other_settings_and_damaged_ones_are_clear_errors(data_root, tmp_path):
    base = [*FAST, *folder_data(data_root), "data.split_by=hash", "grid.spacing=0.3"]
    source = tmp_path / "source"
    run_training(base, source)
    last = source / "checkpoints" / "last.ckpt"
    with pytest.raises(GeoguessError) as error:
        run_training([*base[:-1], "grid.spacing=0.8", f"ckpt_path={last}"], tmp_path / "a")
    assert "grid.spacing: 0.3 in the checkpoint, 0.8 now" in str(error.value)
    with pytest.raises(GeoguessError, match="model.fusion|fusion: 'concat' in the checkpoint"):
        run_training([*base, "model.fusion=mean", f"ckpt_path={last}"], tmp_path / "b")
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(GeoguessError, match="truncated or damaged"):
        run_training([*base, f"ckpt_path={damaged}"], tmp_path / "c")


def test_a_resume_under_other_optimisation_settings_is_refused(data_root, tmp_path):
    """The optimizer, scheduler and unfreeze state come from the checkpoint: a changed rate
    would be ignored, and a one-cycle schedule cannot be stretched over more epochs."""
    base = [*FAST, *folder_data(data_root), "data.split_by=hash", "scheduler=onecycle"]
    run_training([*base, "trainer.max_epochs=1"], tmp_path / "source")
    last = tmp_path / "source" / "checkpoints" / "last.ckpt"
    with pytest.raises(GeoguessError, match=r"other optimisation settings(.|\n)*lr"):
        run_training([*base, "optimizer.lr=0.5", f"ckpt_path={last}"], tmp_path / "a")
    with pytest.raises(GeoguessError, match="trainer.max_epochs: 1 in the checkpoint, 2 now"):
        run_training([*base, "trainer.max_epochs=2", f"ckpt_path={last}"], tmp_path / "b")
    results = run_training([*base, "trainer.max_epochs=1", f"ckpt_path={last}"], tmp_path / "c")
    assert results["status"] == "ok"


def test_a_refused_resume_leaves_the_interrupted_run_as_it_was(data_root, tmp_path):
    """A resume whose checkpoint does not fit the command (here: another fusion) changes
    nothing in the folder, so that the right command still resumes it."""
    base = [*FAST, *folder_data(data_root), "data.split_by=hash", "trainer.max_epochs=2"]
    run = tmp_path / "run"
    run_training(base, run)
    # As a run killed in its last epoch leaves it: nothing of the test yet.
    for name in ("results.json", "predictions_test.csv", "test_errors.png", "grid.png"):
        (run / name).unlink()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(GeoguessError, match="fusion"):
        run_training([*base, "model.fusion=mean", "ckpt_path=last"], run)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    results = run_training([*base, "ckpt_path=last"], run)
    assert results["status"] == "ok" and (run / ".hydra" / "resume-1").is_dir()


def test_train_seconds_count_the_training_once(data_root, tmp_path):
    """Testing the best checkpoint loads its Timer state; its time must not be added again."""
    base = [*FAST, *folder_data(data_root), "trainer.max_epochs=3", "trainer.limit_train_batches=6"]
    results = run_training(base, tmp_path / "run")

    def timer_seconds(path) -> float:
        state = torch.load(path, map_location="cpu", weights_only=False)["callbacks"]["Timer"]
        return state["time_elapsed"]["train"]

    last = timer_seconds(tmp_path / "run" / "checkpoints" / "last.ckpt")
    best = timer_seconds(results["best_checkpoint"])
    # The time at the last epoch's checkpoint plus the end of fit (results.json rounds to ms);
    # counting the best checkpoint's time twice would give at least last + best.
    assert last - 0.001 <= results["train_seconds"] < last + best


def test_a_resume_into_a_new_folder_keeps_the_checkpoints_fit(data_root, tmp_path):
    base = [*FAST, *folder_data(data_root), "data.split_by=hash", "trainer.max_epochs=1"]
    source = tmp_path / "source"
    run_training(base, source)
    fitted_then = json.loads((source / "fitted.json").read_text())
    # Today's data changed (one location less): the resumed run still uses the old fit.
    frame = pd.read_csv(data_root / "data.csv", index_col=0)
    smaller = tmp_path / "smaller"
    smaller.mkdir()
    frame.iloc[1:].to_csv(smaller / "data.csv")
    (smaller / "images").symlink_to(data_root / "images")
    resumed = tmp_path / "resumed"
    last = source / "checkpoints" / "last.ckpt"
    overrides = [*base[:-1], "trainer.max_epochs=2", f"data.root={smaller}", f"ckpt_path={last}"]
    results = run_training(overrides, resumed)
    assert results["epochs"] == 2
    assert json.loads((resumed / "fitted.json").read_text())["grid"] == fitted_then["grid"]
    assert json.loads((resumed / "fitted.json").read_text())["targets"] == fitted_then["targets"]


# -- resume reproduces --------------------------------------------------------------------------


RESUME = [
    "backbone=tiny",
    "logger=csv",
    "image.size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.split_by=hash",
    "trainer.max_epochs=4",
    "trainer.num_sanity_val_steps=0",
]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _train_cli(args: list[str], out: Path, stop: Path, sig):
    """`python -m geoguess.train` in a subprocess, killed by `sig` in the middle of epoch 2."""
    out.parent.mkdir(parents=True, exist_ok=True)
    waiter = (
        f"+callbacks.stop={{_target_: tests.stop_callback.WaitToBeKilled, epoch: 2, batch: 3, "
        f"marker: {stop}}}"
    )
    from tests.cli import command_env

    process = subprocess.Popen(
        [sys.executable, "-m", "geoguess.train", *args, waiter, f"hydra.run.dir={out}"],
        cwd=out.parent,
        env=command_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell starts background jobs with SIGINT ignored and the child would inherit that
        # (then Python installs no KeyboardInterrupt handler): `make test-slow &` must pass too.
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + 120
    while not stop.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory) -> dict:
    """The reference: the resume tests' run, never interrupted (in this process)."""
    args = [*RESUME, *folder_data(data_root), "scheduler=plateau", "scheduler.patience=0"]
    return run_training(args, tmp_path_factory.mktemp("uninterrupted") / "run")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=lambda sig: sig.name)
def test_a_killed_run_resumes_to_the_uninterrupted_results(sig, uninterrupted, data_root, tmp_path):
    """A real training process killed in the middle of epoch 2, then `ckpt_path=last`."""
    args = [*RESUME, *folder_data(data_root), "scheduler=plateau", "scheduler.patience=0"]
    code, stderr = _train_cli(args, tmp_path / "killed", tmp_path / "marker", sig)
    if sig == signal.SIGINT:
        assert code == 130 and "resume with: python -m geoguess.train hydra.run.dir=" in stderr
    else:
        assert code == -signal.SIGKILL
    assert not (tmp_path / "killed" / "results.json").exists()
    resumed = run_training([*args, "ckpt_path=last"], tmp_path / "killed")
    ignore = {"best_checkpoint", "train_seconds"}
    assert {k: v for k, v in uninterrupted.items() if k not in ignore} == {
        k: v for k, v in resumed.items() if k not in ignore
    }
    assert (tmp_path / "killed" / ".hydra" / "resume-1" / "overrides.yaml").is_file()
    assert "ckpt_path=last" not in (tmp_path / "killed" / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.parametrize("scheduler", ["cosine", "plateau scheduler.patience=0"])
def test_an_interrupted_run_resumes_in_process_to_the_same_results(scheduler, data_root, tmp_path):
    """Ctrl+C inside the process (Lightning's graceful stop), then `ckpt_path=last`."""
    from tests.stop_callback import raise_keyboard_interrupt_at

    args = [*RESUME, *folder_data(data_root), *f"scheduler={scheduler}".split()]
    whole = run_training(args, tmp_path / "whole")
    interrupt = raise_keyboard_interrupt_at(epoch=2, batch=1)
    with pytest.raises(GeoguessError, match="interrupted; resume with"):
        run_training([*args, interrupt], tmp_path / "cut")
    resumed = run_training([*args, "ckpt_path=last"], tmp_path / "cut")
    ignore = {"best_checkpoint", "train_seconds"}
    assert {k: v for k, v in whole.items() if k not in ignore} == {
        k: v for k, v in resumed.items() if k not in ignore
    }
    # The CSV logger numbered the resumed session itself; the first session's file is kept.
    versions = sorted(p.name for p in (tmp_path / "cut" / "csv").iterdir())
    assert versions == ["version_0", "version_1"]


# -- failures and output ------------------------------------------------------------------------


def test_nan_loss_stops_the_run_with_a_clear_message(data_root, tmp_path, monkeypatch):
    from geoguess.models.heads import ClassificationHead

    monkeypatch.setattr(
        ClassificationHead, "loss", lambda self, logits, batch: logits.sum() * float("nan")
    )
    with pytest.raises(GeoguessError, match="training loss became nan.*lower optimizer.lr"):
        run_training([*FAST, *folder_data(data_root)], tmp_path)
    failed = json.loads((tmp_path / "results.json").read_text())
    assert failed["status"] == "failed" and "training loss became nan" in failed["error"]


def test_configuration_errors_are_clear(data_root, tmp_path):
    with pytest.raises(GeoguessError, match="neither one of"):
        run_training([*FAST, *folder_data(data_root), "backbone.name=no_such_net"], tmp_path / "a")
    with pytest.raises(GeoguessError, match="data.root must be given"):
        run_training([*FAST, "data=folder"], tmp_path / "b")
    if not torch.cuda.is_available():
        with pytest.raises(GeoguessError, match="trainer=cpu runs without one"):
            run_training([*FAST, *folder_data(data_root), "trainer=gpu"], tmp_path / "c")


def test_a_mistyped_data_root_is_an_error_and_creates_nothing(tmp_path):
    typo = tmp_path / "typo"
    done = run_cli("train", ["backbone=tiny", f"data.root={typo}"], cwd=tmp_path)
    assert done.returncode == 2 and f"data.root={typo} holds no dataset" in done.stderr
    assert "Traceback" not in done.stderr and not typo.exists()


def test_piped_output_has_a_line_per_epoch_and_little_else(data_root, tmp_path):
    overrides = [*FAST, *folder_data(data_root), "trainer.max_epochs=2", "logger=csv"]
    done = run_module(
        "geoguess.train",
        *[o for o in overrides if "enable_progress_bar" not in o],
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert output.count("epoch 1/2") == 1 and output.count("epoch 2/2") == 1
    assert "Tip" not in output and "Test metric" not in output
    assert len(output.strip().splitlines()) <= 25, output
    log = (tmp_path / "run" / "train.log").read_text()
    assert "epoch 2/2" in log and "val" in log


def test_a_frozen_backbone_computes_its_features_once(data_root, tmp_path, monkeypatch):
    """unfreeze=frozen without augmentation: the backbone runs once per location (to fill the
    feature cache), never in the epochs; the results equal a run without the cache."""
    from geoguess.models.network import GeoNetwork

    calls = []
    encode = GeoNetwork.encode_views

    def counting(self, images):
        calls.append(len(images))
        return encode(self, images)

    monkeypatch.setattr(GeoNetwork, "encode_views", counting)
    # A seed of its own: other tests' frozen runs (seed 42) cached their backbone's features.
    base = [*FAST, *folder_data(data_root), "data.split_by=hash", "unfreeze=frozen", "seed=7"]
    base += ["trainer.max_epochs=3", "trainer.limit_test_batches=null"]
    cached = run_training(base, tmp_path / "cached")
    n_locations = 80
    assert sum(calls) == n_locations  # the cache, filled once; the epochs read it
    features_before = set((data_root / ".geoguess-cache").rglob("features-*.npy"))
    calls.clear()
    again = run_training(base, tmp_path / "again")
    assert calls == [] and {**again, "split_sizes": None} == pytest.approx(
        {
            **cached,
            "best_checkpoint": again["best_checkpoint"],
            "train_seconds": again["train_seconds"],
            "split_sizes": None,  # a nested dict, which approx does not compare
        }
    )
    assert again["split_sizes"] == cached["split_sizes"]
    plain = run_training([*base, "model.feature_cache=false"], tmp_path / "plain")
    # Every epoch through the backbone: 3 x (2 training batches of 8 + 1 validation batch).
    assert sum(calls) > 3 * 2 * 8 and len(calls) > 9
    for key in ("val_haversine_km", "test_haversine_km", "test_median_km"):
        assert plain[key] == pytest.approx(cached[key], abs=1e-3), key
    assert set((data_root / ".geoguess-cache").rglob("features-*.npy")) == features_before
    # Another pooling of the same weights, or bf16 passes, give other features: a cache each.
    calls.clear()
    run_training([*base, "backbone.global_pool=catavgmax"], tmp_path / "pooled")
    assert sum(calls) == n_locations
    half = [*base, "model.frozen_precision=bf16"]
    halved = run_training(half, tmp_path / "bf16")
    assert sum(calls) == 2 * n_locations
    assert (
        len(set((data_root / ".geoguess-cache").rglob("features-*.npy")))
        == len(features_before) + 2
    )
    # Cached bf16 features are the bits the backbone gives live in bf16.
    halved_plain = run_training([*half, "model.feature_cache=false"], tmp_path / "bf16-plain")
    for key in ("val_haversine_km", "test_haversine_km", "test_median_km"):
        assert halved_plain[key] == pytest.approx(halved[key], abs=1e-3), key


def test_the_summary_never_calls_a_model_worse_than_the_baseline_better(tmp_path):
    from geoguess.results import RESULT_KEYS, summary

    results = dict.fromkeys(RESULT_KEYS) | {"epochs": 1, "train_seconds": 1.0}
    better = summary(
        tmp_path, results | {"baseline_test_haversine_km": 120.0, "test_haversine_km": 60.0}
    )
    assert "(2.0x better than the baseline)" in better
    worse = summary(
        tmp_path, results | {"baseline_test_haversine_km": 100.0, "test_haversine_km": 110.0}
    )
    assert "x better than" not in worse and "(1.1x the baseline's error" in worse
