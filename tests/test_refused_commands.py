"""A refused command leaves no run folder and no record anywhere; a run folder that cannot be
written is one plain line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli import run_module


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.slow
def test_refused_predict_validate_and_train_leave_nothing(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    refused = {
        "geoguess.predict": ["checkpoint=/no/such.ckpt", "data.root=/no/such"],
        "geoguess.data.validate": ["data.root=/no/such"],
        "geoguess.train": [
            "data=folder",
            "data.root=/no/such",
            "backbone=tiny",
            "logger=none",
            "trainer.max_epochs=1",
        ],
    }
    for module, args in refused.items():
        result = run_module(module, *args, cwd=work, timeout=180)
        assert result.returncode == 2, (module, result.stderr[-2000:])
        assert "Traceback" not in result.stderr
        assert "does not exist" in result.stderr.strip().splitlines()[-1]
        # Not even an empty outputs/<command>/ left: the whole tree was made by the command.
        assert _files(work) == [], (module, _files(work))
    # So the report has nothing to list; refused in turn, it leaves nothing either.
    report = run_module("geoguess.report", "sweeps=outputs/train", cwd=work, timeout=180)
    assert report.returncode == 2 and "Traceback" not in report.stderr
    assert _files(work) == []


@pytest.mark.slow
def test_a_refusal_keeps_folders_it_did_not_make_and_files_it_names(tmp_path):
    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    result = run_module(
        "geoguess.data.validate", "data.root=/no/such", f"hydra.run.dir={mine / 'run'}"
    )
    assert result.returncode == 2
    assert _files(mine) == ["notes"]  # its own run folder gone, the user's folders kept
    # A refusal whose message points into the run folder keeps it: the list it names is there.
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)  # and no views for the one location: invalid
    (data / "data.csv").write_text("uuid,latitude,longitude\nabc,45.8,16.0\n")
    run = tmp_path / "train-run"
    result = run_module(
        "geoguess.train",
        "data=folder",
        f"data.root={data}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "backbone=tiny",
        "logger=none",
        f"hydra.run.dir={run}",
        timeout=180,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert str(run / "invalid_locations.csv") in result.stderr
    assert (run / "invalid_locations.csv").is_file()


def test_an_unwritable_run_folder_is_one_plain_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    result = run_module(
        "geoguess.data.validate", "data.root=/no/such", f"hydra.run.dir={blocker / 'run'}"
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot write the run folder {blocker / 'run'}")
    assert "hydra.run.dir=" in line
    assert _files(tmp_path) == ["a-file"]
