"""The embedded synthetic dataset: format, determinism, a real location signal, the CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geoguess.data.synthesize import SynthesizeError, generate
from geoguess.data.synthetic_render import render_views
from geoguess.data.synthetic_world import RAY_HEADINGS_DEG, build_world, scene_parameters
from geoguess.errors import GeoguessError
from geoguess.geo import Country, haversine_km
from tests.cli import run_module

HEADINGS = (0, 90, 180, 270)
SMALL = {"num_locations": 30, "image_size": 32, "progress": False}
MAKARSKA = (43.297, 17.018)  # on the shore, Biokovo rising behind it to the north-east
ZAGREB = (45.81, 15.98)
OSIJEK = (45.55, 18.69)  # the Pannonian plain


@pytest.fixture(scope="module")
def croatia() -> Country:
    return Country()


@pytest.fixture(scope="module")
def small(tmp_path_factory, croatia) -> Path:
    return generate(tmp_path_factory.mktemp("small") / "data", seed=0, country=croatia, **SMALL)


def read_images(root: Path, uuid: str) -> list[np.ndarray]:
    views = []
    for heading in HEADINGS:
        with Image.open(root / "images" / uuid / f"{heading}.jpg") as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            views.append(np.asarray(image))
    return views


def test_format_round_trip(small, croatia):
    lines = (small / "data.csv").read_text().splitlines()
    assert lines[0] == ",uuid,latitude,longitude"
    frame = pd.read_csv(small / "data.csv", index_col=0)
    assert list(frame.columns) == ["uuid", "latitude", "longitude"] and len(frame) == 30
    assert frame.index.tolist() == list(range(30)) and frame["uuid"].is_unique
    assert croatia.contains(frame["latitude"].to_numpy(), frame["longitude"].to_numpy()).all()
    for uuid in frame["uuid"]:
        assert all(view.shape == (32, 32, 3) for view in read_images(small, uuid))
    assert sorted(p.name for p in (small / "images").iterdir()) == sorted(frame["uuid"])
    assert [p.name for p in small.parent.iterdir()] == ["data"]  # no temporary folder left


def test_same_seed_same_bytes_other_seed_other_data(small, tmp_path, croatia):
    # One worker instead of two: chunking and scheduling must not change a byte.
    again = generate(tmp_path / "again", seed=0, country=croatia, workers=1, **SMALL)
    assert (again / "data.csv").read_bytes() == (small / "data.csv").read_bytes()
    for image in (small / "images").rglob("*.jpg"):
        assert (again / image.relative_to(small)).read_bytes() == image.read_bytes()
    other = generate(tmp_path / "other", seed=1, country=croatia, **SMALL)
    first, second = (pd.read_csv(r / "data.csv", index_col=0) for r in (small, other))
    assert not set(first["uuid"]) & set(second["uuid"])
    assert not np.isin(first["latitude"], second["latitude"]).any()


def test_refuses_to_overwrite_unless_asked(small, tmp_path, croatia):
    before = (small / "data.csv").read_bytes()
    with pytest.raises(GeoguessError, match=str(small)):
        generate(small, seed=5, country=croatia, **SMALL)
    assert (small / "data.csv").read_bytes() == before
    # An empty folder is no dataset: it is filled.
    (tmp_path / "empty").mkdir()
    generate(tmp_path / "empty", seed=5, country=croatia, **SMALL)
    replaced = generate(tmp_path / "empty", seed=6, country=croatia, overwrite=True, **SMALL)
    assert len(list((replaced / "images").iterdir())) == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_interrupted_generation_leaves_nothing(tmp_path, croatia, monkeypatch):
    import geoguess.data.synthesize as synthesize

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthesize, "_write_csv", fail)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "data", country=croatia, **SMALL)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "setting", [{"num_locations": 0}, {"seed": -1}, {"image_size": 8}, {"workers": 0}]
)
def test_bad_settings_are_clear_errors(tmp_path, setting):
    with pytest.raises(SynthesizeError, match="must be an integer of at least"):
        generate(tmp_path / "data", **{**SMALL, **setting})


def test_sea_and_mountains_follow_the_real_geography(croatia):
    lat, lon = (
        np.array([MAKARSKA[0], ZAGREB[0], OSIJEK[0]]),
        np.array([MAKARSKA[1], ZAGREB[1], OSIJEK[1]]),
    )
    scenes = scene_parameters(build_world(croatia), lat, lon)
    ray = {int(h): i for i, h in enumerate(RAY_HEADINGS_DEG) if h % 90 == 0}
    makarska_sea, makarska_relief = scenes["sea_band"][0], scenes["horizon_angle"][0]
    assert makarska_sea[ray[270]] > 0.1 and makarska_sea[ray[90]] == 0  # sea to the south-west
    assert makarska_relief[ray[90]] > 0.2 > makarska_relief[ray[270]]  # Biokovo inland
    assert (scenes["sea_band"][1:] == 0).all()  # Zagreb and Osijek are far from the sea
    assert scenes["horizon_angle"][2].max() < 0.05  # Slavonia is flat
    # And the rendered pixels show it: sea blue below the horizon only where the sea is.
    sea = np.mean([_sea_share(_scene(scenes, 0), seed) for seed in range(5)], axis=0)
    assert sea[HEADINGS.index(270)] > 0.3 and sea[HEADINGS.index(90)] < 0.01
    assert max(_sea_share(_scene(scenes, 1), seed).max() for seed in range(5)) < 0.01


def _scene(scenes, index):
    return {key: value[index] for key, value in scenes.items()}


def _sea_share(scene, seed, size=64) -> np.ndarray:
    """Per view, the share of clearly blue pixels in the band just below the horizon."""
    views = render_views(scene, size, np.random.default_rng(seed)).astype(int)
    band = views[:, int(size * 0.6) : int(size * 0.66)]
    red, green, blue = band[..., 0], band[..., 1], band[..., 2]
    return ((blue > red + 40) & (blue > green + 10)).mean(axis=(1, 2))


def test_location_is_learnable_from_the_pixels(tmp_path, croatia):
    """Ridge regression on coarse colour features beats predicting the mean location."""
    root = generate(tmp_path / "data", num_locations=600, seed=3, country=croatia,
                    image_size=32, progress=False)  # fmt: skip
    frame = pd.read_csv(root / "data.csv", index_col=0)
    images = np.stack([read_images(root, uuid) for uuid in frame["uuid"]]) / 255.0
    features = _colour_features(images)
    x, y = croatia.projector.forward(frame["latitude"].to_numpy(), frame["longitude"].to_numpy())
    target = np.stack([x, y], axis=1)
    train, test = slice(0, 400), slice(400, None)
    predicted = _ridge(features[train], target[train], features[test], alpha=100.0)
    mean = np.broadcast_to(target[train].mean(axis=0), predicted.shape)
    model_km, mean_km = (_mean_error_km(croatia, p, frame.iloc[test]) for p in (predicted, mean))
    print(f"ridge {model_km:.1f} km vs mean location {mean_km:.1f} km")
    assert mean_km / model_km >= 1.5


def _colour_features(images: np.ndarray) -> np.ndarray:
    """4x4 mean colours per view, both raw and as chromaticity (free of the exposure)."""
    n, views, size = images.shape[:3]
    cell = size // 4
    pooled = images.reshape(n, views, 4, cell, 4, cell, 3).mean(axis=(3, 5))
    chroma = pooled / (pooled.sum(axis=-1, keepdims=True) + 1e-3)
    return np.concatenate([pooled.reshape(n, -1), chroma.reshape(n, -1)], axis=1)


def _ridge(train_x, train_y, test_x, alpha: float) -> np.ndarray:
    mu, sd = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    offset = train_y.mean(axis=0)
    weights = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ (train_y - offset))
    return b @ weights + offset


def _mean_error_km(croatia, projected, frame) -> float:
    lat, lon = croatia.projector.inverse(projected[:, 0], projected[:, 1])
    return float(haversine_km(lat, lon, frame["latitude"], frame["longitude"]).mean())


def run_cli(*overrides: str) -> subprocess.CompletedProcess:
    return run_module("geoguess.data.synthesize", *overrides, timeout=120)


def test_cli_generates_then_refuses_to_overwrite(tmp_path):
    root = tmp_path / "synthetic"
    args = (
        "data.generator.num_locations=12",
        "data.generator.image_size=24",
        "data.generator.seed=4",
    )
    result = run_cli(f"data.root={root}", *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    assert f"wrote 12 synthetic locations (48 images of 24x24 px) to {root} in " in result.stdout
    assert len(pd.read_csv(root / "data.csv", index_col=0)) == 12
    assert (tmp_path / "run" / ".hydra" / "config.yaml").exists()
    again = run_cli(f"data.root={root}", *args, f"hydra.run.dir={tmp_path / 'run2'}")
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert f"error: {root} already exists; pass overwrite=true" in again.stderr
