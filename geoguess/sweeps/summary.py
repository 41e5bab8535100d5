"""Everything a sweep report shows, read from the sweep folders: `build_report(folders)`.

`geoguess.sweeps.markdown` writes it as text (report.md), `geoguess.sweeps.figure` draws it
(report.png), and `python -m geoguess.report` writes both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geoguess.errors import GeoguessError
from geoguess.sweeps.jobs import OPTUNA_RESULTS, Job, Study, find_jobs, load_yaml
from geoguess.sweeps.table import Group, group_jobs
from geoguess.sweeps.trials import Trials, study_trials


@dataclass
class Report:
    folders: list[Path]
    jobs: list[Job]
    groups: list[Group]
    studies: dict[Study, Trials]
    # The best trial each Optuna run wrote at its end (<sweep>/optimization_results.yaml).
    optuna_results: dict[Path, dict] = field(default_factory=dict)


def build_report(folders: Sequence[str | Path]) -> Report:
    """The jobs under the folders, their tables per dataset and their Optuna studies."""
    jobs = find_jobs(folders)
    if not jobs:
        raise GeoguessError(
            f"no jobs (results.json) under {', '.join(map(str, folders))}; give a sweep's "
            "folder, e.g. sweeps=outputs/train-multirun/<time>"
        )
    studies = {
        study: study_trials(study, jobs)
        for study in dict.fromkeys(job.study for job in jobs if job.study is not None)
    }
    optuna_results = {
        path: data
        for folder in folders
        for path in sorted(Path(folder).rglob(OPTUNA_RESULTS))
        if isinstance(data := load_yaml(path), dict) and "best_value" in data
    }
    return Report([Path(f) for f in folders], jobs, group_jobs(jobs), studies, optuna_results)
