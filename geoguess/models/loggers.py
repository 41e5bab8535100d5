"""Experiment loggers, built from `conf/logger/*.yaml`: each file holds its logger under its
own name (`logger.csv`, `logger.wandb`), so `logger=[csv,tensorboard]` runs both.

W&B runs online when the user is logged in and offline otherwise (saying how to upload later);
`WANDB_MODE` in the environment always wins. A run folder keeps its W&B run id
(`wandb-run-id`), so a resumed run continues the same W&B run; in a sweep each job is its own
W&B run, named after its overrides, in a group named after the sweep. Its config is the full
resolved config, nested, with the run's overrides beside it under `overrides`; its tags name
the experiment, backbone, head, grid and data it ran with; at the end its summary gets the
results a dashboard compares (`log_results`) and the best checkpoint becomes a model artifact.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import wandb
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import WandbLogger

from geoguess.errors import GeoguessError
from geoguess.runs import global_rank
from geoguess.utils.cli import instantiate
from geoguess.utils.io import write_text_atomic

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb-run-id"


# The config groups a run's tags name (`backbone:efficientnet_lite0`), when chosen.
TAGGED_GROUPS = ("experiment", "backbone", "head", "grid", "data")


def build_loggers(cfg) -> list:
    """Every configured logger, one per entry of `logger` (none for `logger=none`; an entry set
    to null, `logger.csv=null`, is left out)."""
    node = cfg.get("logger")
    if not node:
        return []
    loggers = []
    for name, entry in node.items():
        if entry is None:
            continue
        if not isinstance(entry, Mapping) or "_target_" not in entry:
            raise GeoguessError(
                f"logger.{name} is not a logger (it has no _target_): each conf/logger/*.yaml "
                "holds its logger under its own name, e.g. `csv: {_target_: ...}`; set a key "
                "with logger.<name>.<key>=..."
            )
        loggers.append(instantiate(entry))
    return loggers


def wandb_logger(
    *,
    save_dir: str,
    project: str,
    group: str | None,
    name: str | None,
    mode: str | None,
    tags: list[str] | None,
    job_type: str | None,
    log_model: bool,
):
    """A Lightning `WandbLogger` from `logger.wandb` (conf/logger/wandb.yaml holds the
    defaults); `mode` null: online if logged in, else offline.

    `log_model`: `log_results` uploads the best checkpoint as a model artifact (Lightning's own
    checkpoint upload stays off: it runs before the test, so without the results)."""
    mode = mode or os.environ.get("WANDB_MODE") or ("online" if _logged_in() else "offline")
    if mode not in ("online", "offline", "disabled"):
        raise GeoguessError(f"logger.wandb.mode={mode!r} is not online, offline or disabled")
    if mode == "offline" and not os.environ.get("WANDB_MODE"):
        log.warning("W&B: not logged in (run `wandb login`), so this run is logged offline")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    overrides = _overrides()
    logger = WandbLogger(
        save_dir=str(save_dir),
        project=project,
        group=group or sweep_name(),
        name=name or run_name(overrides, save_dir),
        tags=list(dict.fromkeys([*(tags or []), *choice_tags()])),
        mode=mode,
        job_type=job_type,
        id=_run_id(Path(save_dir)),
        resume="allow",
        # W&B's own footer repeats the sync hint printed by `finish`.
        settings=_quiet_settings(),
    )
    # What train.py adds to the config it logs: the overrides beside the nested config (a group
    # override such as `data=folder` must not replace the `data` block with its name).
    logger.swept = {"overrides": _swept_values(overrides)} if overrides else {}
    logger.log_best_model = bool(log_model)
    return logger


def _quiet_settings():
    return wandb.Settings(quiet=True)


def _logged_in() -> bool:
    try:
        return bool(wandb.login(prompt=False, verify=False))
    except Exception:  # noqa: BLE001 - any trouble reading credentials means offline
        return False


def _run_id(folder: Path) -> str:
    """The W&B run id of this run folder, made on first use and kept for resumed runs."""
    path = folder / RUN_ID_FILE
    if path.exists():
        return path.read_text().strip()
    run_id = secrets.token_hex(6)
    if global_rank() == 0:  # the other ranks of a DDP run log nothing to W&B
        write_text_atomic(path, run_id + "\n")
    return run_id


def sweep_name() -> str | None:
    """`<command>-multirun-<sweep folder>` in a multirun (`train-multirun-<time>`), so the
    sweep's jobs form one W&B group."""
    hc = _hydra_config()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return None
    return f"{hc.job.name}-multirun-{Path(hc.sweep.dir).name}"


