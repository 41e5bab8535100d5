"""`report.png`: km against each swept setting, and an Optuna study's history.

A numeric setting's values are joined by lines (what lies between them is a value too); a
categorical one's are points side by side, never joined: no order leads from one to the next.
The baseline (always guessing the training locations' mean) is a horizontal line."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from geoguess.sweeps.jobs import BASELINE_KEY, Study  # noqa: E402
from geoguess.sweeps.summary import Report  # noqa: E402
from geoguess.sweeps.table import Group, settings_of  # noqa: E402
from geoguess.sweeps.trials import Trials, state_name  # noqa: E402
from geoguess.utils.io import atomic_write  # noqa: E402

# Beyond this many lines in one panel, points are drawn without lines or legend (an Optuna
# search, where every trial is its own setting).
MAX_LINES = 8
VAL, TEST = "val_haversine_km", "test_haversine_km"


def plot_report(report: Report, path: str | Path, overwrite: bool = False) -> None:
    """`report_figure` saved as a PNG file (never over an existing one unless `overwrite`)."""
    fig = report_figure(report)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), overwrite=overwrite)
    plt.close(fig)


def report_figure(report: Report) -> Figure:
    """One row per dataset and split (a panel per swept setting), then one row per Optuna
    study."""
    rows = [(group, settings_of(group)) for group in report.groups]
    ncols = max([len(settings) for _, settings in rows] + [1])
    nrows = len(rows) + len(report.studies)
    fig = plt.figure(figsize=(max(5.0 * ncols, 8.0), 4.2 * max(nrows, 1)), layout="constrained")
    grid = fig.add_gridspec(max(nrows, 1), ncols)
    for row, (group, settings) in enumerate(rows):
        title = _group_title(group) if len(rows) > 1 else ""
        for col, setting in enumerate(settings or [None]):
            ax = fig.add_subplot(grid[row, col])
            _plot_setting(ax, group, setting, settings, title)
    for row, (study, trials) in enumerate(report.studies.items(), start=len(rows)):
        _plot_history(fig.add_subplot(grid[row, :]), study, trials)
    ok = sum(len(group.jobs) for group in report.groups)
    folders = ", ".join(str(folder) for folder in report.folders)
    fig.suptitle(f"{folders}: {ok} of {len(report.jobs)} jobs finished", fontsize=10)
    if not nrows:
        ax = fig.add_subplot(grid[0, 0])
        ax.text(0.5, 0.5, "no finished jobs", ha="center", va="center")
        ax.set_axis_off()
    return fig


def _group_title(group: Group) -> str:
    test = "" if group.split.test is None else f", test split of {group.split.test}"
    return f"dataset {group.dataset[:12]}{test}: "


def _plot_setting(ax, group: Group, setting: str | None, settings: list[str], title: str) -> None:
    table = group.table
    baseline = _plot_baseline(ax, table)
    if setting is None:  # every job has the same settings: only seeds (or nothing) differ
        _plot_one_setting(ax, table, title, baseline)
        return
    others = [key for key in settings if key != setting]
    positions, labels, numeric = _positions(table[setting])
    lines = list(table.groupby(others, sort=True)) if others else [((), table)]
    # An Optuna search's trials are points, not a curve: one trial does not lead to the next.
    search = any(job.study is not None for job in group.jobs)
    if search or len(lines) > MAX_LINES:
        for metric, marker, face in ((VAL, "o", "C0"), (TEST, "s", "none")):
            x = [positions[v] for v in table[setting]]
            std = _std(table, metric)
            ax.errorbar(
                x,
                table[metric],
                yerr=std if std.any() else None,  # one trial each: no bars, no caps
                fmt=marker,
                color="C0",
                markerfacecolor=face,
                capsize=2,
                alpha=0.8,
                linestyle="none",
            )
        handles = _style_handles(_seeds(table), lines=False)
    else:
        handles = []
        # Lines (and their validation/test points) side by side, not hiding each other's bars.
        step = _dodge_step(list(positions.values()), numeric, 2 * len(lines))
        for index, (key, rows) in enumerate(lines):
            color = f"C{index % 10}"
            rows = rows.assign(_x=[positions[v] for v in rows[setting]]).sort_values("_x")
            offset = (2 * index - (2 * len(lines) - 1) / 2) * step
            _errorbar(ax, rows["_x"] + offset, rows, color, step, joined=numeric)
            if others:
                values = key if isinstance(key, tuple) else (key,)
                label = ", ".join(f"{k}={v}" for k, v in zip(others, values, strict=True))
                style = "-" if numeric else "none"
                handles.append(
                    Line2D([], [], color=color, marker="o", linestyle=style, label=label)
                )
        handles += _style_handles(_seeds(table), lines=numeric)
    handles += baseline
    if numeric:
        values = sorted(positions.values())
        if values[0] > 0 and values[-1] / values[0] >= 20:
            ax.set_xscale("log")
        elif not search and _few_and_apart(values):
            ax.set_xticks(values, [_short_number(v) for v in values])
    else:
        ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 3 else 0)
        ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_xlabel(setting)
    ax.set_ylabel("mean error (km)")
    ax.set_title(f"{title}km against {setting}")
    ax.grid(alpha=0.3)
    # Below the panel: inside, "best" still lands on lines when they fill the panel's height.
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)


def _plot_one_setting(ax, table: pd.DataFrame, title: str, baseline: list[Line2D]) -> None:
    """Validation and test km of the one row, side by side."""
    row = table.iloc[0]
    for x, metric in enumerate((VAL, TEST)):
        std = row[f"{metric}_std"]
        ax.errorbar(
            [x],
            [row[metric]],
            yerr=[0.0 if math.isnan(std) else std],
            color="C0",
            marker="o" if metric == VAL else "s",
            capsize=3,
        )
    ax.set_xticks([0, 1], ["validation", "test"])
    ax.set_xlim(-0.5, 1.5)
    ax.set_ylabel("mean error (km)")
    ax.set_title(f"{title}one setting, n={int(table['n'].iloc[0])}")
    ax.grid(alpha=0.3)
    if baseline:
        ax.legend(handles=baseline, fontsize=8, loc="best")


def _positions(values: pd.Series) -> tuple[dict[str, float], list[str], bool]:
    """x of each value: the number itself, or the rank of a category."""
    unique = list(dict.fromkeys(values))
    try:
        return {v: float(v) for v in unique}, unique, True
    except (TypeError, ValueError):
        labels = sorted(unique, key=str)
        return {v: float(i) for i, v in enumerate(labels)}, labels, False


def _few_and_apart(values: list[float]) -> bool:
    """Values that label the x axis legibly: a handful, none too close to another."""
    span = values[-1] - values[0]
    gaps = np.diff(values)
    return len(values) <= 6 and (span == 0 or gaps.min(initial=span) >= 0.15 * span)


def _short_number(value: float) -> str:
    return f"{value:.4g}"


def _std(rows: pd.DataFrame, metric: str) -> np.ndarray:
    return rows[f"{metric}_std"].fillna(0.0).to_numpy()


def _dodge_step(positions: list[float], numeric: bool, series: int) -> float:
    """The shift between side-by-side series: together they span a fifth of the gap between
    neighbouring x values (none on a log axis)."""
    values = sorted(set(positions))
    if numeric and values[0] > 0 and values[-1] / values[0] >= 20:
        return 0.0
    gaps = np.diff(values) if len(values) > 1 else np.array([1.0])
    return 0.2 * float(gaps.min()) / max(series, 1)


def _plot_baseline(ax, table: pd.DataFrame) -> list[Line2D]:
    """The baseline's test km as a horizontal line (one per value, should the rows' differ);
    returns its legend entry."""
    values = sorted({round(float(v), 6) for v in table[BASELINE_KEY].dropna()})
    for value in values:
        ax.axhline(value, color="0.3", linestyle=":", linewidth=1.5)
    if not values:
        return []
    label = "baseline (training mean), test" + (f": {values[0]:.1f} km" if len(values) == 1 else "")
    return [Line2D([], [], color="0.3", linestyle=":", linewidth=1.5, label=label)]


def _errorbar(
    ax, x, rows: pd.DataFrame, color: str, step: float = 0.0, joined: bool = True
) -> None:
    """Validation km (solid) and test km (dashed, `step` to the right) of `rows` at `x`, bars
    over seeds; points only, no lines, unless `joined`."""
    for metric in (VAL, TEST):
        test = metric == TEST
        style = ("--" if test else "-") if joined else "none"
        ax.errorbar(
            x + step if test else x,
            rows[metric],
            yerr=_std(rows, metric),
            color=color,
            marker="s" if test else "o",
            markerfacecolor="none" if test else color,
            linestyle=style,
            alpha=0.75 if test else 1.0,
            capsize=3,
        )


def _seeds(table: pd.DataFrame) -> str:
    """How many seeds a point is the mean of: "2 seeds", or "1-3 seeds" when it varies."""
    low, high = int(table["n"].min()), int(table["n"].max())
    return f"{low} seed{'s' * (high > 1)}" if low == high else f"{low}-{high} seeds"


def _style_handles(seeds: str, lines: bool = True) -> list[Line2D]:
    """Legend entries for the two metrics' marker and line styles."""
    solid, dashed = ("-", "--") if lines else ("none", "none")
    one = seeds == "1 seed"
    val = "validation (one seed)" if one else f"validation (mean, bars: std over {seeds})"
    return [
        Line2D([], [], color="gray", marker="o", linestyle=solid, label=val),
        Line2D(
            [], [], color="gray", marker="s", markerfacecolor="none", linestyle=dashed, label="test"
        ),
    ]


