import subprocess

import pandas as pd
from PIL import Image

from tests.cli import run_module


def run_grid(*overrides: str) -> subprocess.CompletedProcess:
    return run_module("geoguess.grid", *overrides, timeout=120)


def test_grid_cli_writes_classes_and_map(tmp_path):
    out = tmp_path / "run"
    result = run_grid("grid.spacing=0.8", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr
    assert "28 classes at grid.spacing=0.8°" in result.stdout
    classes = pd.read_csv(out / "classes.csv")
    assert list(classes.columns) == [
        "class_id",
        "latitude",
        "longitude",
        "centroid_latitude",
        "centroid_longitude",
        "clipped",
    ]
    assert classes["class_id"].tolist() == list(range(28))
    assert classes["clipped"].sum() > 0
    with Image.open(out / "grid.png") as image:
        assert image.format == "PNG" and image.width > 400
    assert (out / ".hydra" / "config.yaml").exists()
    # A second run into the same directory refuses, and leaves the first run's files alone.
    record = (out / ".hydra" / "config.yaml").read_text()
    again = run_grid("grid.spacing=0.5", f"hydra.run.dir={out}")
    assert again.returncode == 2
    assert "already holds a run" in again.stderr
    assert len(pd.read_csv(out / "classes.csv")) == 28
    assert (out / ".hydra" / "config.yaml").read_text() == record


def test_grid_cli_bad_input_is_one_clear_line(tmp_path):
    result = run_grid("grid.spacing=0", f"hydra.run.dir={tmp_path / 'a'}")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: grid.spacing=0 must be a positive number of degrees"
    result = run_grid(
        f"country.boundary={tmp_path / 'nope.geojson'}", f"hydra.run.dir={tmp_path / 'b'}"
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