def choice_tags() -> list[str]:
    """`group:option` for each of `TAGGED_GROUPS` the run chose (`head:hybrid`)."""
    hc = _hydra_config()
    choices = hc.runtime.choices if hc is not None else {}
    return [f"{g}:{choices[g]}" for g in TAGGED_GROUPS if choices.get(g) not in (None, "null")]


def run_name(overrides: list[str], save_dir: str | Path) -> str:
    """The overrides that make this run what it is, else the run folder's name."""
    shown = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith("hydra.")]
    return " ".join(shown) if shown else Path(save_dir).name


def _swept_values(overrides: list[str]) -> dict:
    """`{"grid.spacing": 0.5, "head": "hybrid"}`: each override, its value parsed as YAML."""
    values = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        if sep and not key.startswith("hydra."):
            try:
                values[key] = yaml.safe_load(value)
            except yaml.YAMLError:
                values[key] = value
    return values


def _overrides() -> list[str]:
    hc = _hydra_config()
    return list(hc.overrides.task) if hc is not None else []


def _hydra_config():
    return HydraConfig.get() if HydraConfig.initialized() else None


def define_summaries(loggers) -> None:
    """W&B's run summary of the validation error is its best epoch, not its last one."""
    for logger in loggers or []:
        if isinstance(logger, WandbLogger):
            for name in ("val/haversine_km", "val/median_km"):
                logger.experiment.define_metric(name, summary="min")


def log_media(loggers, maps: list[Path], predictions) -> None:
    """The run's maps as W&B images and its test predictions as a W&B table."""
    for logger in loggers or []:
        if not isinstance(logger, WandbLogger):
            continue
        for path in maps:
            logger.log_image(key=f"maps/{Path(path).stem}", images=[str(path)])
        if predictions is not None and len(predictions):
            logger.log_table(key="test/predictions", dataframe=predictions)


def result_summary(results: dict) -> dict:
    """The W&B summary keys of a `results.json` dict: its baseline, the error as a multiple of
    the baseline, the share of guesses snapped to land, the classes, the split sizes and the
    dataset (each one the results hold)."""
    summary = {}
    baseline = results.get("baseline_test_haversine_km")
    error = results.get("test_haversine_km")
    if baseline is not None:
        summary["test/baseline_km"] = baseline
        if error is not None and baseline > 0:
            summary["test/error_over_baseline"] = error / baseline
    snapped = results.get("snapped_share", results.get("test_snapped_share"))
    if snapped is not None:
        summary["test/snapped_share"] = snapped
    for key in ("num_classes", "dataset"):
        if results.get(key) is not None:
            summary[key] = results[key]
    for split, size in (results.get("split_sizes") or {}).items():
        summary[f"split_sizes/{split}"] = size
    return summary


def log_results(loggers, results: dict) -> None:
    """The run's results into each W&B run: `result_summary` in its summary, and the best
    checkpoint as a model artifact with every result as its metadata (unless
    `logger.wandb.log_model=false`)."""
    for logger in loggers or []:
        if not isinstance(logger, WandbLogger):
            continue
        run = logger.experiment
        run.summary.update(result_summary(results))
        best = results.get("best_checkpoint")
        if getattr(logger, "log_best_model", False) and best and Path(best).is_file():
            artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=dict(results))
            # Immutable: W&B reads the run folder's file at upload (a later `wandb sync` of an
            # offline run too) instead of copying every checkpoint into its staging folder.
            artifact.add_file(str(best), name=Path(best).name, policy="immutable", skip_cache=True)
            run.log_artifact(artifact, aliases=["best", "latest"])


def finish(loggers) -> None:
    """End the W&B run of this job (a multirun's next job must start a new one) and say once
    where an offline run lies and how to upload it."""
    if not any(isinstance(logger, WandbLogger) for logger in loggers or []):
        return
    # The run the W&B logger started, if it started one (asking the logger would start it).
    run = wandb.run
    if run is not None:
        offline = run.settings.mode in ("offline", "dryrun")
        folder = Path(run.dir).parent
        wandb.finish()
        if offline:
            print(f"W&B run logged offline in {folder}; upload it with: wandb sync {folder}")
