"""The sweep report (`geoguess.sweeps`, `python -m geoguess.report`) on fabricated job
folders: every number is checked against one computed here from the fabricated results."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import yaml

from geoguess.errors import GeoguessError
from geoguess.report import write_report
from geoguess.sweeps.figure import report_figure
from geoguess.sweeps.jobs import SplitSizes, parse_overrides
from geoguess.sweeps.markdown import markdown
from geoguess.sweeps.summary import build_report
from tests.cli import run_module

# val/test km of the spacing x head x seed sweep: (spacing, head, seed) -> (val, test)
KM = {
    ("0.5", "classification", "1"): (60.0, 64.0),
    ("0.5", "classification", "2"): (62.0, 65.0),
    ("0.5", "regression", "1"): (80.0, 83.0),
    ("0.5", "regression", "2"): (86.0, 85.0),
    ("0.8", "classification", "1"): (70.0, 71.0),
    ("0.8", "classification", "2"): (71.0, 75.0),
    ("0.8", "regression", "1"): (55.0, 58.0),
    ("0.8", "regression", "2"): (59.0, 60.0),
}


def fake_job(
    folder: Path,
    overrides: list[str],
    results: dict | None,
    *,
    fitted_info: dict | None = None,
    hydra: dict | None = None,
) -> Path:
    """A job folder as a training job leaves it: .hydra records, results.json, fitted.json."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    record = {"hydra": {"job": {"name": "train"}, **(hydra or {})}}
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(record))
    if results is not None:
        (folder / "results.json").write_text(json.dumps(results))
    if fitted_info is not None:
        (folder / "fitted.json").write_text(json.dumps({"info": fitted_info}))
    return folder


def ok_results(val: float, test: float, dataset: str | None = "d1", **extra) -> dict:
    results = {
        "status": "ok",
        "val_haversine_km": val,
        "test_haversine_km": test,
        "test_median_km": test - 10,
        "test_acc_1km": 0.0,
        "test_acc_25km": 0.25,
        "test_acc_100km": 0.9,
        "test_geoguessr_score": 3000.0,
        "baseline_test_haversine_km": 130.0,
        "num_classes": 40,
        "best_checkpoint": "/x/best.ckpt",
        "epochs": 3,
        "train_seconds": 12.0,
        **extra,
    }
    if dataset is not None:
        results["dataset"] = dataset
    return results


@pytest.fixture
def spacing_sweep(tmp_path: Path) -> Path:
    """8 jobs (2 spacings x 2 heads x 2 seeds), one failed job and one that never finished."""
    sweep = tmp_path / "sweep"
    for num, ((spacing, head, seed), (val, test)) in enumerate(KM.items()):
        overrides = ["experiment=smoke", f"grid.spacing={spacing}", f"head={head}", f"seed={seed}"]
        fake_job(sweep / str(num), overrides, ok_results(val, test))
    fake_job(
        sweep / "8",
        ["experiment=smoke", "grid.spacing=0.3", "head=classification", "seed=1"],
        {"status": "failed", "error": "loss is NaN at epoch 2 (optimizer.lr=1e12)"},
    )
    fake_job(
        sweep / "9", ["experiment=smoke", "grid.spacing=0.3", "head=regression", "seed=1"], None
    )
    return sweep


def test_parse_overrides_keeps_the_jobs_settings_only():
    lines = ["grid.spacing=0.5", "+trainer.foo=1", "~logger", "hydra.run.dir=x", "image='64'"]
    assert parse_overrides(lines) == {
        "grid.spacing": "0.5",
        "trainer.foo": "1",
        "logger": "~",
        "image": "'64'",
    }


