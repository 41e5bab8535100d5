"""An Optuna study's trials, from its SQLite file or rebuilt from the jobs found."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from geoguess.sweeps.jobs import OK, SORT_KEY, Job, Study


@dataclass
class Trials:
    """A study's trials: `number`, `state` (COMPLETE, FAIL, ...), `value` (km)."""

    frame: pd.DataFrame
    source: str  # "storage": read from its SQLite file; "jobs": rebuilt from the job folders


def study_trials(study: Study, jobs: Sequence[Job]) -> Trials:
    """The study's trials from its storage when it is a local SQLite file, else its jobs'."""
    frame = read_trials(study)
    if frame is not None:
        return Trials(frame, "storage")
    return Trials(trials_from_jobs([job for job in jobs if job.study == study]), "jobs")


def read_trials(study: Study) -> pd.DataFrame | None:
    """The study's trials (number, state, value, params...) from its SQLite file; None when
    the storage is not a local SQLite file (the report never goes on the network)."""
    if study.database is None or not study.database.is_file():
        return None
    # Before the import: importing alembic (through optuna's storage) logs seven "setup
    # plugin" lines at INFO.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Imported here, not at the top: optuna (and SQLAlchemy under it) take long to import and
    # only a report over an Optuna study with a SQLite file needs them.
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    try:
        loaded = optuna.load_study(study_name=study.name, storage=f"sqlite:///{study.database}")
    except Exception:  # noqa: BLE001 - e.g. no such study in that file
        return None
    return loaded.trials_dataframe(attrs=("number", "state", "value", "params"))


def trials_from_jobs(jobs: Sequence[Job]) -> pd.DataFrame:
    """A study's history as its job folders tell it (in job order), when its storage is not a
    local SQLite file."""
    return pd.DataFrame(
        {
            "number": range(len(jobs)),
            "state": ["COMPLETE" if job.status == OK else "FAIL" for job in jobs],
            "value": [job.results.get(SORT_KEY) if job.status == OK else math.nan for job in jobs],
        }
    )


def state_name(state) -> str:
    """An Optuna trial state as a word: COMPLETE -> complete, FAIL -> failed."""
    text = str(state).rsplit(".", 1)[-1].lower()
    return {"fail": "failed"}.get(text, text)
