"""`python -m geoguess.train [overrides]`: fit, test the best checkpoint, write the results.

Writes into the Hydra run directory: `results.json`, `checkpoints/` (best by val/haversine_km,
and last), `predictions_test.csv`, `test_errors.png`, `fitted.json`. See docs/training.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

import geoguess.models.schema  # noqa: F401 - registers the config schemas before composition
from geoguess.errors import GeoguessError
from geoguess.utils.cli import CONFIG_PATH, run_dir, user_errors

log = logging.getLogger(__name__)

LAST = "last"  # checkpoints/last.ckpt: the end of the latest epoch

RESULT_KEYS = (
    "val_haversine_km",
    "test_haversine_km",
    "test_median_km",
    "test_acc_1km",
    "test_acc_25km",
    "test_acc_100km",
    "test_geoguessr_score",
    "baseline_test_haversine_km",
    "num_classes",
    "best_checkpoint",
    "epochs",
    "train_seconds",
)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
@user_errors
def main(cfg: DictConfig) -> float | None:
    """Returns the best validation error in km, for sweepers (Optuna) to minimise."""
    return train(cfg)["val_haversine_km"]


def train(cfg: DictConfig, out: str | Path | None = None) -> dict:
    """One run: data, model, fit, test; returns the `results.json` dict."""
    import lightning as L

    from geoguess.models.module import build_module

    out = Path(out) if out is not None else run_dir()
    _check_missing(cfg)
    _check_run_dir(out, cfg.get("ckpt_path"))
    L.seed_everything(cfg.seed, workers=True)
    country = _instantiate(cfg.country)
    datamodule = _instantiate(
        cfg.data,
        country=country,
        grid=_instantiate(cfg.grid),
        image_size=cfg.image.size,
        run_dir=out,
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    if datamodule.splits["val"].empty:
        raise GeoguessError(
            "the validation split is empty, and the best checkpoint is chosen on it; give it "
            "a share (data.split=[0.8,0.1,0.1]) or use more locations"
        )
    model = _guard(build_module, cfg, datamodule.fitted)
    loggers = _loggers(cfg, out)
    try:
        callbacks = _callbacks(cfg, out, bool(loggers))
        trainer = _instantiate(
            cfg.trainer,
            callbacks=list(callbacks.values()),
            logger=loggers or False,
            default_root_dir=str(out),
            _hint="trainer=gpu and trainer=ddp need CUDA GPUs; trainer=cpu runs without one",
        )
        for logger in loggers:
            logger.log_hyperparams(model.config)
        _define_wandb_summaries(loggers)
        trainer.fit(model, datamodule=datamodule, ckpt_path=_resume_path(out, cfg.get("ckpt_path")))
        best = callbacks["checkpoint"].best_model_path or callbacks["last"].best_model_path or None
        trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=False)
        results = _results(model, trainer, datamodule, callbacks, best)
        if trainer.is_global_zero:
            _write_outputs(out, results, model, country)
    finally:
        from geoguess.models.loggers import finish

        finish(loggers)
    return results


# -- building -----------------------------------------------------------------------------------


def _instantiate(node, _hint: str | None = None, **kwargs):
    from hydra.utils import instantiate

    try:
        return _guard(instantiate, node, **kwargs)
    except GeoguessError as exc:
        if _hint and type(exc) is GeoguessError:
            raise GeoguessError(f"{exc} ({_hint})") from None
        raise


def _guard(function, *args, **kwargs):
    """Call `function`, turning configuration mistakes into one clear `GeoguessError`.

    Hydra wraps what a `_target_` raises in `InstantiationException`; the user's error (a
    `GeoguessError`, Lightning's `MisconfigurationException`) is unwrapped from it.
    """
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return function(*args, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, GeoguessError):
            raise cause from None
        if isinstance(cause, MisconfigurationException):
            raise GeoguessError(str(cause)) from None
        raise
    except MisconfigurationException as exc:
        raise GeoguessError(str(exc)) from None


def _check_missing(cfg: DictConfig) -> None:
    from omegaconf import OmegaConf

    missing = [key for key in OmegaConf.missing_keys(cfg) if not key.startswith("hydra.")]
    if missing:
        raise GeoguessError(
            f"{', '.join(sorted(missing))} must be given, e.g. data.root=/path/to/dataset"
        )


def _resume_path(out: Path, ckpt_path: str | None) -> str | None:
    if ckpt_path == "last":
        return str(out / "checkpoints" / f"{LAST}.ckpt")
    return ckpt_path


def _check_run_dir(out: Path, ckpt_path: str | None) -> None:
    if (out / "results.json").exists():
        raise GeoguessError(
            f"{out} already holds a finished run (results.json); start a new run, or delete "
            "results.json to test its checkpoints again"
        )
    if ckpt_path == "last" and not (out / "checkpoints" / "last.ckpt").exists():
        raise GeoguessError(
            f"ckpt_path=last: there is no {out / 'checkpoints' / 'last.ckpt'}; to resume an "
            "interrupted run, pass its directory as hydra.run.dir=outputs/train/<time> "
            "(or give ckpt_path=/path/to/file.ckpt)"
        )
    if ckpt_path not in (None, "last") and not Path(ckpt_path).is_file():
        raise GeoguessError(f"ckpt_path={ckpt_path} does not exist")


def _loggers(cfg: DictConfig, out: Path) -> list:
    if not cfg.logger or not cfg.logger.get("_target_"):
        return []
    return [_instantiate(cfg.logger, save_dir=str(out))]


def _callbacks(cfg: DictConfig, out: Path, with_logger: bool) -> dict:
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from geoguess.models.callbacks import TrainTimer
    from geoguess.models.module import MONITOR

    callbacks = {
        "checkpoint": ModelCheckpoint(
            dirpath=out / "checkpoints",
            filename="best-epoch{epoch:02d}",
            monitor=MONITOR,
            mode="min",
            save_top_k=1,
            auto_insert_metric_name=False,
        ),
        # After "checkpoint", so that last.ckpt holds this epoch's best too. (Lightning's own
        # save_last only writes when the monitored metric improved: useless for resuming.)
        "last": ModelCheckpoint(
            dirpath=out / "checkpoints",
            filename=LAST,
            save_top_k=1,
            enable_version_counter=False,
        ),
        "unfreeze": _instantiate(cfg.unfreeze),
        "timer": TrainTimer(),
    }
    if with_logger:
        callbacks["lr_monitor"] = LearningRateMonitor(logging_interval="epoch")
    return callbacks


def _define_wandb_summaries(loggers: list) -> None:
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            # The run's headline is the best epoch, not the last one.
            logger.experiment.define_metric("val/haversine_km", summary="min")
            logger.experiment.define_metric("val/median_km", summary="min")


# -- results ------------------------------------------------------------------------------------


def _results(model, trainer, datamodule, callbacks: dict, best: str | None) -> dict:
    from geoguess import metrics

    score = callbacks["checkpoint"].best_model_score
    test = model.test_metrics
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
    results = {
        "val_haversine_km": float(score) if score is not None else None,
        "test_haversine_km": test.get("haversine_km"),
        "test_median_km": test.get("median_km"),
        "test_acc_1km": test.get("acc_1km"),
        "test_acc_25km": test.get("acc_25km"),
        "test_acc_100km": test.get("acc_100km"),
        "test_geoguessr_score": test.get("geoguessr_score"),
        "baseline_test_haversine_km": baseline,
        "num_classes": model.head.num_classes,
        "best_checkpoint": str(Path(best).resolve()) if best else None,
        "epochs": int(trainer.current_epoch),
        "train_seconds": round(callbacks["timer"].seconds, 3),
    }
    assert tuple(results) == RESULT_KEYS
    return results


def _write_outputs(out: Path, results: dict, model, country) -> None:
    from geoguess.plots import plot_errors
    from geoguess.utils.io import write_csv_atomic, write_json_atomic

    frame = model.test_predictions
    if frame is not None and len(frame):
        write_csv_atomic(out / "predictions_test.csv", frame)
        plot_errors(country, frame, out / "test_errors.png")
    write_json_atomic(out / "results.json", results)
    print(_summary(out, results))


def _summary(out: Path, results: dict) -> str:
    def km(value):
        return "n/a" if value is None else f"{value:.1f} km"

    def share(value):
        return "n/a" if value is None else f"{100 * value:.1f} %"

    baseline, test = results["baseline_test_haversine_km"], results["test_haversine_km"]
    ratio = f" ({baseline / test:.1f}x better)" if baseline and test else ""
    lines = [
        f"results ({results['epochs']} epochs, {results['train_seconds']:.0f} s of training):",
        f"  validation error (best epoch)  {km(results['val_haversine_km'])}",
        f"  test error: mean               {km(test)}{ratio}",
        f"              median             {km(results['test_median_km'])}",
        f"  within 1 / 25 / 100 km         {share(results['test_acc_1km'])} / "
        f"{share(results['test_acc_25km'])} / {share(results['test_acc_100km'])}",
        f"  GeoGuessr score (of 5000)      {results['test_geoguessr_score'] or 0:.0f}",
        f"  baseline (train mean location) {km(baseline)}",
        f"wrote {out / 'results.json'}, predictions_test.csv, test_errors.png, checkpoints/",
    ]
    return "\n".join(lines)


def quote_numeric_options(argv: list[str], groups: tuple[str, ...] = ("image",)) -> list[str]:
    """`image=56` -> `image='56'`: Hydra reads a bare number as an int and refuses it as a
    config group option (`Config group override must be a string`); a sweep's `image=56,112`
    is quoted item by item."""
    quoted = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        items = value.split(",")
        if sep and key.lstrip("~+") in groups and all(item.isdigit() for item in items):
            arg = f"{key}=" + ",".join(f"'{item}'" for item in items)
        quoted.append(arg)
    return quoted


if __name__ == "__main__":
    import sys

    sys.argv = quote_numeric_options(sys.argv)
    main()
