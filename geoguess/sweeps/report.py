"""Compare the jobs of sweeps: one table and one picture (`python -m geoguess.report`).

A job is a run folder holding `results.json` (or a training run's `.hydra/` without it: a job
that never finished). Its settings are its `.hydra/overrides.yaml`. Jobs are grouped by the data
they trained on, never mixed; within a group, jobs that differ only by `seed` are one row, mean
± standard deviation over the n seeds. Reads files only: works offline.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import yaml

from geoguess.errors import GeoguessError

RESULTS = "results.json"
OPTUNA_RESULTS = "optimization_results.yaml"
SEED = "seed"
OK, FAILED, UNFINISHED = "ok", "failed", "unfinished"
UNKNOWN_DATASET = "unknown"

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
SORT_KEY = "val_haversine_km"
TEST_KEY = "test_haversine_km"


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


@dataclass(frozen=True)
class Study:
    """An Optuna study a job was a trial of (from its `.hydra/hydra.yaml`)."""

    name: str
    storage: str
    database: Path | None  # the SQLite file, when the storage is one


@dataclass
class Group:
    """The jobs of one dataset: their table and the overrides that differ between them."""

    dataset: str
    label: str
    jobs: list[Job]
    swept: list[str]  # overrides that differ between the jobs, `seed` included
    table: pd.DataFrame  # one row per setting: swept values (seed aside), n, metric means/stds


@dataclass
class Trials:
    """A study's trials: `number`, `state` (COMPLETE, FAIL, ...), `value` (km)."""

    frame: pd.DataFrame
    source: str  # "storage": read from its SQLite file; "jobs": rebuilt from the job folders


@dataclass
class Report:
    folders: list[Path]
    jobs: list[Job]
    groups: list[Group]
    studies: dict[Study, Trials]
    # The best trial each Optuna run wrote at its end (<sweep>/optimization_results.yaml).
    optuna_results: dict[Path, dict] = field(default_factory=dict)


# -- finding and reading jobs -------------------------------------------------------------------


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
    hydra = _load_yaml(job_dir / ".hydra" / "hydra.yaml")
    job = ((hydra or {}).get("hydra") or {}).get("job") or {}
    return job.get("name") == "train"


def read_job(job_dir: Path, sweep: Path) -> Job:
    """One job: its overrides, results (or why there are none), dataset and Optuna study."""
    name = "." if job_dir == sweep else str(job_dir.relative_to(sweep))
    overrides = parse_overrides(_load_yaml(job_dir / ".hydra" / "overrides.yaml") or [])
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
        if status == OK and not _is_number(results.get(SORT_KEY)):
            status, error = FAILED, f"no validation error in results.json ({SORT_KEY})"
    dataset, label = _dataset(job_dir, results)
    hydra = _load_yaml(job_dir / ".hydra" / "hydra.yaml", omegaconf=True)
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
    info = ((_load_json(job_dir / "fitted.json") or {}).get("info")) or {}
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


def _choices(hydra) -> dict:
    """The job's config group choices from its loaded `hydra.yaml` ({} when unreadable)."""
    if hydra is None:
        return {}
    from omegaconf import OmegaConf

    try:
        choices = OmegaConf.select(hydra, "hydra.runtime.choices", default=None)
        return dict(OmegaConf.to_container(choices)) if choices is not None else {}
    except Exception:  # noqa: BLE001 - an unresolvable record: no choices, the job still counts
        return {}


def _study(hydra) -> Study | None:
    """The Optuna study a job's loaded `hydra.yaml` says it was a trial of, if any."""
    if hydra is None:
        return None
    from omegaconf import OmegaConf

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
    from geoguess.sweeps.study import sqlite_path

    database = sqlite_path(storage)
    if database is not None and not database.is_absolute() and cwd:
        database = Path(cwd) / database
    return Study(name=str(name), storage=str(storage), database=database)


def _load_yaml(path: Path, omegaconf: bool = False):
    if not path.is_file():
        return None
    try:
        if omegaconf:
            from omegaconf import OmegaConf

            return OmegaConf.load(path)
        return yaml.safe_load(path.read_text())
    except Exception:  # noqa: BLE001 - a damaged record reads as missing
        return None


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# -- tables -------------------------------------------------------------------------------------


