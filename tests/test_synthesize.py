"""The embedded synthetic dataset: format, determinism, its geography, its name, the CLI.

That colour alone gives little away is checked in `test_synthetic_shortcuts.py`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from uuid import UUID, uuid5

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geoguess.data.io import HEADINGS
from geoguess.errors import GeoguessError
from geoguess.geo import Country
from geoguess.geo.boundary import DEFAULT_BOUNDARY, DEFAULT_NEIGHBOURS
from geoguess.synthetic import SynthesizeError, dataset_key, generate, generator
from geoguess.synthetic.generator import location_uuids, sample_locations
from geoguess.synthetic.render import render_views
from geoguess.synthetic.scene import RAY_HEADINGS_DEG, scene_parameters
from geoguess.synthetic.style import FIELD_KINDS, TREE_FORMS, ZONES, expected_style
from geoguess.synthetic.world import MARGIN_M, build_world, check_coverage
from tests.cli import command_env, run_module

SMALL = {"num_locations": 30, "image_size": 32, "workers": 2, "progress": False}
MAKARSKA = (43.297, 17.018)  # on the shore, Biokovo rising behind it to the north-east
ZAGREB = (45.81, 15.98)
OSIJEK = (45.55, 18.69)  # the Pannonian plain
DUBROVNIK = (42.65, 18.09)
DELNICE = (45.40, 14.80)  # Gorski kotar: fir and spruce
ROVINJ = (45.08, 13.66)
PAZIN = (45.24, 13.94)  # inland Istria
OZALJ = (45.61, 15.47)  # on the Slovenian border north of Karlovac: not Gorski kotar
SENJ = (44.99, 14.91)  # the Kvarner coast under Velebit, where the bura blows


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
    again = generate(tmp_path / "again", seed=0, country=croatia, **{**SMALL, "workers": 1})
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
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generator, "_write_csv", fail)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "data", seed=0, country=croatia, **SMALL)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "setting", [{"num_locations": 0}, {"seed": -1}, {"image_size": 8}, {"workers": 0}]
)
def test_bad_settings_are_clear_errors(tmp_path, setting):
    with pytest.raises(SynthesizeError, match="must be an integer of at least"):
        generate(tmp_path / "data", **{"seed": 0, **SMALL, **setting})


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
    # And the rendered pixels show it: sea below the horizon only where the sea is, whatever
    # the weather (the sea is bluer than the land in every light).
    sea = np.mean([_sea_share(_scene(scenes, 0), seed) for seed in range(8)], axis=0)
    assert sea[HEADINGS.index(270)] > 0.3 and sea[HEADINGS.index(90)] < 0.05
    assert max(_sea_share(_scene(scenes, 1), seed).max() for seed in range(8)) < 0.05


def _scene(scenes, index):
    return {key: value[index] for key, value in scenes.items()}


def _sea_share(scene, seed, size=64) -> np.ndarray:
    """Per view, the share of bluish, unbroken pixels in the band just below the horizon."""
    views = render_views(scene, size, np.random.default_rng(seed)).astype(int)
    band = views[:, int(size * 0.53) : int(size * 0.58)]
    red, green, blue = band[..., 0], band[..., 1], band[..., 2]
    return ((blue > red + 25) & (blue >= green)).mean(axis=(1, 2))


def test_regional_style_follows_the_real_geography(croatia):
    """What grows and what is built differs by zone; zones follow the real regions."""
    places = (DUBROVNIK, OSIJEK, DELNICE, ZAGREB, ROVINJ)
    lat, lon = np.array(places).T
    scenes = scene_parameters(build_world(croatia), lat, lon)
    np.testing.assert_allclose(scenes["zones"].sum(axis=1), 1.0, rtol=1e-5)
    zone = [ZONES[i] for i in scenes["zones"].argmax(axis=1)]
    assert zone == ["south_dalmatia", "east_slavonia", "gorski_kotar", "northwest", "istria"]
    assert (scenes["zones"].max(axis=1) > 0.7).all()  # well inside a zone: mostly that zone
    style = expected_style(scenes["zones"])
    for key in ("tree_forms", "field_kinds", "house_forms"):
        np.testing.assert_allclose(style[key].sum(axis=1), 1.0, rtol=1e-5)
    trees = dict(zip(TREE_FORMS, style["tree_forms"].T, strict=True))
    dubrovnik, osijek, delnice, zagreb, rovinj = range(5)
    assert (
        trees["cypress"][dubrovnik] > 0.5 > 0.05 > trees["cypress"][[osijek, delnice, zagreb]].max()
    )
    assert trees["poplar"][osijek] > 0.5 > 0.05 > trees["poplar"][[dubrovnik, delnice]].max()
    assert trees["fir"][delnice] > 0.7
    assert style["walls"][dubrovnik] > 0.4 > 0.05 > style["walls"][[osijek, zagreb]].max()
    assert style["kazun"][rovinj] > 0.5 > 0.05 > style["kazun"][[osijek, dubrovnik]].max()
    stone, gable = style["house_forms"][:, 0], style["house_forms"][:, 1]
    assert stone[dubrovnik] > 0.8 and gable[zagreb] > 0.8
    # A wood is as likely everywhere: only what grows in it differs.
    wood = style["field_kinds"][:, FIELD_KINDS.index("wood")]
    np.testing.assert_allclose(wood, wood[0], rtol=1e-5)
    # Nothing about the light or the season is decided by the place.
    assert not {"sky", "cloudiness", "ground", "tree", "roof", "wall"} & set(scenes)


def test_zones_cut_istria_and_gorski_kotar_where_they_lie(croatia):
    """Inland Istria is Istria (v2 drew it as Lika), Gorski kotar lies between Rijeka and
    Karlovac (v2 drew it along the Slovenian border), and each zone's landmarks go with it."""
    lat, lon = np.array((PAZIN, OZALJ, SENJ, DELNICE)).T
    scenes = scene_parameters(build_world(croatia), lat, lon)
    zone = [ZONES[i] for i in scenes["zones"].argmax(axis=1)]
    assert zone[0] == "istria" and zone[2] == "kvarner" and zone[3] == "gorski_kotar"
    assert zone[1] in ("northwest", "central")
    style = expected_style(scenes["zones"])
    pazin, ozalj, senj, delnice = range(4)
    assert style["kazun"][pazin] > 0.5 > 0.05 > style["kazun"][[ozalj, senj, delnice]].max()
    assert style["wind_screen"][senj] > 0.5 > 0.05 > style["wind_screen"][[pazin, ozalj]].max()
    assert style["hayrack"][delnice] > 0.5 > style["hayrack"][[pazin, senj]].max()
    assert style["onion_tower"][ozalj] > 0.4 > 0.05 > style["onion_tower"][[pazin, senj]].max()