def test_seeds_are_aggregated_sorted_by_validation_km(spacing_sweep: Path):
    report = build_report([spacing_sweep])

    assert [job.status for job in report.jobs].count("ok") == 8
    (group,) = report.groups
    # experiment=smoke is the same in every job: not a column; seed is aggregated away.
    assert group.swept == ["grid.spacing", "head", "seed"]
    table = group.table
    assert list(table["n"]) == [2, 2, 2, 2]
    expected = {}
    for spacing, head in {(s, h) for s, h, _ in KM}:
        vals = [KM[(spacing, head, seed)][0] for seed in ("1", "2")]
        tests = [KM[(spacing, head, seed)][1] for seed in ("1", "2")]
        expected[(spacing, head)] = (
            statistics.mean(vals),
            statistics.stdev(vals),
            statistics.mean(tests),
            statistics.stdev(tests),
        )
    order = sorted(expected, key=lambda key: expected[key][0])
    assert list(zip(table["grid.spacing"], table["head"], strict=True)) == order
    for _, row in table.iterrows():
        val, val_std, test, test_std = expected[(row["grid.spacing"], row["head"])]
        assert row["val_haversine_km"] == pytest.approx(val)
        assert row["val_haversine_km_std"] == pytest.approx(val_std)
        assert row["test_haversine_km"] == pytest.approx(test)
        assert row["test_haversine_km_std"] == pytest.approx(test_std)
        assert row["test_acc_25km"] == pytest.approx(25.0)  # a share, shown in %

    text = markdown(report)
    cells = [f"{expected[key][0]:.1f} ± {expected[key][1]:.1f}" for key in order]
    assert cells[0] == "57.0 ± 2.8"  # 0.8 / regression
    assert [text.index(cell) for cell in cells] == sorted(text.index(cell) for cell in cells)
    # The failed and the unfinished job are listed with their reason, not in the table.
    assert "loss is NaN at epoch 2 (optimizer.lr=1e12)" in text
    assert "no results.json" in text
    assert "grid.spacing=0.3 head=regression" in text
    assert set(table["grid.spacing"]) == {"0.5", "0.8"}


def test_settings_that_changed_nothing_are_named(spacing_sweep: Path, tmp_path: Path):
    # The spacing sweep's rows all differ: no note.
    assert "No effect" not in markdown(build_report([spacing_sweep]))
    # head=regression ignores grid.spacing: its jobs give the same km seed by seed.
    sweep = tmp_path / "regression"
    km = {("0.5", "1"): 80.5, ("0.5", "2"): 84.25, ("0.8", "1"): 80.5, ("0.8", "2"): 84.25}
    for num, ((spacing, seed), val) in enumerate(km.items()):
        overrides = [f"grid.spacing={spacing}", "head=regression", f"seed={seed}"]
        fake_job(sweep / str(num), overrides, ok_results(val, val + 3))
    # Same mean and std as spacing 0.5, but not job by job: a coincidence of the aggregate.
    for num, (seed, val) in enumerate((("1", 84.25), ("2", 80.5)), start=4):
        overrides = ["grid.spacing=0.3", "head=regression", f"seed={seed}"]
        fake_job(sweep / str(num), overrides, ok_results(val, val + 3))

    text = markdown(build_report([sweep]))

    note = (
        "- No effect: grid.spacing=0.5 / grid.spacing=0.8 gave identical validation and test "
        "km, seed by seed (jobs 0, 1 = 2, 3)."
    )
    assert note in text, text
    assert text.count("No effect") == 1


def test_datasets_are_never_mixed(spacing_sweep: Path, tmp_path: Path):
    other = tmp_path / "other"
    # No "dataset" in results.json (before it was written): fitted.json's key identifies it.
    info = {"dataset_key": "f" * 64, "roots": ["/data/slovenia"]}
    fake_job(other / "0", ["optimizer.lr=0.001"], ok_results(40.0, 41.0, None), fitted_info=info)
    fake_job(other / "1", ["optimizer.lr=0.01"], ok_results(30.0, 35.0, None), fitted_info=info)

    report = build_report([spacing_sweep, other])

    assert [group.dataset for group in report.groups] == ["d1", "f" * 64]
    second = report.groups[1]
    assert second.label == "ffffffffffff (/data/slovenia)"
    assert second.swept == ["optimizer.lr"]
    assert list(second.table["val_haversine_km"]) == [30.0, 40.0]
    assert list(second.table["n"]) == [1, 1]
    text = markdown(report)
    assert "2 different datasets or splits" in text
    assert text.count("\n## Dataset ") == 2  # two tables, one per dataset
    assert "## Dataset ffffffffffff (/data/slovenia), split sizes unknown: 2 jobs" in text


