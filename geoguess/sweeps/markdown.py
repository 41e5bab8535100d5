"""`report.md`: a sweep report as Markdown tables, readable as plain text too."""

from __future__ import annotations

import math
from collections.abc import Sequence

from geoguess.sweeps.jobs import FAILED, OK, UNFINISHED, Study
from geoguess.sweeps.summary import Report
from geoguess.sweeps.table import (
    CONSTANT,
    METRICS,
    OPTIONAL,
    Group,
    no_effect_notes,
    settings_of,
    short,
)
from geoguess.sweeps.trials import Trials, state_name


def markdown(report: Report, picture: str | None = "report.png") -> str:
    jobs = report.jobs
    counts = {s: sum(job.status == s for job in jobs) for s in (OK, FAILED, UNFINISHED)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines = [
        "# Sweep report",
        "",
        f"Sweeps: {', '.join(f'`{f}`' for f in report.folders)} — {len(jobs)} jobs ({summary}).",
        "Sorted by validation km (the best epoch's mean haversine error); metrics of the test "
        "split at that epoch; baseline km: the test error of always guessing the training "
        "locations' mean; test ÷ baseline: each job's test km over its baseline km (below 1 "
        "beats it); `a ± b`: mean ± standard deviation over the n jobs that differ only by "
        "seed (or by settings that change only logging or output).",
    ]
    if len(report.groups) > 1:
        lines.append(
            f"The jobs ran on {len(report.groups)} different datasets or splits: one table "
            "each, not comparable with each other."
        )
    for group in report.groups:
        heading = f"## Dataset {group.label}, {group.split.describe()}: {len(group.jobs)} jobs"
        lines += ["", heading, ""]
        lines.append(markdown_table(*table_cells(group)))
        notes = no_effect_notes(group) + output_only_notes(group)
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
                f"{k}={short(str(v))}" for k, v in (data.get("best_params") or {}).items()
            )
            lines.append(f"- `{path}`: {data['best_value']:.1f} km ({params})")
    if picture:
        lines += ["", f"![km against each swept setting]({picture})"]
    return "\n".join(lines) + "\n"


def table_cells(group: Group) -> tuple[list[str], list[list[str]]]:
    settings = settings_of(group)
    metrics = [
        (key, title, fmt)
        for key, title, fmt in METRICS
        if group.table[key].notna().any() or key not in OPTIONAL
    ]
    header = [*settings, "n", *(title for _, title, _ in metrics), "jobs"]
    rows = []
    for _, row in group.table.iterrows():
        cells = [short(row[key]) for key in settings] + [str(int(row["n"]))]
        for key, _, fmt in metrics:
            std = math.nan if key in CONSTANT else row[f"{key}_std"]
            cells.append(_cell(row[key], std, fmt))
        rows.append([*cells, row["jobs"]])
    return header, rows


def output_only_notes(group: Group) -> list[str]:
    if not group.output_only:
        return []
    keys = ", ".join(group.output_only)
    return [
        f"Not swept: {keys} differ between these jobs but change only logging or output; "
        "jobs that differ only by them are repeats of one row."
    ]


def _cell(mean: float, std: float, fmt: str) -> str:
    if math.isnan(mean):
        return "n/a"
    if fmt == "{:.0f}" and 0 < abs(mean) < 10 and mean != round(mean):
        fmt = "{:.2f}"  # a few seconds of training: 0.04 s, not 0
    if math.isnan(std):
        return fmt.format(mean)
    return f"{fmt.format(mean)} ± {fmt.format(std)}"


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
            f"{column[len('params_') :]}={short(str(best[column]))}"
            for column in trials.columns
            if column.startswith("params_")
        )
        lines.append(
            f"Best: trial {int(best['number'])}, {best['value']:.1f} km"
            + (f" ({params})." if params else ".")
        )
    return lines


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
