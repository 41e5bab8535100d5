"""The jobs of one dataset as a table: one row per setting, mean ± std over the seeds.

Jobs are grouped by the data they trained on, never mixed; within a group, jobs that differ
only by `seed` are one row, mean ± standard deviation over the n seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pandas as pd
from omegaconf import OmegaConf

from geoguess.sweeps.jobs import OK, SEED, SORT_KEY, TEST_KEY, Job, is_number, load_yaml

# (results.json key, column title, cell format); the OPTIONAL ones are shown when jobs have them.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("val_haversine_km", "val km", "{:.1f}"),
    ("val_median_km", "val median km", "{:.1f}"),
    ("test_haversine_km", "test km", "{:.1f}"),
    ("test_median_km", "test median km", "{:.1f}"),
    ("test_acc_25km", "acc@25km %", "{:.1f}"),
    ("test_coverage50", "in r50 %", "{:.0f}"),
    ("test_coverage90", "in r90 %", "{:.0f}"),
    ("test_geoguessr_score", "GeoGuessr", "{:.0f}"),
    ("epochs", "epochs", "{:.0f}"),
    ("train_seconds", "train s", "{:.0f}"),
)
PERCENT = {"test_acc_25km", "test_coverage50", "test_coverage90"}
OPTIONAL = {"val_median_km", "test_coverage50", "test_coverage90"}


@dataclass
class Group:
    """The jobs of one dataset: their table and the overrides that differ between them."""

    dataset: str
    label: str
    jobs: list[Job]
    swept: list[str]  # overrides that differ between the jobs, `seed` included
    table: pd.DataFrame  # one row per setting: swept values (seed aside), n, metric means/stds


def group_jobs(jobs: Sequence[Job]) -> list[Group]:
    """The finished jobs, one group per dataset (in order of first appearance)."""
    groups = []
    for dataset in dict.fromkeys(job.dataset for job in jobs if job.status == OK):
        members = [job for job in jobs if job.status == OK and job.dataset == dataset]
        swept = swept_keys(members)
        members = [with_composed_values(job, swept) for job in members]
        groups.append(
            Group(dataset, members[0].dataset_label, members, swept, table(members, swept))
        )
    return groups


def with_composed_values(job: Job, keys: Sequence[str]) -> Job:
    """`job` with the swept keys it did not override filled in from what it ran with: a config
    group's choice (`grid` -> `square`), a key's composed value (`grid.spacing` -> `0.5`), or
    "-" when its config has no such key; so a table row never reads as an empty setting."""
    missing = [key for key in keys if key not in job.overrides]
    if not missing:
        return job
    config = OmegaConf.create(load_yaml(job.folder / ".hydra" / "config.yaml") or {})
    filled = dict(job.overrides)
    for key in missing:
        value = (
            job.choices.get(key)
            if key in job.choices
            else OmegaConf.select(config, key, default=None)
        )
        filled[key] = "-" if value is None or OmegaConf.is_config(value) else str(value)
    return replace(job, overrides=filled)


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """The overrides whose value differs between the jobs (absent counts as a value)."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.overrides))
    return [key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1]


def settings_of(group: Group) -> list[str]:
    """The swept settings that make a table row (every swept key but `seed`)."""
    return [key for key in group.swept if key != SEED]


def table(jobs: Sequence[Job], swept: Sequence[str]) -> pd.DataFrame:
    """One row per setting (the swept values but `seed`), sorted by mean validation km:
    `n`, `jobs`, and `<metric>` / `<metric>_std` for each metric (std NaN when n == 1)."""
    settings = [key for key in swept if key != SEED]
    rows = []
    for job in jobs:
        row = {key: job.overrides.get(key, "") for key in settings}
        row["_job"] = job.name
        for key, *_ in METRICS:
            value = job.results.get(key)
            row[key] = (
                float(value) * (100 if key in PERCENT else 1) if is_number(value) else math.nan
            )
        rows.append(row)
    frame = pd.DataFrame(rows)
    metrics = [key for key, *_ in METRICS]
    if settings:
        grouped = frame.groupby(settings, sort=False, dropna=False)
    else:
        grouped = frame.groupby(lambda _: 0)
    out = grouped[metrics].mean()
    std = grouped[metrics].std(ddof=1).add_suffix("_std")
    out = out.join(std)
    out["n"] = grouped.size()
    out["jobs"] = grouped["_job"].agg(lambda names: ", ".join(names))
    out = out.reset_index(drop=not settings)
    if not settings:
        out = out.drop(columns=["index"], errors="ignore")
    return out.sort_values(SORT_KEY, na_position="last", kind="stable").reset_index(drop=True)


def no_effect_notes(group: Group) -> list[str]:
    """Rows whose jobs gave identical validation and test km, seed by seed: the settings that
    differ between those rows changed nothing (e.g. `grid.spacing` under `head=regression`).
    Training is deterministic per seed, so equal floats mean the same run, not a coincidence."""
    settings = settings_of(group)
    rows: dict[tuple, list[Job]] = {}
    for job in group.jobs:
        rows.setdefault(tuple(job.overrides.get(key, "") for key in settings), []).append(job)
    same: dict[tuple, list[tuple]] = {}
    for setting, jobs in rows.items():
        outcome = sorted(
            (job.overrides.get(SEED, ""), job.results.get(SORT_KEY), job.results.get(TEST_KEY))
            for job in jobs
        )
        if all(is_number(v) and is_number(t) for _, v, t in outcome):
            same.setdefault(tuple(outcome), []).append(setting)
    notes = []
    for identical in (found for found in same.values() if len(found) > 1):
        differ = [i for i, key in enumerate(settings) if len({s[i] for s in identical}) > 1]
        shared = [i for i in range(len(settings)) if i not in differ]
        values = " / ".join(
            ", ".join(f"{settings[i]}={short(setting[i])}" for i in differ) for setting in identical
        )
        where = ", ".join(f"{settings[i]}={short(identical[0][i])}" for i in shared)
        jobs = " = ".join(", ".join(job.name for job in rows[setting]) for setting in identical)
        notes.append(
            f"No effect: {values}"
            + (f" (with {where})" if where else "")
            + f" gave identical validation and test km, seed by seed (jobs {jobs})."
        )
    return notes


def short(value: str) -> str:
    """An override value, numbers shortened to 4 significant digits (Optuna's 0.001234567...)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    text = f"{number:.4g}"
    return text if len(text) < len(str(value)) else str(value)
