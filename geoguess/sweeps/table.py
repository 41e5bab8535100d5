"""The jobs of one dataset and split as a table: one row per setting, mean ± std over the seeds.

Jobs are grouped by the data they trained on and the sizes of its splits, never mixed: errors
on other test locations are not comparable. Within a group, jobs that differ only by `seed`
(or by settings that change only logging or output) are one row, mean ± standard deviation
over the n seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase

import pandas as pd
from omegaconf import OmegaConf

from geoguess.sweeps.jobs import (
    BASELINE_KEY,
    OK,
    SEED,
    SORT_KEY,
    TEST_KEY,
    Job,
    SplitSizes,
    is_number,
    load_yaml,
)

# Computed per job, not read from results.json.
RATIO_KEY = "test_baseline_ratio"  # test km / baseline km
TEST_SIZE_KEY = "test_size"  # locations in the test split
# (key, column title, cell format); the OPTIONAL ones are shown when jobs have them.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("val_haversine_km", "val km", "{:.1f}"),
    ("val_median_km", "val median km", "{:.1f}"),
    (TEST_KEY, "test km", "{:.1f}"),
    (BASELINE_KEY, "baseline km", "{:.1f}"),
    (RATIO_KEY, "test ÷ baseline", "{:.2f}"),
    ("test_median_km", "test median km", "{:.1f}"),
    ("test_acc_25km", "acc@25km %", "{:.1f}"),
    ("test_coverage50", "in r50 %", "{:.0f}"),
    ("test_coverage90", "in r90 %", "{:.0f}"),
    ("test_geoguessr_score", "GeoGuessr", "{:.0f}"),
    (TEST_SIZE_KEY, "test size", "{:.0f}"),
    ("epochs", "epochs", "{:.0f}"),
    ("train_seconds", "train s", "{:.0f}"),
)
PERCENT = {"test_acc_25km", "test_coverage50", "test_coverage90"}
OPTIONAL = {"val_median_km", "test_coverage50", "test_coverage90"}
# The same for every job of a group (its split): shown without a spread.
CONSTANT = {TEST_SIZE_KEY}
# Settings that change only what a job logs or writes, never what it trains or tests: jobs
# that differ only by them are repeats of one setting, not points of a sweep. (Not every
# callback: early stopping or the checkpoint's monitor change the result.)
OUTPUT_ONLY = (
    "logger",
    "logger.*",
    "callbacks.progress_bar",
    "callbacks.progress_bar.*",
    "callbacks.lr_monitor",
    "callbacks.lr_monitor.*",
    "callbacks.last_checkpoint",
    "callbacks.last_checkpoint.*",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "data.num_workers",
    "data.cache_dir",
    "hydra.*",
    "hydra/*",
)


@dataclass
class Group:
    """The jobs of one dataset and split: their table and the overrides that differ."""

    dataset: str
    label: str
    split: SplitSizes
    jobs: list[Job]
    swept: list[str]  # overrides that differ between the jobs, `seed` included
    table: pd.DataFrame  # one row per setting: swept values (seed aside), n, metric means/stds
    # Overrides that differ between the jobs but change only logging or output: not swept.
    output_only: list[str] = field(default_factory=list)


def group_jobs(jobs: Sequence[Job]) -> list[Group]:
    """The finished jobs, one group per dataset and split sizes (in order of appearance)."""
    groups = []
    finished = [job for job in jobs if job.status == OK]
    for dataset, split in dict.fromkeys((job.dataset, job.split) for job in finished):
        members = [job for job in finished if (job.dataset, job.split) == (dataset, split)]
        differ = differing_keys(members)
        swept = [key for key in differ if not is_output_only(key)]
        members = [with_composed_values(job, swept) for job in members]
        groups.append(
            Group(
                dataset,
                members[0].dataset_label,
                split,
                members,
                swept,
                table(members, swept),
                output_only=[key for key in differ if is_output_only(key)],
            )
        )
    return groups


def is_output_only(key: str) -> bool:
    """Whether the setting `key` changes only what a job logs or writes (`OUTPUT_ONLY`)."""
    return any(fnmatchcase(key, pattern) for pattern in OUTPUT_ONLY)


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


def differing_keys(jobs: Sequence[Job]) -> list[str]:
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
        row.update(job_values(job))
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


def job_values(job: Job) -> dict[str, float]:
    """The job's value of each metric (NaN where it has none); shares in %."""
    values = {}
    for key, *_ in METRICS:
        value = job.results.get(key)
        values[key] = (
            float(value) * (100 if key in PERCENT else 1) if is_number(value) else math.nan
        )
    test, baseline = values[TEST_KEY], values[BASELINE_KEY]
    values[RATIO_KEY] = test / baseline if baseline > 0 else math.nan
    values[TEST_SIZE_KEY] = math.nan if job.split.test is None else float(job.split.test)
    return values


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
