"""The jobs of sweeps, read from their folders: settings, results, dataset and Optuna study.

A job is a run folder holding `results.json` (or a training run's `.hydra/` without it: a job
that never finished). Its settings are its `.hydra/overrides.yaml`. Reads files only: works
offline.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import yaml
from omegaconf import OmegaConf

from geoguess.errors import GeoguessError
from geoguess.sweeps.study import sqlite_path

RESULTS = "results.json"
PREDICTIONS_TEST = "predictions_test.csv"
OPTUNA_RESULTS = "optimization_results.yaml"
SEED = "seed"
OK, FAILED, UNFINISHED = "ok", "failed", "unfinished"
UNKNOWN_DATASET = "unknown"
SORT_KEY = "val_haversine_km"
TEST_KEY = "test_haversine_km"
BASELINE_KEY = "baseline_test_haversine_km"
SPLIT_SIZES_KEY = "split_sizes"
SPLITS = ("train", "val", "test")


class SplitSizes(NamedTuple):
    """Locations in each split a job trained, validated and tested on; None where unknown."""

    train: int | None = None
    val: int | None = None
    test: int | None = None

    def describe(self) -> str:
        if None not in self:
            return f"split {self.train} / {self.val} / {self.test} (train / val / test)"
        if self.test is not None:
            return f"test split of {self.test}"
        return "split sizes unknown"


@dataclass(frozen=True)
class Study:
    """An Optuna study a job was a trial of (from its `.hydra/hydra.yaml`)."""

    name: str
    storage: str
    database: Path | None  # the SQLite file, when the storage is one


@dataclass
class Job:
    folder: Path
    name: str  # the folder relative to the sweep folder it was found under
    overrides: dict[str, str]
    status: str
    error: str | None = None
    results: dict = field(default_factory=dict)
    dataset: str = UNKNOWN_DATASET
    dataset_label: str = UNKNOWN_DATASET
    study: Study | None = None
    # The config groups it ran with (`hydra.runtime.choices`: `grid` -> `square`).
    choices: dict = field(default_factory=dict)
    split: SplitSizes = SplitSizes()


def find_jobs(folders: Iterable[str | Path]) -> list[Job]:
    """Every job under the folders (each folder itself may be one), in folder order."""
    jobs: dict[Path, Job] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise GeoguessError(f"sweeps: {folder} is not a folder")
        for job_dir in _job_dirs(folder):
            key = job_dir.resolve()
            if key not in jobs:
                jobs[key] = read_job(job_dir, folder)
    return list(jobs.values())


def _job_dirs(folder: Path) -> list[Path]:
    found = {path.parent for path in folder.rglob(RESULTS)}
    for overrides in folder.rglob(".hydra/overrides.yaml"):
        job_dir = overrides.parent.parent
        if job_dir not in found and _is_training_job(job_dir):
            found.add(job_dir)
    return sorted(found, key=_natural_key)


def _natural_key(path: Path) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def _is_training_job(job_dir: Path) -> bool:
    """A run folder of `geoguess.train` (not of another command, nor the report's own)."""
    hydra = load_yaml(job_dir / ".hydra" / "hydra.yaml")
    job = ((hydra or {}).get("hydra") or {}).get("job") or {}
    return job.get("name") == "train"


def read_job(job_dir: Path, sweep: Path) -> Job:
    """One job: its overrides, results (or why there are none), dataset and Optuna study."""
    name = "." if job_dir == sweep else str(job_dir.relative_to(sweep))
    overrides = parse_overrides(load_yaml(job_dir / ".hydra" / "overrides.yaml") or [])
    path = job_dir / RESULTS
    if not path.is_file():
        status, error, results = UNFINISHED, "no results.json (running, killed or crashed)", {}
    else:
        try:
            results = json.loads(path.read_text())
        except ValueError as exc:
            raise GeoguessError(f"{path} is not valid JSON ({exc})") from None
        if not isinstance(results, dict):
            raise GeoguessError(f"{path} holds {type(results).__name__}, not a JSON object")
        status = results.get("status", OK)
        error = results.get("error") if status != OK else None
        if status == OK and not is_number(results.get(SORT_KEY)):
            status, error = FAILED, f"no validation error in results.json ({SORT_KEY})"
    dataset, label = _dataset(job_dir, results)
    hydra = load_yaml(job_dir / ".hydra" / "hydra.yaml", omegaconf=True)
    return Job(
        folder=job_dir,
        name=name,
        overrides=overrides,
        status=status if status in (OK, FAILED, UNFINISHED) else FAILED,
        error=error,
        results=results,
        dataset=dataset,
        dataset_label=label,
        study=_study(hydra),
        choices=_choices(hydra),
        split=split_sizes(job_dir, results),
    )


def parse_overrides(lines: Sequence[str]) -> dict[str, str]:
    """`["grid.spacing=0.5", "+x=1", "~y"]` -> `{"grid.spacing": "0.5", "x": "1", "y": "~"}`;
    Hydra's own settings (`hydra.*`) are left out: they are not the job's."""
    overrides = {}
    for line in lines:
        key, sep, value = str(line).partition("=")
        if key.startswith("~"):
            key, value = key[1:], "~"
        key = key.lstrip("+")
        if key.startswith("hydra.") or key.startswith("hydra/") or not (sep or value):
            continue
        overrides[key] = value
    return overrides


def _dataset(job_dir: Path, results: dict) -> tuple[str, str]:
    """The data's identity: results.json `dataset`, else fitted.json's dataset key or roots."""
    info = ((load_json(job_dir / "fitted.json") or {}).get("info")) or {}
    roots = info.get("roots") or []
    given = results.get("dataset")
    if given:
        dataset = given if isinstance(given, str) else json.dumps(given, sort_keys=True)
    elif info.get("dataset_key"):
        dataset = str(info["dataset_key"])
    elif roots:
        dataset = ", ".join(map(str, roots))
    else:
        return UNKNOWN_DATASET, UNKNOWN_DATASET
    short = dataset[:12] if len(dataset) == 64 and dataset.isalnum() else dataset
    label = (
        f"{short} ({', '.join(map(str, roots))})" if roots and short != ", ".join(roots) else short
    )
    return dataset, label


def split_sizes(job_dir: Path, results: dict) -> SplitSizes:
    """results.json `split_sizes` ({train, val, test}) when it holds them; else the test size
    alone, counted from the rows of predictions_test.csv (None when there is none)."""
    given = results.get(SPLIT_SIZES_KEY)
    if isinstance(given, dict) and all(_is_count(given.get(name)) for name in SPLITS):
        return SplitSizes(*(int(given[name]) for name in SPLITS))
    return SplitSizes(test=_count_rows(job_dir / PREDICTIONS_TEST))


def _count_rows(path: Path) -> int | None:
    """Data rows of a CSV file (its header aside), or None when it is missing or unreadable."""
    try:
        with path.open(newline="") as file:
            return max(sum(1 for _ in csv.reader(file)) - 1, 0)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _choices(hydra) -> dict:
    """The job's config group choices from its loaded `hydra.yaml` ({} when unreadable)."""
    if hydra is None:
        return {}
    try:
        choices = OmegaConf.select(hydra, "hydra.runtime.choices", default=None)
        return dict(OmegaConf.to_container(choices)) if choices is not None else {}
    except Exception:  # noqa: BLE001 - an unresolvable record: no choices, the job still counts
        return {}


def _study(hydra) -> Study | None:
    """The Optuna study a job's loaded `hydra.yaml` says it was a trial of, if any."""
    if hydra is None:
        return None
    try:
        target = OmegaConf.select(hydra, "hydra.sweeper._target_", default="") or ""
        if "optuna" not in str(target).lower():
            return None
        storage = OmegaConf.select(hydra, "hydra.sweeper.storage", default=None)
        name = OmegaConf.select(hydra, "hydra.sweeper.study_name", default=None)
        cwd = OmegaConf.select(hydra, "hydra.runtime.cwd", default=None)
    except Exception:  # noqa: BLE001 - an unresolvable record: no study, the jobs still count
        return None
    if not storage or not name:
        return None
    database = sqlite_path(storage)
    if database is not None and not database.is_absolute() and cwd:
        database = Path(cwd) / database
    return Study(name=str(name), storage=str(storage), database=database)


def load_yaml(path: Path, omegaconf: bool = False):
    """The YAML file's content (an OmegaConf object when `omegaconf`), or None when the file is
    missing or damaged."""
    if not path.is_file():
        return None
    try:
        if omegaconf:
            return OmegaConf.load(path)
        return yaml.safe_load(path.read_text())
    except Exception:  # noqa: BLE001 - a damaged record reads as missing
        return None


def load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
