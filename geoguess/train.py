"""`python -m geoguess.train [overrides]`: fit, test the best checkpoint, write the results.

Writes into the Hydra run directory: `results.json`, `checkpoints/` (best by val/haversine_km,
and last), `predictions_test.csv`, `test_errors.png`, `fitted.json`, `train.log`. See
docs/training.md.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from geoguess.errors import GeoguessError
from geoguess.utils.cli import CONFIG_PATH, user_errors

log = logging.getLogger("geoguess.train")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
@user_errors
def main(cfg: DictConfig) -> float:
    """The best validation error in km, for sweepers (Optuna) to minimise; NaN for a sweep job
    that failed (its folder's results.json says why, and the sweep goes on)."""
    return objective(run_job(cfg))


def objective(results: dict) -> float:
    value = results.get("val_haversine_km")
    return float(value) if results.get("status") == "ok" and value is not None else math.nan


def run_job(cfg: DictConfig) -> dict:
    """Claim the run folder, train, and return the results; a failure is written into the
    folder as results.json, then raised (a single run) or reported (a sweep job: the sweep
    goes on)."""
    from geoguess import results as results_mod
    from geoguess import runs
    from geoguess.utils.cli import check_missing

    check_missing(cfg)
    _refuse_ddp_in_local_sweep(cfg)
    out = runs.run_dir()
    try:
        resume = runs.claim_for_training(cfg, out, cfg.get("ckpt_path"))
    except GeoguessError as exc:  # the folder is not ours to write into
        return _failed_job(exc, out, None)
    try:
        return train(cfg, out, resume)
    except Interrupted:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded in the job's folder, then reported
        if runs.is_refused_resume(exc) and cfg.get("ckpt_path") == "last":
            runs.drop_resume_record(out)  # the interrupted run stays as it was, resumable
            return _failed_job(exc, out, None)
        return _failed_job(exc, out, results_mod.write_failure(out, exc, cfg.get("seed")))


def _failed_job(exc: Exception, out: Path, written: Path | None) -> dict:
    from geoguess import results as results_mod
    from geoguess import runs

    if not runs.is_multirun():
        raise exc
    where = f" (see {written})" if written else ""
    log.error("job failed: %s%s", exc, where, exc_info=not isinstance(exc, GeoguessError))
    print(f"error: job {out.name} failed: {exc}{where}", file=sys.stderr)
    return results_mod.failed(exc)


class Interrupted(GeoguessError):
    """Training was interrupted (Ctrl+C); the run folder can be resumed."""

    exit_code = 130


def train(cfg: DictConfig, out: str | Path, resume: Path | None = None) -> dict:
    """One run into the folder `out`: data, model, fit, test; returns the `results.json` dict.

    `resume`: a checkpoint (the folder's own last.ckpt, or another run's) to continue from;
    its fitted data is reused instead of fitting again on today's data.
    """
    import lightning as L
    import torch.distributed as dist

    from geoguess import results as results_mod
    from geoguess import runs
    from geoguess.models import checkpoint as ckpt
    from geoguess.utils.cli import instantiate

    out = Path(out)
    distributed = _join_launched_ranks(cfg)
    with runs.refusing_resume(resume):
        checkpoint = ckpt.read_checkpoint(resume) if resume is not None else None
        if checkpoint is not None:
            ckpt.check_fit_settings(checkpoint, cfg)
            ckpt.check_training_settings(checkpoint, cfg)
    _quiet_lightning()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    country = instantiate(cfg.country)
    # Built first: a backbone whose weights cannot be had, or a bad optimizer setting, fails
    # before any data work.
    backbone = instantiate(cfg.backbone)
    optimizer = _checked_optimizer(instantiate(cfg.optimizer))
    unfreeze = instantiate(cfg.unfreeze)
    datamodule = instantiate(cfg.data, _partial_=True)(
        country=country,
        grid=instantiate(cfg.grid),
        image_size=cfg.image.size,
        run_dir=out,
        seed=cfg.seed,
        fitted=ckpt.fitted_of(checkpoint) if checkpoint is not None else None,
    )
    # Data preparation (generation, validation, the image cache) on rank 0 alone; the other
    # ranks of a distributed run wait for it, then read what it made.
    if runs.global_rank() == 0:
        datamodule.prepare_data()
    if distributed:
        dist.barrier()
    datamodule.setup("fit")
    if datamodule.splits["val"].empty:
        raise GeoguessError(
            "the validation split is empty, and the best checkpoint is chosen on it; give it "
            "a share (data.split=[0.8,0.1,0.1]) or use more locations"
        )
    model = build_model(cfg, datamodule.fitted, backbone, optimizer, unfreeze)
    if checkpoint is not None:
        with runs.refusing_resume(resume):
            ckpt.check_architecture(checkpoint, model.spec())
    elif _feature_cache_applies(cfg, model, unfreeze, datamodule):
        if runs.global_rank() == 0:
            build_feature_cache(model, datamodule)
        if distributed:
            dist.barrier()
        model.feature_cache = build_feature_cache(model, datamodule)  # rank 0 made it: a load
    from geoguess.models.loggers import build_loggers, define_summaries, finish, log_media

    loggers = build_loggers(cfg)
    try:
        callbacks = _callbacks(cfg, loggers, unfreeze)
        trainer = build_trainer(
            cfg,
            callbacks=callbacks,
            logger=loggers or False,
            default_root_dir=str(out),
            enable_progress_bar=_progress_bar(cfg, callbacks),
        )
        for logger in loggers:
            logger.log_hyperparams({**model.config, **getattr(logger, "swept", {})})
        define_summaries(loggers)
        log.info("%s: %s", out, _describe(model, datamodule))
        trainer.fit(
            model,
            datamodule=datamodule,
            ckpt_path=str(resume) if resume is not None else None,
            weights_only=True,
        )
        # Read now: loading the best checkpoint below sets the Timer's offset to the time
        # stored in it, which time_elapsed would then add to this run's whole time again.
        train_seconds = _train_seconds(callbacks)
        best = _best_checkpoint(callbacks)
        fit_inference_extras(model, datamodule, trainer, best)
        trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)
        results = _results(cfg, model, trainer, datamodule, callbacks, best, train_seconds)
        if trainer.is_global_zero:
            grid = datamodule.fitted.grid if model.head.num_classes is not None else None
            maps = results_mod.write_outputs(out, results, model.test_predictions, country, grid)
            log_media(loggers, maps, model.test_predictions)
            results_mod.report(out, results)
    except SystemExit as exit_:  # Lightning's answer to Ctrl+C: a graceful stop, then exit 1
        raise Interrupted(
            f"interrupted; resume with: python -m geoguess.train hydra.run.dir={out} "
            "ckpt_path=last (and the same overrides)"
        ) from exit_
    finally:
        finish(loggers)
    return results