def build_report(folders: Sequence[str | Path]) -> Report:
    jobs = find_jobs(folders)
    if not jobs:
        raise GeoguessError(
            f"no jobs (results.json) under {', '.join(map(str, folders))}; give a sweep's "
            "folder, e.g. sweeps=outputs/train-multirun/<time>"
        )
    groups = []
    for dataset in dict.fromkeys(job.dataset for job in jobs if job.status == OK):
        members = [job for job in jobs if job.status == OK and job.dataset == dataset]
        swept = swept_keys(members)
        members = [with_composed_values(job, swept) for job in members]
        groups.append(
            Group(dataset, members[0].dataset_label, members, swept, table(members, swept))
        )
    studies = {}
    for study in dict.fromkeys(job.study for job in jobs if job.study is not None):
        frame = read_trials(study)
        if frame is not None:
            studies[study] = Trials(frame, "storage")
        else:
            studies[study] = Trials(trials_from_jobs([j for j in jobs if j.study == study]), "jobs")
    optuna_results = {
        path: data
        for folder in folders
        for path in sorted(Path(folder).rglob(OPTUNA_RESULTS))
        if isinstance(data := _load_yaml(path), dict) and "best_value" in data
    }
    return Report([Path(f) for f in folders], jobs, groups, studies, optuna_results)


def with_composed_values(job: Job, keys: Sequence[str]) -> Job:
    """`job` with the swept keys it did not override filled in from what it ran with: a config
    group's choice (`grid` -> `square`), a key's composed value (`grid.spacing` -> `0.5`), or
    "-" when its config has no such key; so a table row never reads as an empty setting."""
    from omegaconf import OmegaConf

    missing = [key for key in keys if key not in job.overrides]
    if not missing:
        return job
    config = OmegaConf.create(_load_yaml(job.folder / ".hydra" / "config.yaml") or {})
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
                float(value) * (100 if key in PERCENT else 1) if _is_number(value) else math.nan
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


def read_trials(study: Study) -> pd.DataFrame | None:
    """The study's trials (number, state, value, params...) from its SQLite file; None when
    the storage is not a local SQLite file (the report never goes on the network)."""
    if study.database is None or not study.database.is_file():
        return None
    import logging

    # Before the import: importing alembic (through optuna's storage) logs seven "setup
    # plugin" lines at INFO.
    logging.getLogger("alembic").setLevel(logging.WARNING)
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


def write_report(report: Report, out: str | Path) -> str:
    """`report.md` and `report.png` into `out` (never over existing files); returns the text."""
    from geoguess.sweeps.figure import plot_report
    from geoguess.utils.io import write_text_atomic

    out = Path(out)
    text = markdown(report, picture="report.png")
    plot_report(report, out / "report.png")
    write_text_atomic(out / "report.md", text)
    return text


# -- markdown -----------------------------------------------------------------------------------