def test_locations_are_prefix_stable_and_uuids_versioned(croatia):
    lat, lon = sample_locations(croatia, 40, seed=2)
    lat30, lon30 = sample_locations(croatia, 30, seed=2)
    np.testing.assert_array_equal(lat[:30], lat30)
    np.testing.assert_array_equal(lon[:30], lon30)
    assert croatia.contains(lat, lon).all()
    expected = uuid5(UUID("5f0c8d3e-7a51-4d0b-9a8e-3c2b1f6e4d27"), "synthetic-v3/2/0")
    assert location_uuids(1, 2) == [str(expected)]


def test_dataset_key_names_every_setting_and_the_boundary_bytes(tmp_path, croatia):
    key = dataset_key(croatia, 2000, 0, 128)
    assert re.fullmatch(r"synthetic-v3-n2000-seed0-128px-[0-9a-f]{12}", key)
    assert dataset_key(croatia, 2000, 1, 128) == key.replace("seed0", "seed1")
    # The same bytes under another path: the same key; one changed coordinate: another key.
    copy = tmp_path / "copy.geojson"
    shutil.copy(DEFAULT_BOUNDARY, copy)
    assert dataset_key(Country(boundary=str(copy)), 2000, 0, 128) == key
    text = DEFAULT_BOUNDARY.read_text()
    number = list(re.finditer(r"\d+\.\d{3,}", text))[2]  # the second point: not a ring's end
    digit = str((int(number.group()[-1]) + 1) % 10)
    changed = tmp_path / "changed.geojson"
    changed.write_text(text[: number.end() - 1] + digit + text[number.end() :])
    assert dataset_key(Country(boundary=str(changed)), 2000, 0, 128) != key
    neighbours = tmp_path / "neighbours.geojson"
    neighbours.write_bytes(DEFAULT_NEIGHBOURS.read_bytes() + b"\n")
    assert dataset_key(Country(neighbours=str(neighbours)), 2000, 0, 128) != key
    with pytest.raises(GeoguessError, match="missing.geojson does not exist"):
        dataset_key(Country(boundary=str(tmp_path / "missing.geojson")), 2000, 0, 128)


