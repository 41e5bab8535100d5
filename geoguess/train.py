"""`python -m geoguess.train [overrides]`: fit, test the best checkpoint, write the results.

Writes into the Hydra run directory: `results.json`, `checkpoints/` (best by val/haversine_km,
and last), `predictions_test.csv`, `test_errors.png`, `fitted.json`, `train.log`. See
docs/training.md.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import hydra
from lightning import seed_everything
from omegaconf import DictConfig

from geoguess import builders as build
from geoguess import metrics, runs
from geoguess import results as results_mod
from geoguess.errors import GeoguessError
from geoguess.launched import (
    join_launched_ranks,
    refuse_ddp_in_local_sweep,
    wait_for_the_other_ranks,
)
from geoguess.models import checkpoint as ckpt
from geoguess.models.loggers import (
    build_loggers,
    define_summaries,
    finish,
    log_media,
    log_results,
)
from geoguess.utils.cli import CONFIG_PATH, check_missing, instantiate, user_errors

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
    check_missing(cfg)
    refuse_ddp_in_local_sweep(cfg)
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
    out = Path(out)
    distributed = join_launched_ranks(cfg)
    with runs.refusing_resume(resume):
        checkpoint = ckpt.read_checkpoint(resume) if resume is not None else None
        if checkpoint is not None:
            ckpt.check_training_settings(checkpoint, cfg)
    build.quiet_lightning()
    seed_everything(cfg.seed, workers=True, verbose=False)
    country = instantiate(cfg.country)
    # Built first: a backbone whose weights cannot be had, or a bad optimizer setting, fails
    # before any data work.
    backbone = instantiate(cfg.backbone)
    optimizer = build.checked_optimizer(instantiate(cfg.optimizer))
    unfreeze = instantiate(cfg.unfreeze)
    datamodule = instantiate(cfg.data, _partial_=True)(
        country=country,
        grid=instantiate(cfg.grid),
        image_size=cfg.image.size,
        run_dir=out,
        seed=cfg.seed,
        fitted=ckpt.fitted_of(checkpoint) if checkpoint is not None else None,
    )
    if checkpoint is not None:
        with runs.refusing_resume(resume):
            ckpt.check_fit_settings(checkpoint, cfg, datamodule)
    # Data preparation (generation, validation, the image cache) on rank 0 alone; the other
    # ranks of a distributed run wait for it, then read what it made.
    if runs.global_rank() == 0:
        datamodule.prepare_data()
    if distributed:
        wait_for_the_other_ranks()
    datamodule.setup("fit")
    if datamodule.splits["val"].empty:
        raise GeoguessError(
            "the validation split is empty, and the best checkpoint is chosen on it; give it "
            "a share (data.split=[0.8,0.1,0.1]) or use more locations"
        )
    model = build.build_module(cfg, datamodule.fitted, backbone, optimizer, unfreeze)
    if checkpoint is not None:
        with runs.refusing_resume(resume):
            ckpt.check_architecture(checkpoint, model.network.spec)
    loggers = build_loggers(cfg)
    try:
        feature_cache = bool(cfg.model.feature_cache)
        callbacks = build.build_callbacks(cfg, loggers, unfreeze, feature_cache)
        trainer = build.build_trainer(
            cfg,
            callbacks=callbacks,
            logger=loggers or False,
            default_root_dir=str(out),
            enable_progress_bar=build.progress_bar(cfg, callbacks),
        )
        for logger in loggers:
            logger.log_hyperparams({**model.config, **getattr(logger, "swept", {})})
        define_summaries(loggers)
        log.info("%s: %s", out, build.describe(model, datamodule))
        trainer.fit(
            model,
            datamodule=datamodule,
            ckpt_path=str(resume) if resume is not None else None,
            weights_only=True,
        )
        # Read now: loading the best checkpoint below sets the Timer's offset to the time
        # stored in it, which time_elapsed would then add to this run's whole time again.
        seconds = build.train_seconds(callbacks)
        best_callback = build.best_checkpoint_callback(callbacks)
        best = (best_callback.best_model_path or None) if best_callback is not None else None
        # The predictor's extras are fitted on the best weights as the test starts.
        trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)
        results = _results(cfg, model, trainer, datamodule, best_callback, best, seconds)
        if trainer.is_global_zero:
            grid = datamodule.fitted.grid if model.head.num_classes is not None else None
            maps = results_mod.write_outputs(out, results, model.test_predictions, country, grid)
            log_media(loggers, maps, model.test_predictions)
            log_results(loggers, results)
            results_mod.report(out, results)
    except SystemExit as exit_:  # Lightning's answer to Ctrl+C: a graceful stop, then exit 1
        raise Interrupted(
            f"interrupted; resume with: python -m geoguess.train hydra.run.dir={out} "
            "ckpt_path=last (and the same overrides)"
        ) from exit_
    finally:
        finish(loggers)
    return results


def _results(cfg, model, trainer, datamodule, best_callback, best, seconds: float) -> dict:
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
    score = best_callback.best_model_score if best_callback is not None else None
    return results_mod.completed(
        val_km=float(score) if score is not None else None,
        test=model.test_metrics,
        frame=frame,
        baseline_km=baseline,
        num_classes=model.head.num_classes,
        best_checkpoint=str(Path(best).resolve()) if best else None,
        epochs=int(trainer.current_epoch),
        train_seconds=seconds,
        dataset=datamodule.fitted.info.get("dataset_key"),
        seed=int(cfg.seed),
        split_sizes={name: len(frame) for name, frame in datamodule.splits.items()},
    )


if __name__ == "__main__":
    main()