def _plot_history(ax, study: Study, trials: Trials) -> None:
    frame = trials.frame
    done = frame[(frame["state"] == "COMPLETE") & frame["value"].notna()].sort_values("number")
    failed = frame[frame["state"] == "FAIL"]
    if len(done):
        ax.plot(done["number"], done["value"], "o", color="C0", label="trial (val km)")
        best = done["value"].cummin()
        ax.step(done["number"], best, where="post", color="C1", label="best so far")
    top = ax.get_ylim()[1] if len(done) else 1.0
    if len(failed):
        ax.plot(
            failed["number"],
            [top] * len(failed),
            "x",
            color="red",
            markersize=9,
            label="failed",
            clip_on=False,
        )
    counts = frame["state"].value_counts()
    summary = ", ".join(f"{n} {state_name(state)}" for state, n in counts.items())
    best_text = ""
    if len(done):
        row = done.loc[done["value"].idxmin()]
        best_text = f"; best {row['value']:.1f} km (trial {int(row['number'])})"
    source = "" if trials.source == "storage" else " (from the job folders)"
    ax.set_title(f"Optuna study {study.name}{source}: {len(frame)} trials ({summary}){best_text}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("validation error (km)")
    ax.grid(alpha=0.3)
    if len(frame):
        ax.legend(fontsize=8, loc="upper right")