# -- building -----------------------------------------------------------------------------------


def _feature_cache_applies(cfg: DictConfig, model, unfreeze, datamodule) -> bool:
    """Cached features stand for the backbone while it is frozen (from the first epoch) and
    sees the images as they are cached (no augmentation)."""
    from geoguess.models.unfreeze import Never

    return bool(
        model.use_feature_cache
        and not isinstance(unfreeze, Never)
        and unfreeze.trainable_stages(0, 1) == 0
        and not cfg.data.get("augment", False)
        and datamodule.report.cache is not None
    )


def build_feature_cache(model, datamodule):
    """The per-view features of every cached location, computed once for this backbone."""
    import torch

    from geoguess.models.backbones import global_pool
    from geoguess.models.feature_cache import FeatureCache, feature_key, weights_digest
    from geoguess.models.module import backbone_name

    image_cache = datamodule.report.cache
    key = feature_key(
        f"{backbone_name(model.backbone)}:{global_pool(model.backbone)}{model.feature_variant()}",
        weights_digest(model.backbone),
        image_cache.key,
        image_cache.image_size,
        model.input_mean.flatten().tolist(),
        model.input_std.flatten().tolist(),
    )
    model.set_backbone_layout()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return FeatureCache.build_or_load(
                image_cache.data_path.parent, key, image_cache.open(), model.encode_views
            )
    finally:
        model.train(was_training)


def _join_launched_ranks(cfg: DictConfig) -> bool:
    """Under torchrun or SLURM (ranks started outside Lightning), join the process group now,
    before any data work, so that rank 0 alone prepares the data; Lightning's DDP strategy then
    uses this group. Returns whether the run is distributed so."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    from geoguess import runs

    environment = next(
        (e() for e in (TorchElasticEnvironment, SLURMEnvironment) if e.detect()), None
    )
    if environment is None or environment.world_size() <= 1:
        return False
    if not str(cfg.trainer.get("strategy", "")).startswith("ddp"):
        raise GeoguessError(
            f"{environment.world_size()} processes were started (torchrun or SLURM) but "
            f"trainer.strategy is {cfg.trainer.get('strategy')!r}: use trainer=ddp"
        )
    if runs.is_multirun() and not isinstance(environment, SLURMEnvironment):
        raise GeoguessError("DDP inside a local -m sweep is not supported; see docs/sweeps.md")
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", environment.main_address)
        os.environ.setdefault("MASTER_PORT", str(environment.main_port))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(environment.local_rank())
        dist.init_process_group(
            backend, rank=environment.global_rank(), world_size=environment.world_size()
        )
    return True


def _refuse_ddp_in_local_sweep(cfg: DictConfig) -> None:
    """Lightning would start each job's ranks by re-running the whole `-m` command."""
    from geoguess import runs

    if not runs.is_multirun() or not str(cfg.trainer.get("strategy", "")).startswith("ddp"):
        return
    from hydra.core.hydra_config import HydraConfig

    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    if "submitit" not in launcher:
        raise GeoguessError(
            "trainer=ddp inside a local -m sweep: Lightning would start each job's ranks by "
            "re-running the whole sweep. Start the ranks with torchrun (one run at a time), or "
            "sweep on a cluster with hydra/launcher=submitit_slurm (see docs/sweeps.md)"
        )


