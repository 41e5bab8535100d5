"""Validation: every planted defect is found, named (file, row, reason), and errors or is skipped."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from geoguess.data import cache as cache_mod
from geoguess.data.io import DataError
from geoguess.data.validation import MAX_LISTED, SKIP_HINT, validate_dataset
from tests.cli import run_module
from tests.data_helpers import (
    croatia,
    read_rows,
    set_cell,
    touch_newer,
    truncate,
    view_path,
    write_csv,
    write_dataset,
    write_views,
)

N = 12


def validate(root, tmp_path, **kwargs):
    kwargs.setdefault("image_size", 16)
    return validate_dataset(
        [root], croatia(), cache_root=tmp_path / "cache", workers=0, progress=False, **kwargs
    )


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    frame = write_dataset(root, N, size=24, seed=1)
    return root, frame


def _plant_missing(root, frame):
    path = view_path(root, frame["uuid"][2], 180)
    path.unlink()
    return 3, path, "missing file"


def _plant_zero_byte(root, frame):
    path = view_path(root, frame["uuid"][4], 0)
    path.write_bytes(b"")
    return 5, path, "empty file (0 bytes)"


def _plant_truncated(root, frame):
    path = view_path(root, frame["uuid"][5], 270)
    truncate(path)
    return 6, path, "does not decode ("


def _plant_garbage(root, frame):
    path = view_path(root, frame["uuid"][6], 90)
    path.write_bytes(b"this is not a JPEG at all" * 20)
    return 7, path, "does not decode (cannot identify image file"


def _plant_nan(root, frame):
    set_cell(root, 7, "latitude", "")
    return 8, root / "data.csv", "latitude '' is not a number"


def _plant_text_coordinate(root, frame):
    set_cell(root, 8, "longitude", "16,5")
    return 9, root / "data.csv", "longitude '16,5' is not a number"


def _plant_out_of_range(root, frame):
    set_cell(root, 9, "latitude", "95.5")
    return 10, root / "data.csv", "latitude 95.5 is outside [-90, 90]"


def _plant_abroad(root, frame):
    # Budapest: far beyond the 5 km tolerance around Croatia.
    set_cell(root, 10, "latitude", "47.4979")
    set_cell(root, 10, "longitude", "19.0402")
    return 11, root / "data.csv", "km outside Croatia (data.outside_tolerance_km=5)"


def _plant_duplicate(root, frame):
    set_cell(root, 11, "uuid", frame["uuid"][0])
    return 12, root / "data.csv", "duplicate uuid (also "


def _plant_unsafe_uuid(root, frame):
    set_cell(root, 1, "uuid", "../escape")
    return 2, root / "data.csv", "uuid is not a plain folder name"


def _plant_absolute_uuid(root, frame):
    set_cell(root, 1, "uuid", "/etc")
    return 2, root / "data.csv", "uuid is not a plain folder name"


PLANTERS = {
    "missing": _plant_missing,
    "zero_byte": _plant_zero_byte,
    "truncated": _plant_truncated,
    "garbage": _plant_garbage,
    "nan": _plant_nan,
    "text_coordinate": _plant_text_coordinate,
    "out_of_range": _plant_out_of_range,
    "abroad": _plant_abroad,
    "duplicate": _plant_duplicate,
    "unsafe_uuid": _plant_unsafe_uuid,
    "absolute_uuid": _plant_absolute_uuid,
}


@pytest.mark.parametrize("kind", sorted(PLANTERS))
def test_each_planted_defect_is_reported_with_file_row_and_reason(kind, dataset, tmp_path):
    root, frame = dataset
    row, file, reason = PLANTERS[kind](root, frame)
    report = validate(root, tmp_path)
    assert report.n_rows == N
    matching = [p for p in report.problems if p.row == row and reason in p.reason]
    assert matching, report.summary()
    assert matching[0].file == str(file)
    assert f"row {row}" in matching[0].describe() and reason in matching[0].describe()
    # Only the planted row is invalid (a duplicate makes both of its rows invalid).
    assert len(report.valid) == (N - 2 if kind == "duplicate" else N - 1)
    assert row not in report.valid["row"].tolist()


def test_cli_summary_and_exit_codes(dataset, tmp_path):
    root, frame = dataset
    clean = _run_cli(root, tmp_path, "clean")
    assert clean.returncode == 0, clean.stderr
    assert f"locations: {N} rows, {N} valid, 0 invalid" in clean.stdout
    assert "no problems found" in clean.stdout

    _plant_truncated(root, frame)
    _plant_abroad(root, frame)
    broken = _run_cli(root, tmp_path, "broken")
    assert broken.returncode == 1
    assert f"locations: {N} rows, {N - 2} valid, 2 invalid" in broken.stdout
    assert (
        f"{view_path(root, frame['uuid'][5], 270)} ({root / 'data.csv'} row 6): " in broken.stdout
    )
    assert "km outside Croatia" in broken.stdout
    assert "data.on_invalid=skip" in broken.stderr
    invalid = pd.read_csv(tmp_path / "broken" / "invalid_locations.csv")
    assert set(invalid["uuid"]) == {frame["uuid"][5], frame["uuid"][10]}


def _run_cli(root, tmp_path, name):
    return run_module(
        "geoguess.data.validate",
        "data=folder",
        f"data.root={root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.num_workers=0",
        "image.size=56",
        f"hydra.run.dir={tmp_path / name}",
        timeout=120,
    )


def test_error_message_lists_every_problem_and_truncates(tmp_path):
    root = tmp_path / "data"
    frame = write_dataset(root, MAX_LISTED + 5, size=8, seed=2)
    for uuid in frame["uuid"]:
        view_path(root, uuid, 0).unlink()
    report = validate(root, tmp_path)
    message = report.error_message(tmp_path / "run" / "invalid_locations.csv")
    assert len(report.problems) == MAX_LISTED + 5
    assert message.count("missing file") == MAX_LISTED
    assert "... and 5 more problems" in message
    assert message.rstrip().endswith(
        f"(all are listed in {tmp_path / 'run' / 'invalid_locations.csv'})."
    )
    assert SKIP_HINT in message


def test_folders_without_a_row_are_counted_and_ignored(dataset, tmp_path):
    root, _ = dataset
    write_views(root, "not-in-the-csv")
    write_views(root, "another-stray")
    report = validate(root, tmp_path)
    assert report.folders_without_row == 2
    assert not report.problems and len(report.valid) == N
    assert "without a row (ignored): 2" in report.summary()


def test_unsafe_uuid_paths_are_never_opened(tmp_path):
    root = tmp_path / "data"
    frame = write_dataset(root, 6, size=8, seed=3)
    # A real folder that the unsafe uuid would reach if it were joined to images/.
    shutil.copytree(root / "images" / frame["uuid"][1], root / "outside")
    set_cell(root, 0, "uuid", "../outside")
    report = validate(root, tmp_path)
    assert [p.uuid for p in report.problems] == ["../outside"]
    assert "../outside" not in report.cache.uuids
    assert frame["uuid"][0] not in report.valid["uuid"].tolist()


def test_duplicates_across_roots(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    frame_a = write_dataset(a, 5, size=8, seed=4)
    frame_b = write_dataset(b, 5, size=8, seed=5)
    frame_b.loc[2, "uuid"] = frame_a["uuid"][1]
    shutil.copytree(a / "images" / frame_a["uuid"][1], b / "images" / frame_a["uuid"][1])
    write_csv(b, frame_b)
    report = validate_dataset(
        [a, b], croatia(), image_size=16, cache_root=tmp_path / "cache", workers=0, progress=False
    )
    dup = [p for p in report.problems if "duplicate uuid" in p.reason]
    assert {(p.csv, p.row) for p in dup} == {(str(a / "data.csv"), 2), (str(b / "data.csv"), 3)}
    assert f"{b / 'data.csv'} row 3" in dup[0].reason
    assert len(report.valid) == 8
    # Both roots feed one cache; the duplicate is in neither.
    assert set(report.cache.uuids) == set(report.valid["uuid"])
    assert set(report.valid["root"]) == {str(a), str(b)}


def test_empty_csv_and_missing_parts_are_clear_errors(tmp_path):
    root = tmp_path / "data"
    write_dataset(root, 3, size=8)
    (root / "data.csv").write_text(",uuid,latitude,longitude\n")
    with pytest.raises(DataError, match="holds no locations"):
        validate(root, tmp_path)
    (root / "data.csv").write_text("id,lat,lon\n1,45,16\n")
    with pytest.raises(DataError, match="lacks the column"):
        validate(root, tmp_path)
    shutil.rmtree(root / "images")
    with pytest.raises(DataError, match="images/<uuid>"):
        validate(root, tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        validate(tmp_path / "nowhere", tmp_path)


def test_collected_format_with_extra_columns_is_read(tmp_path):
    root = tmp_path / "data"
    frame = write_dataset(root, 6, size=8, seed=6, collected_columns=True)
    header = (root / "data.csv").read_text().splitlines()[0]
    assert header.startswith(",Unnamed: 0,uuid,latitude,longitude,sample_longitude")
    report = validate(root, tmp_path)
    assert not report.problems
    assert report.valid["uuid"].tolist() == frame["uuid"].tolist()
    assert report.valid["latitude"].to_numpy() == pytest.approx(frame["latitude"].to_numpy())


@pytest.mark.parametrize("use_cache", [True, False])
def test_verdicts_cost_once_and_follow_file_changes(use_cache, dataset, tmp_path, monkeypatch):
    root, frame = dataset
    size = 16 if use_cache else None
    truncate(view_path(root, frame["uuid"][3], 0))
    first = validate(root, tmp_path, image_size=size)
    assert [p.row for p in first.problems] == [4]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the verdicts are cached")

    # Moved elsewhere (the key holds no paths), the dataset keeps its cached verdicts.
    moved = tmp_path / "moved"
    shutil.move(root, moved)
    with monkeypatch.context() as patch:
        patch.setattr(cache_mod, "decode_location", no_decoding)
        again = validate(moved, tmp_path, image_size=size)
    assert again.key == first.key and [p.row for p in again.problems] == [4]
    assert again.problems[0].file == str(view_path(moved, frame["uuid"][3], 0))
    shutil.move(moved, root)

    # Repairing the file changes the dataset key: it is decoded again and found valid.
    write_views(root, frame["uuid"][3], size=24, seed=99)
    touch_newer(view_path(root, frame["uuid"][3], 0))
    repaired = validate(root, tmp_path, image_size=size)
    assert repaired.key != first.key and not repaired.problems


def test_key_ignores_row_order_but_not_coordinates(dataset, tmp_path):
    root, frame = dataset
    key = validate(root, tmp_path).key
    write_csv(root, read_rows(root).iloc[::-1])
    assert validate(root, tmp_path).key == key
    set_cell(root, 0, "latitude", str(float(read_rows(root)["latitude"][0]) + 1e-4))
    assert validate(root, tmp_path).key != key


def test_real_sample_is_valid_within_tolerance(real_sample, tmp_path):
    report = validate_dataset(
        [real_sample], croatia(), cache_root=tmp_path, workers=0, progress=False
    )
    assert report.n_rows == 100 and not report.problems
    lat, lon = report.valid["latitude"].to_numpy(), report.valid["longitude"].to_numpy()
    outside = croatia().distance_outside_km(lat, lon)
    # Three points lie just outside the coarse boundary: within the default 5 km tolerance...
    assert 0 < outside.max() < 5
    tight = validate_dataset(
        [real_sample], croatia(), 0.1, cache_root=tmp_path, workers=0, progress=False
    )
    # ...but rejected by a tighter one.
    assert len(tight.problems) == int((outside > 0.1).sum()) > 0


def test_cli_takes_the_training_overrides_and_caches_at_their_size(tmp_path):
    """`experiment=best_cpu` composes (validate shares the training config's groups) and the
    cache is built at the size that experiment's training reads (288 px), not a default."""
    root = tmp_path / "data"
    frame = write_dataset(root, 3, size=8, seed=4)
    result = run_module(
        "geoguess.data.validate",
        "experiment=best_cpu",
        f"data.root={root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.num_workers=0",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "locations: 3 rows, 3 valid, 0 invalid" in result.stdout
    key = validate(root, tmp_path, image_size=None).key
    cache = cache_mod.ImageCache.load(tmp_path / "cache", key, 288)
    assert cache is not None and sorted(cache.uuids) == sorted(frame["uuid"])
    assert cache.open().shape == (3, 4, 3, 288, 288)
    assert f"({288} px)" in result.stdout
    assert cache_mod.ImageCache.load(tmp_path / "cache", key, 224) is None