def test_report_files_and_cli(spacing_sweep: Path, tmp_path: Path):
    out = tmp_path / "report-run"
    result = run_module("geoguess.report", f"sweeps={spacing_sweep}", f"hydra.run.dir={out}")

    assert result.returncode == 0, result.stderr
    text = (out / "report.md").read_text()
    assert text in result.stdout  # the same table is printed
    assert "57.0 ± 2.8" in text
    from matplotlib.image import imread

    picture = imread(out / "report.png")
    assert picture.shape[0] > 300 and picture.shape[1] > 600  # two panels side by side
    # A second report into the same folder refuses to overwrite the first.
    again = run_module("geoguess.report", f"sweeps=[{spacing_sweep}]", f"hydra.run.dir={out}")
    assert again.returncode == 2
    assert "already holds a run" in again.stderr


def test_no_jobs_or_no_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(GeoguessError, match="no jobs"):
        build_report([tmp_path])
    with pytest.raises(GeoguessError, match="is not a folder"):
        build_report([tmp_path / "missing"])
    result = run_module("geoguess.report", f"hydra.run.dir={tmp_path / 'r'}")
    assert result.returncode == 2
    assert "sweeps must be given, e.g. sweeps=outputs/train-multirun/" in result.stderr


def test_optuna_study_history_from_its_sqlite_file(tmp_path: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    database = tmp_path / "outputs" / "study.db"
    database.parent.mkdir()
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{database}")
    values = [50.0, None, 42.0, 47.0]  # None: a failed trial
    sweep = tmp_path / "outputs" / "run"
    for number, value in enumerate(values):
        trial = study.ask()
        lr = trial.suggest_float("optimizer.lr", 1e-4, 1e-2, log=True)
        if value is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            results = {"status": "failed", "error": "boom"}
        else:
            study.tell(trial, value)
            results = ok_results(value, value + 1)
        hydra = {
            "sweeper": {
                "_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
                # relative to the working directory of the sweep, as the default is
                "storage": "sqlite:///outputs/study.db",
                "study_name": "s",
            },
            "runtime": {"cwd": str(tmp_path)},
        }
        fake_job(sweep / str(number), [f"optimizer.lr={lr}"], results, hydra=hydra)

    (sweep / "optimization_results.yaml").write_text(
        yaml.safe_dump(
            {"name": "optuna", "best_params": {"optimizer.lr": 0.00123456}, "best_value": 42.0}
        )
    )

    report = build_report([sweep])

    ((found, trials),) = report.studies.items()
    assert found.database == database
    assert trials.source == "storage"
    assert list(trials.frame["state"]) == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    text = markdown(report)
    assert "4 trials: 3 complete, 1 failed." in text
    assert "Best: trial 2, 42.0 km" in text
    assert "optimization_results.yaml`: 42.0 km (optimizer.lr=0.001235)" in text
    write_report(report, tmp_path / "r")
    assert (tmp_path / "r" / "report.png").stat().st_size > 10_000


def test_settings_a_job_did_not_override_read_as_what_it_ran_with(tmp_path: Path):
    """Two sweeps side by side (square spacings, then grid=adaptive): each row names its grid
    (the group's choice) and its spacing (the composed value, "-" where the grid has none)."""
    for num, spacing in enumerate(("0.3", "0.8")):
        job = fake_job(
            tmp_path / "square" / str(num),
            [f"grid.spacing={spacing}"],
            ok_results(70.0 + num, 71.0),
            hydra={"runtime": {"choices": {"grid": "square"}}},
        )
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"grid": {"spacing": 0.5}}))
    job = fake_job(
        tmp_path / "adaptive" / "0",
        ["grid=adaptive"],
        ok_results(60.0, 61.0),
        hydra={"runtime": {"choices": {"grid": "adaptive"}}},
    )
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"grid": {"max_per_cell": 9}}))
    report = build_report([tmp_path / "square", tmp_path / "adaptive"])
    rows = report.groups[0].table[["grid.spacing", "grid"]].values.tolist()
    assert rows == [["-", "adaptive"], ["0.3", "square"], ["0.8", "square"]]


