"""Experiment loggers, built from `conf/logger/*.yaml`.

W&B runs online when the user is logged in and offline otherwise (saying how to upload later);
`WANDB_MODE` in the environment always wins. A run folder keeps its W&B run id
(`wandb-run-id`), so a resumed run continues the same W&B run; in a sweep each job is its own
W&B run, named after its overrides, in a group named after the sweep, with the swept settings as
top-level config keys (ready for W&B's parallel-coordinates and grouping panels).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from geoguess.errors import GeoguessError

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb-run-id"


def build_loggers(cfg) -> list:
    """The configured logger as a list (empty for `logger=none`)."""
    from geoguess.utils.cli import instantiate

    node = cfg.get("logger")
    if not node:
        return []
    return [instantiate(node)]


def wandb_logger(
    save_dir: str,
    project: str = "geoguess",
    group: str | None = None,
    name: str | None = None,
    mode: str | None = None,
    tags: list[str] | None = None,
    job_type: str | None = None,
):
    """A Lightning `WandbLogger`; `mode` null: online if logged in, else offline."""
    from lightning.pytorch.loggers import WandbLogger

    mode = mode or os.environ.get("WANDB_MODE") or ("online" if _logged_in() else "offline")
    if mode not in ("online", "offline", "disabled"):
        raise GeoguessError(f"logger.mode={mode!r} is not online, offline or disabled")
    if mode == "offline" and not os.environ.get("WANDB_MODE"):
        log.warning("W&B: not logged in (run `wandb login`), so this run is logged offline")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    overrides = _overrides()
    logger = WandbLogger(
        save_dir=str(save_dir),
        project=project,
        group=group or sweep_name(),
        name=name or run_name(overrides, save_dir),
        tags=list(tags or []),
        mode=mode,
        job_type=job_type,
        id=_run_id(Path(save_dir)),
        resume="allow",
        # W&B's own footer repeats the sync hint printed by `finish`.
        settings=_quiet_settings(),
    )
    # Lightning still passes wandb's retired `anonymous` setting, which makes wandb warn.
    logger._wandb_init.pop("anonymous", None)
    logger.swept = _swept_values(overrides)
    return logger


def _quiet_settings():
    import wandb

    return wandb.Settings(quiet=True)


def _logged_in() -> bool:
    import wandb

    try:
        return bool(wandb.login(prompt=False, verify=False))
    except Exception:  # noqa: BLE001 - any trouble reading credentials means offline
        return False


def _run_id(folder: Path) -> str:
    """The W&B run id of this run folder, made on first use and kept for resumed runs."""
    import secrets

    from geoguess.runs import global_rank
    from geoguess.utils.io import write_text_atomic

    path = folder / RUN_ID_FILE
    if path.exists():
        return path.read_text().strip()
    run_id = secrets.token_hex(6)
    if global_rank() == 0:  # the other ranks of a DDP run log nothing to W&B
        write_text_atomic(path, run_id + "\n")
    return run_id


def sweep_name() -> str | None:
    """`<command>-<sweep folder>` in a multirun, so the sweep's jobs form one W&B group."""
    from hydra.types import RunMode

    hc = _hydra_config()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return None
    return f"{hc.job.name}-{Path(hc.sweep.dir).name}"


def run_name(overrides: list[str], save_dir: str | Path) -> str:
    """The overrides that make this run what it is, else the run folder's name."""
    shown = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith("hydra.")]
    return " ".join(shown) if shown else Path(save_dir).name


def _swept_values(overrides: list[str]) -> dict:
    """`{"grid.spacing": 0.5, ...}`: each override as a top-level W&B config key."""
    import yaml

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
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def define_summaries(loggers) -> None:
    """W&B's run summary of the validation error is its best epoch, not its last one."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers or []:
        if isinstance(logger, WandbLogger):
            for name in ("val/haversine_km", "val/median_km"):
                logger.experiment.define_metric(name, summary="min")


def log_media(loggers, maps: list[Path], predictions) -> None:
    """The run's maps as W&B images and its test predictions as a W&B table."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers or []:
        if not isinstance(logger, WandbLogger):
            continue
        for path in maps:
            logger.log_image(key=f"maps/{Path(path).stem}", images=[str(path)])
        if predictions is not None and len(predictions):
            logger.log_table(key="test/predictions", dataframe=predictions)


def finish(loggers) -> None:
    """End the W&B run of this job (a multirun's next job must start a new one) and say once
    where an offline run lies and how to upload it."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers or []:
        if not isinstance(logger, WandbLogger) or logger._experiment is None:
            continue
        import wandb

        run = logger.experiment
        offline = bool(getattr(run.settings, "_offline", False)) or run.settings.mode == "offline"
        folder = Path(run.dir).parent
        wandb.finish()
        if offline:
            print(f"W&B run logged offline in {folder}; upload it with: wandb sync {folder}")
