"""The sweep report (`geoguess.sweeps`, `python -m geoguess.report`) on fabricated job
folders: every number is checked against one computed here from the fabricated results."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from geoguess.errors import GeoguessError
from geoguess.report import write_report
from geoguess.sweeps.jobs import parse_overrides
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
    assert "2 different datasets" in text
    assert "## Dataset ffffffffffff (/data/slovenia): 2 jobs" in text


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