def write_predictions(job: Path, rows: int) -> None:
    """predictions_test.csv with `rows` test locations, as a training job writes it."""
    lines = ["uuid,latitude,longitude,error_km", *(f"u{i},45.0,16.0,1.5" for i in range(rows))]
    (job / "predictions_test.csv").write_text("\n".join(lines) + "\n")


def test_each_dataset_and_split_gets_its_own_table(tmp_path: Path):
    """Two datasets, and two splits of the first: three tables, never one ranking across."""
    sweep = tmp_path / "sweep"
    sizes = {"train": 160, "val": 20, "test": 20}
    for num, (head, val) in enumerate((("classification", 50.0), ("regression", 70.0))):
        fake_job(sweep / str(num), [f"head={head}"], ok_results(val, val + 1, split_sizes=sizes))
    # The same data split otherwise; no split_sizes (older jobs): the test rows are counted.
    for num, (head, val) in enumerate((("classification", 40.0), ("regression", 45.0)), 2):
        overrides = [f"head={head}", "data.split=[0.6,0.2,0.2]"]
        write_predictions(fake_job(sweep / str(num), overrides, ok_results(val, val + 1)), 40)
    for num, (head, val) in enumerate((("classification", 30.0), ("regression", 35.0)), 4):
        job = fake_job(sweep / str(num), [f"head={head}"], ok_results(val, val + 1, "d2"))
        write_predictions(job, 12)

    report = build_report([sweep])

    assert [(group.dataset, group.split) for group in report.groups] == [
        ("d1", (160, 20, 20)),
        ("d1", (None, None, 40)),
        ("d2", (None, None, 12)),
    ]
    assert [[job.name for job in group.jobs] for group in report.groups] == [
        ["0", "1"],
        ["2", "3"],
        ["4", "5"],
    ]
    assert [list(group.table["test_size"]) for group in report.groups] == [
        [20, 20],
        [40, 40],
        [12, 12],
    ]
    text = markdown(report)
    assert "3 different datasets or splits" in text
    assert text.count("\n## Dataset ") == 3
    assert "## Dataset d1, split 160 / 20 / 20 (train / val / test): 2 jobs" in text
    assert "## Dataset d1, test split of 40: 2 jobs" in text
    assert "## Dataset d2, test split of 12: 2 jobs" in text
    # Each table holds its own jobs' errors only (val km 50/70, 40/45, 30/35).
    sections = [
        re.sub(" +", " ", part.split("\n\n")[1]) for part in text.split("\n## Dataset ")[1:]
    ]
    for section, (own, others) in zip(
        sections,
        (
            (("50.0", "70.0"), ("40.0", "30.0")),
            (("40.0", "45.0"), ("50.0", "30.0")),
            (("30.0", "35.0"), ("50.0", "40.0")),
        ),
        strict=True,
    ):
        assert all(f"| {km} |" in section for km in own), section
        assert not any(f"| {km} |" in section for km in others), section


def test_split_sizes_come_from_results_else_from_the_test_predictions(tmp_path: Path):
    given = fake_job(
        tmp_path / "given",
        [],
        ok_results(50.0, 51.0, split_sizes={"train": 80, "val": 10, "test": 10}),
    )
    write_predictions(given, 11)  # results.json wins
    damaged = fake_job(tmp_path / "damaged", [], ok_results(50.0, 51.0, split_sizes={"test": "x"}))
    write_predictions(damaged, 7)
    fake_job(tmp_path / "neither", [], ok_results(50.0, 51.0))

    jobs = {job.name: job for job in build_report([tmp_path]).jobs}

    assert jobs["given"].split == SplitSizes(80, 10, 10)
    assert jobs["damaged"].split == SplitSizes(None, None, 7)
    assert jobs["neither"].split == SplitSizes(None, None, None)