def build_model(cfg: DictConfig, fitted, backbone=None, optimizer=None, unfreeze=None):
    """The LightningModule of a run config around `fitted` (the parts given are reused)."""
    from geoguess.utils.cli import instantiate

    backbone = backbone if backbone is not None else instantiate(cfg.backbone)
    optimizer = optimizer or _checked_optimizer(instantiate(cfg.optimizer))
    unfreeze = unfreeze or instantiate(cfg.unfreeze)
    return instantiate(cfg.model)(
        backbone=backbone,
        head=instantiate(cfg.head),
        fitted=fitted,
        optimizer=optimizer,
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        backbone_lr=unfreeze.backbone_lr,
        pretrained=bool(cfg.backbone.get("pretrained") or cfg.backbone.get("pretrained_file")),
        tta=cfg.get("tta", "none"),
        config=plain_config(cfg),
    )


def build_trainer(cfg: DictConfig, **kwargs):
    """The Lightning Trainer of `cfg.trainer`. DDP without GPUs runs CPU processes over gloo
    (Lightning's choice), in float32 and without synchronised BatchNorm (GPU-only options)."""
    import torch
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from geoguess.utils.cli import instantiate

    settings = {}
    if str(cfg.trainer.get("strategy", "")).startswith("ddp") and not torch.cuda.is_available():
        settings = {"accelerator": "cpu", "sync_batchnorm": False, "precision": "32-true"}
        if cfg.trainer.get("devices") == -1:  # "all devices": every CPU core its process
            settings["devices"] = os.cpu_count() or 1
    # The data module's samplers split each epoch between the ranks themselves.
    settings["use_distributed_sampler"] = False
    try:
        return instantiate(cfg.trainer, _partial_=True)(**{**settings, **kwargs})
    except MisconfigurationException as exc:
        raise GeoguessError(
            f"trainer: {exc} (trainer=gpu needs a CUDA GPU; trainer=cpu runs without one)"
        ) from None


