"""Experiment loggers, built from `conf/logger/*.yaml`.

W&B runs online when the user is logged in and offline otherwise (saying how to upload later);
`WANDB_MODE` in the environment always wins.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from geoguess.errors import GeoguessError

log = logging.getLogger(__name__)


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
    return WandbLogger(
        save_dir=str(save_dir),
        project=project,
        group=group or sweep_name(),
        name=name or job_name(),
        tags=list(tags or []),
        mode=mode,
        job_type=job_type,
    )


def _logged_in() -> bool:
    import wandb

    try:
        return bool(wandb.login(prompt=False, verify=False))
    except Exception:  # noqa: BLE001 - any trouble reading credentials means offline
        return False


def sweep_name() -> str | None:
    """`<command>-<sweep folder>` in a multirun, so the sweep's jobs form one W&B group."""
    from hydra.types import RunMode

    hc = _hydra_config()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return None
    return f"{hc.job.name}-{Path(hc.sweep.dir).name}"


def job_name() -> str | None:
    """The run folder's name (the sweep job's overrides in a multirun)."""
    hc = _hydra_config()
    return Path(hc.runtime.output_dir).name if hc is not None else None


def _hydra_config():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def tensorboard_logger(save_dir: str, name: str = "tensorboard"):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            raise GeoguessError(
                "logger=tensorboard needs the tensorboard package: pip install tensorboard "
                "(or use logger=csv / logger=wandb)"
            ) from None
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(save_dir=str(save_dir), name=name, version="")


def csv_logger(save_dir: str, name: str = "csv"):
    """`<run>/csv/metrics.csv`; a resumed run writes `csv/resumed-<k>/metrics.csv` instead,
    because Lightning's CSV logger would delete the interrupted run's file."""
    from lightning.pytorch.loggers import CSVLogger

    folder = Path(save_dir) / name
    version, k = "", 0
    while (folder / version / "metrics.csv").exists():
        k += 1
        version = f"resumed-{k}"
    return CSVLogger(save_dir=str(save_dir), name=name, version=version)


def finish(loggers) -> None:
    """End the W&B run of this job (a multirun's next job must start a new one) and say where
    an offline run lies and how to upload it."""
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