def _one_country(tmp_path, iso: str, source=DEFAULT_NEIGHBOURS) -> str:
    """A GeoJSON of one feature of the shipped multi-country file."""
    features = json.loads(Path(source).read_text())["features"]
    chosen = [f for f in features if f["properties"].get("ISO_A3") == iso]
    path = tmp_path / f"{iso}.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": chosen}))
    return str(path)


def test_another_country_is_refused_without_its_neighbours(tmp_path):
    slovenia = _one_country(tmp_path, "SVN")
    # The shipped neighbours lack Austria: Slovenia's north would be drawn as sea.
    with pytest.raises(SynthesizeError, match="country.neighbours is unset") as error:
        check_coverage(Country(boundary=slovenia, name="Slovenia"))
    assert f"within {MARGIN_M / 1000:.0f} km" in str(error.value) and "Slovenia" in str(error.value)
    with pytest.raises(SynthesizeError, match="country.neighbours"):
        generate(
            tmp_path / "out",
            seed=0,
            country=Country(boundary=slovenia, name="Slovenia"),
            **SMALL,
        )
    assert not (tmp_path / "out").exists()
    # A neighbours file without the country itself, or that stops at its border.
    hungary = _one_country(tmp_path, "HUN")
    with pytest.raises(SynthesizeError, match="does not contain Croatia"):
        check_coverage(Country(neighbours=hungary))
    with pytest.raises(SynthesizeError, match=f"does not reach {MARGIN_M / 1000:.0f} km beyond"):
        check_coverage(Country(neighbours=_one_country(tmp_path, "HRV")))
    check_coverage(Country())  # the shipped pair is complete


def run_cli(*overrides: str) -> subprocess.CompletedProcess:
    return run_module("geoguess.synthesize", *overrides, timeout=120)


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
    assert f"wrote {tmp_path / 'run' / 'preview.png'}" in result.stdout
    with Image.open(tmp_path / "run" / "preview.png") as preview:
        assert preview.format == "PNG" and preview.width == 150 + 4 * 128
    again = run_cli(f"data.root={root}", *args, f"hydra.run.dir={tmp_path / 'run2'}")
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert f"error: {root} already exists; pass overwrite=true" in again.stderr


def _blas_threads(_: int = 0) -> int:
    from threadpoolctl import threadpool_info

    return max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=0)


def test_worker_processes_run_blas_on_one_thread():
    """Two forked renderers that each started one BLAS thread per core made 2,000 locations at
    320 px take 2.3x as long on 2 cores (the noise's matrix products)."""
    from geoguess.utils.processes import worker_pool

    np.ones((64, 64)) @ np.ones((64, 64))  # BLAS is loaded here, and forked with its threads
    if _blas_threads() < 2:
        pytest.skip("numpy's BLAS runs on one thread here anyway")
    with worker_pool(2) as pool:
        assert pool.map(_blas_threads, range(4)) == [1, 1, 1, 1]
    assert _blas_threads() >= 2  # the parent's own threads are left as they were


def test_the_package_exports_its_api_and_loads_torch_only_for_the_data_module():
    """`geoguess.synthetic` resolves each public name from its own module; generating (and
    finding the cached set) must not pull in torch, which only the data module needs."""
    import geoguess.synthetic as synthetic
    from geoguess.synthetic import cache, datamodule, errors, preview, probe, version

    expected = {
        "GENERATOR_VERSION": version.GENERATOR_VERSION,
        "SynthesizeError": errors.SynthesizeError,
        "SyntheticDataModule": datamodule.SyntheticDataModule,
        "cache_dir": cache.cache_dir,
        "dataset_key": version.dataset_key,
        "generate": generator.generate,
        "probe_dataset": probe.probe_dataset,
        "resolve_synthetic": cache.resolve_synthetic,
        "synthetic_root": cache.synthetic_root,
        "write_preview": preview.write_preview,
    }
    assert sorted(synthetic.__all__) == sorted(expected)
    for name, value in expected.items():
        assert getattr(synthetic, name) is value, name
    with pytest.raises(AttributeError, match="no attribute 'render_view'"):
        synthetic.render_view  # noqa: B018
    probe = (
        "import sys; from geoguess.synthetic import generate, resolve_synthetic; "
        "print('torch' in sys.modules); from geoguess.synthetic import SyntheticDataModule; "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=command_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]