def _checked_optimizer(factory):
    """The optimizer partial, tried on one parameter: `optimizer.lr=-1` fails now, clearly."""
    import torch

    try:
        factory([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as exc:
        settings = ", ".join(f"optimizer.{k}={v!r}" for k, v in factory.keywords.items())
        raise GeoguessError(f"{factory.func.__name__} refuses {settings}: {exc}") from None
    return factory


def _callbacks(cfg: DictConfig, loggers: list, unfreeze) -> list:
    """The `callbacks` group (every entry with a `_target_`, user additions included), the
    unfreeze schedule, per-epoch seeding and the per-epoch log line."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    from geoguess.models.callbacks import EpochLog, EpochSeed
    from geoguess.utils.cli import instantiate

    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        if "_target_" not in node:
            raise GeoguessError(f"callbacks.{name} has no _target_: give one, or set it to null")
        callback = instantiate(node)
        # Lightning refuses a learning-rate monitor without a logger to write to.
        if callback is None or (isinstance(callback, LearningRateMonitor) and not loggers):
            continue
        callbacks.append(callback)
    return [*callbacks, unfreeze, EpochSeed(cfg.seed), EpochLog()]


def fit_inference_extras(model, datamodule, trainer, best: str | None) -> None:
    """On the best checkpoint's weights: the retrieval index of the training split (with
    model.refine=knn), then the calibration of the confidence radii on the validation split;
    kept beside the checkpoint for prediction."""
    import torch

    from geoguess.models.refinement import Retrieval, radius_scale, save_extras

    if best:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
    device = trainer.strategy.root_device
    model.to(device).eval()
    model.radius_scale = None
    with torch.no_grad(), trainer.precision_plugin.forward_context():
        if model.refine == "knn":
            parts = _pass(model, datamodule.loader("train"), device, embed=True)
            model.retrieval = Retrieval(
                torch.nn.functional.normalize(parts["fused"], dim=-1),
                torch.from_numpy(datamodule.fitted.targets.project(*parts["latlon"].T.numpy())),
                parts["class_id"],
                **model.refine_settings,
            )
        parts = _pass(model, datamodule.loader("val"), device)
    lat, lon, _ = model.head.decode(parts["xy"].numpy())
    from geoguess.geo import haversine_km

    errors = haversine_km(lat, lon, *parts["latlon"].T.numpy())
    raw = torch.stack([parts["radius50"], parts["radius90"]], dim=-1).numpy()
    model.radius_scale = tuple(float(v) for v in radius_scale(errors, raw))
    if best and trainer.is_global_zero:
        save_extras(best, np.asarray(model.radius_scale), model.retrieval)


def _pass(model, loader, device, embed: bool = False) -> dict:
    """The model's guesses (and with `embed`, fused features) over a loader, on the CPU."""
    import torch

    collected: dict[str, list] = {}
    for batch in loader:
        if not batch["uuid"]:
            continue
        images, rows = batch["images"].to(device), batch["row"].to(device)
        fused = model.embed(images, rows)
        guess = model.guess(images, fused=fused, output=model.head(model.neck(fused)))
        values = {**guess, "latlon": batch["latlon"], "class_id": batch["class_id"]}
        if embed:
            values["fused"] = fused.float()
        for key, value in values.items():
            collected.setdefault(key, []).append(value.cpu())
    return {key: torch.cat(value) for key, value in collected.items()}


def _progress_bar(cfg: DictConfig, callbacks: list) -> bool:
    from lightning.pytorch.callbacks import ProgressBar

    wanted = cfg.trainer.get("enable_progress_bar")
    has_bar = any(isinstance(c, ProgressBar) for c in callbacks)
    if wanted is False:
        callbacks[:] = [c for c in callbacks if not isinstance(c, ProgressBar)]
        return False
    return has_bar or bool(wanted)


def _best_checkpoint(callbacks: list) -> str | None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from geoguess.models.module import MONITOR

    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor == MONITOR:
            return callback.best_model_path or None
    log.warning("no checkpoint callback monitors %s: testing the last epoch's model", MONITOR)
    return None


def _quiet_lightning() -> None:
    # Tips, accelerator inventories and the like: not what a person needs to read.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*is deprecated, use `isinstance.*")
    # A resumed run's checkpoint folder holds the interrupted session's files, as it should.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    # Under DDP every test location is counted once (module._gather_frame drops the repeats).
    warnings.filterwarnings("ignore", message="Using `DistributedSampler` with the dataloaders")
    from geoguess import runs

    if runs.global_rank() != 0:  # one voice per run in the log
        log.setLevel(logging.WARNING)


def _describe(model, datamodule) -> str:
    counts = {name: len(frame) for name, frame in datamodule.splits.items()}
    params = sum(p.numel() for p in model.parameters())
    classes = model.head.num_classes
    return (
        f"{counts['train']} train / {counts['val']} val / {counts['test']} test locations, "
        f"{params / 1e6:.2f} M parameters" + (f", {classes} classes" if classes is not None else "")
    )


def plain_config(cfg) -> dict:
    """The resolved config as plain containers, without Hydra's own node."""
    from omegaconf import OmegaConf, open_dict

    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


# -- results ------------------------------------------------------------------------------------


def _train_seconds(callbacks: list) -> float:
    """Training time so far (a resumed run's included), from the Timer callback."""
    from lightning.pytorch.callbacks import Timer

    timer = next((c for c in callbacks if isinstance(c, Timer)), None)
    return timer.time_elapsed("train") if timer is not None else 0.0


def _results(
    cfg, model, trainer, datamodule, callbacks: list, best: str | None, train_seconds: float
) -> dict:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from geoguess import metrics
    from geoguess import results as results_mod
    from geoguess.models.module import MONITOR

    frame = model.test_predictions
    baseline = None
    if frame is not None and len(frame):
        train = datamodule.splits["train"]
        baseline = float(
            metrics.baseline_errors(
                train["latitude"],
                train["longitude"],
                frame["true_latitude"],
                frame["true_longitude"],
                datamodule.fitted.targets.crs,
            ).mean()
        )
    checkpoint = next(
        (c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor == MONITOR), None
    )
    score = checkpoint.best_model_score if checkpoint is not None else None
    return results_mod.completed(
        val_km=float(score) if score is not None else None,
        test=model.test_metrics,
        frame=frame,
        baseline_km=baseline,
        num_classes=model.head.num_classes,
        best_checkpoint=str(Path(best).resolve()) if best else None,
        epochs=int(trainer.current_epoch),
        train_seconds=train_seconds,
        dataset=datamodule.fitted.info.get("dataset_key"),
        seed=int(cfg.seed),
        split_sizes={name: len(frame) for name, frame in datamodule.splits.items()},
    )


if __name__ == "__main__":
    main()