def markdown(report: Report, picture: str | None = "report.png") -> str:
    jobs = report.jobs
    counts = {s: sum(job.status == s for job in jobs) for s in (OK, FAILED, UNFINISHED)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines = [
        "# Sweep report",
        "",
        f"Sweeps: {', '.join(f'`{f}`' for f in report.folders)} — {len(jobs)} jobs ({summary}).",
        "Sorted by validation km (the best epoch's mean haversine error); metrics of the test "
        "split at that epoch; `a ± b`: mean ± standard deviation over the n jobs that differ "
        "only by seed.",
    ]
    if len(report.groups) > 1:
        lines.append(
            f"The jobs trained on {len(report.groups)} different datasets: one table each, "
            "not comparable with each other."
        )
    for group in report.groups:
        lines += ["", f"## Dataset {group.label}: {len(group.jobs)} jobs", ""]
        lines.append(markdown_table(*table_cells(group)))
        notes = no_effect_notes(group)
        lines += ["", *(f"- {note}" for note in notes)] if notes else []
    failed = [job for job in jobs if job.status != OK]
    if failed:
        lines += ["", f"## Failed or unfinished jobs ({len(failed)})", ""]
        rows = [
            [job.name, " ".join(f"{k}={v}" for k, v in job.overrides.items()), _one_line(job.error)]
            for job in failed
        ]
        lines.append(markdown_table(["job", "overrides", "reason"], rows))
    for study, trials in report.studies.items():
        lines += ["", f"## Optuna study `{study.name}`", "", *study_lines(study, trials)]
    if report.optuna_results:
        lines += ["", "## Best trials reported by the Optuna runs", ""]
        for path, data in report.optuna_results.items():
            params = ", ".join(
                f"{k}={_short(str(v))}" for k, v in (data.get("best_params") or {}).items()
            )
            lines.append(f"- `{path}`: {data['best_value']:.1f} km ({params})")
    if picture:
        lines += ["", f"![km against each swept setting]({picture})"]
    return "\n".join(lines) + "\n"


def table_cells(group: Group) -> tuple[list[str], list[list[str]]]:
    settings = [key for key in group.swept if key != SEED]
    metrics = [
        (key, title, fmt)
        for key, title, fmt in METRICS
        if group.table[key].notna().any() or key not in OPTIONAL
    ]
    header = [*settings, "n", *(title for _, title, _ in metrics), "jobs"]
    rows = []
    for _, row in group.table.iterrows():
        cells = [_short(row[key]) for key in settings] + [str(int(row["n"]))]
        for key, _, fmt in metrics:
            cells.append(_cell(row[key], row[f"{key}_std"], fmt))
        rows.append([*cells, row["jobs"]])
    return header, rows


def no_effect_notes(group: Group) -> list[str]:
    """Rows whose jobs gave identical validation and test km, seed by seed: the settings that
    differ between those rows changed nothing (e.g. `grid.spacing` under `head=regression`).
    Training is deterministic per seed, so equal floats mean the same run, not a coincidence."""
    settings = [key for key in group.swept if key != SEED]
    rows: dict[tuple, list[Job]] = {}
    for job in group.jobs:
        rows.setdefault(tuple(job.overrides.get(key, "") for key in settings), []).append(job)
    same: dict[tuple, list[tuple]] = {}
    for setting, jobs in rows.items():
        outcome = sorted(
            (job.overrides.get(SEED, ""), job.results.get(SORT_KEY), job.results.get(TEST_KEY))
            for job in jobs
        )
        if all(_is_number(v) and _is_number(t) for _, v, t in outcome):
            same.setdefault(tuple(outcome), []).append(setting)
    notes = []
    for identical in (found for found in same.values() if len(found) > 1):
        differ = [i for i, key in enumerate(settings) if len({s[i] for s in identical}) > 1]
        shared = [i for i in range(len(settings)) if i not in differ]
        values = " / ".join(
            ", ".join(f"{settings[i]}={_short(setting[i])}" for i in differ)
            for setting in identical
        )
        where = ", ".join(f"{settings[i]}={_short(identical[0][i])}" for i in shared)
        jobs = " = ".join(", ".join(job.name for job in rows[setting]) for setting in identical)
        notes.append(
            f"No effect: {values}"
            + (f" (with {where})" if where else "")
            + f" gave identical validation and test km, seed by seed (jobs {jobs})."
        )
    return notes


def _cell(mean: float, std: float, fmt: str) -> str:
    if math.isnan(mean):
        return "n/a"
    if fmt == "{:.0f}" and 0 < abs(mean) < 10 and mean != round(mean):
        fmt = "{:.2f}"  # a few seconds of training: 0.04 s, not 0
    if math.isnan(std):
        return fmt.format(mean)
    return f"{fmt.format(mean)} ± {fmt.format(std)}"


def _short(value: str) -> str:
    """An override value, numbers shortened to 4 significant digits (Optuna's 0.001234567...)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    text = f"{number:.4g}"
    return text if len(text) < len(str(value)) else str(value)


def _one_line(text: str | None) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= 300 else text[:297] + "..."


def study_lines(study: Study, trials: Trials) -> list[str]:
    lines = [f"Storage `{study.storage}`."]
    if trials.source != "storage":
        where = study.database or "a database server (the report stays offline)"
        lines.append(f"Not read from {where}: the history below is the jobs found here.")
    trials = trials.frame
    states = trials["state"].value_counts()
    lines.append(
        f"{len(trials)} trials: "
        + ", ".join(f"{n} {state_name(state)}" for state, n in states.items())
        + "."
    )
    done = trials[trials["state"] == "COMPLETE"].dropna(subset=["value"])
    if len(done):
        best = done.loc[done["value"].idxmin()]
        params = ", ".join(
            f"{column[len('params_') :]}={_short(str(best[column]))}"
            for column in trials.columns
            if column.startswith("params_")
        )
        lines.append(
            f"Best: trial {int(best['number'])}, {best['value']:.1f} km"
            + (f" ({params})." if params else ".")
        )
    return lines


def state_name(state) -> str:
    """An Optuna trial state as a word: COMPLETE -> complete, FAIL -> failed."""
    text = str(state).rsplit(".", 1)[-1].lower()
    return {"fail": "failed"}.get(text, text)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A pipe table with padded columns, readable as text too; numbers right-aligned."""
    cells = [[str(c).replace("|", "\\|") for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [all(_numeric_cell(row[i]) for row in cells[1:]) and rows for i in range(len(header))]

    def line(row):
        return (
            "| "
            + " | ".join(
                c.rjust(w) if num else c.ljust(w)
                for c, w, num in zip(row, widths, numeric, strict=True)
            )
            + " |"
        )

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else ("-" * (w + 2))
            for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def _numeric_cell(text: str) -> bool:
    head = text.split(" ± ")[0]
    try:
        float(head)
    except ValueError:
        return text == "n/a"
    return True