def test_settings_that_change_only_logging_or_output_are_not_swept(tmp_path: Path):
    """Seed 1 logged to CSV with 0 workers, seed 2 to W&B with a progress bar: the same
    experiment twice, one row per head with n = 2."""
    sweep = tmp_path / "sweep"
    outputs = {
        "1": ["logger=csv", "data.num_workers=0", "callbacks.progress_bar.refresh_rate=1"],
        "2": ["logger=wandb", "logger.mode=offline", "trainer.enable_progress_bar=true"],
    }
    km = {("classification", "1"): 60.0, ("classification", "2"): 62.0}
    km |= {("regression", "1"): 70.0, ("regression", "2"): 75.0}
    for num, ((head, seed), val) in enumerate(km.items()):
        overrides = [f"head={head}", f"seed={seed}", *outputs[seed]]
        fake_job(sweep / str(num), overrides, ok_results(val, val + 2))

    report = build_report([sweep])

    (group,) = report.groups
    assert group.swept == ["head", "seed"]
    assert set(group.output_only) == {
        "logger",
        "data.num_workers",
        "callbacks.progress_bar.refresh_rate",
        "logger.mode",
        "trainer.enable_progress_bar",
    }
    assert list(group.table["n"]) == [2, 2]
    assert list(group.table["val_haversine_km"]) == [61.0, 72.5]
    text = markdown(report)
    header = next(line for line in text.splitlines() if line.startswith("| head"))
    assert "logger" not in header and "num_workers" not in header and "progress" not in header
    assert "- Not swept: logger, data.num_workers, callbacks.progress_bar.refresh_rate" in text

    # A callback that changes training is a setting.
    other = tmp_path / "patience"
    for num, patience in enumerate((3, 5)):
        overrides = [f"callbacks.early_stopping.patience={patience}", f"logger={'csv' * num}"]
        fake_job(other / str(num), overrides, ok_results(50.0 + num, 51.0))
    (group,) = build_report([other]).groups
    assert group.swept == ["callbacks.early_stopping.patience"]
    assert group.output_only == ["logger"]


def test_error_over_baseline_is_each_jobs_ratio_averaged_over_seeds(tmp_path: Path):
    # (spacing, seed) -> (val km, test km, baseline km); the baseline differs per job here.
    jobs = {
        ("0.5", "1"): (60.0, 66.0, 132.0),
        ("0.5", "2"): (61.0, 63.0, 126.0),
        ("0.8", "1"): (50.0, 55.0, 110.0),
        ("0.8", "2"): (52.0, 57.0, 95.0),
        ("0.3", "1"): (70.0, 71.0, 0.0),  # no baseline to divide by
    }
    for num, ((spacing, seed), (val, test, base)) in enumerate(jobs.items()):
        results = ok_results(val, test, baseline_test_haversine_km=base)
        fake_job(tmp_path / str(num), [f"grid.spacing={spacing}", f"seed={seed}"], results)

    (group,) = build_report([tmp_path]).groups

    rows = {row["grid.spacing"]: row for _, row in group.table.iterrows()}
    for spacing in ("0.5", "0.8"):
        ratios = [jobs[(spacing, seed)][1] / jobs[(spacing, seed)][2] for seed in ("1", "2")]
        baselines = [jobs[(spacing, seed)][2] for seed in ("1", "2")]
        assert rows[spacing]["test_baseline_ratio"] == pytest.approx(statistics.mean(ratios))
        assert rows[spacing]["test_baseline_ratio_std"] == pytest.approx(statistics.stdev(ratios))
        assert rows[spacing]["baseline_test_haversine_km"] == pytest.approx(
            statistics.mean(baselines)
        )
    text = re.sub(" +", " ", markdown(build_report([tmp_path])))
    ratios = [57.0 / 95.0, 55.0 / 110.0]
    assert f"| {statistics.mean(ratios):.2f} ± {statistics.stdev(ratios):.2f} |" in text
    row = next(line for line in text.splitlines() if line.startswith("| 0.3"))
    assert "| 0.00 |" not in row and "n/a" in row


def test_categorical_settings_are_points_and_the_baseline_a_line(spacing_sweep: Path):
    figure = report_figure(build_report([spacing_sweep]))
    try:
        panels = {ax.get_xlabel(): ax for ax in figure.axes}

        def joined(ax) -> list:
            return [
                line
                for line in ax.get_lines()
                if line.get_linestyle() in ("-", "--") and len(line.get_xdata()) > 1
            ]

        assert joined(panels["grid.spacing"])  # a number: its values joined by lines
        assert not joined(panels["head"])  # a category: points only
        for ax in panels.values():
            baselines = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
            assert [list(line.get_ydata()) for line in baselines] == [[130.0, 130.0]]
    finally:
        plt.close(figure)
