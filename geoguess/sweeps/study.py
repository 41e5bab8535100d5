"""`hparams_search=optuna`: failed jobs become failed trials, and the study's storage is found.

hydra-optuna-sweeper 1.3 with optuna 2.10 tells a trial's returned value to the study as it is;
optuna refuses a NaN there, and the sweeper's own fallback (telling the trial FAILED) passes the
NaN again and raises: the whole sweep ends with a traceback and its trials stay RUNNING in the
storage. A job that raised is handled well (a FAILED trial). `FailedTrials`, a Hydra callback
set by conf/hparams_search/optuna.yaml, therefore turns a job that returned no finite number
into a job that raised, with the reason its `results.json` gives.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"


class TrialFailed(Exception):
    """A sweep job that ended without a finite value to minimise."""


def sqlite_path(storage: Any) -> Path | None:
    """The database file of an `sqlite:///PATH` storage URL (relative to the working
    directory, or absolute as `sqlite:////abs/path`); None for other storages."""
    if not isinstance(storage, str) or not storage.startswith(SQLITE_PREFIX):
        return None
    path = storage[len(SQLITE_PREFIX) :].split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return Path(path)


def failure_reason(job_dir: Path, value: Any) -> str:
    """Why a job gave no value: its `results.json` error when it wrote one."""
    try:
        results = json.loads((job_dir / "results.json").read_text())
    except (OSError, ValueError):
        results = {}
    error = results.get("error") if isinstance(results, dict) else None
    return str(error) if error else f"the job returned {value!r}, not a number of km"


def is_finite_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def mark_failed(job_return: JobReturn, job_dir: Path) -> bool:
    """Turn a completed job whose value is not a finite number into a failed one; True if so."""
    if job_return.status != JobStatus.COMPLETED:
        return False
    value = job_return.return_value
    if is_finite_number(value):
        return False
    job_return.status = JobStatus.FAILED
    job_return.return_value = TrialFailed(failure_reason(job_dir, value))
    return True


class FailedTrials(Callback):
    """Hydra callback for Optuna sweeps (see the module's docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Alembic (optuna's schema migrations) logs seven "setup plugin" lines at INFO.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        # optuna opens the SQLite file before Hydra creates any folder.
        path = sqlite_path(OmegaConf.select(config, "hydra.sweeper.storage", default=None))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        job_dir = Path(config.hydra.runtime.output_dir)
        if mark_failed(job_return, job_dir):
            log.warning("job %s failed: %s", config.hydra.job.num, job_return._return_value)
