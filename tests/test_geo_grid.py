import numpy as np
import pandas as pd
import pytest
import shapely

from geoguess.geo import ClassGrid, Country, build_grid
from geoguess.geo.geocells import CLASSES_CSV_COLUMNS, GridError


@pytest.fixture(scope="module")
def croatia() -> Country:
    return Country()


@pytest.mark.parametrize("spacing, expected", [(0.5, 58), (0.8, 28)])
def test_class_counts_match_the_boundary(croatia, spacing, expected):
    assert build_grid(croatia, spacing, drop_empty=True).num_classes == expected


@pytest.mark.parametrize("spacing", [0.2, 0.3, 0.5, 0.8, 1.7])
def test_every_cell_is_on_land_and_every_prediction_point_too(croatia, spacing):
    grid = build_grid(croatia, spacing, drop_empty=True)
    cells = grid.cells()
    land_area = shapely.area(shapely.intersection(cells, croatia.geometry))
    assert (land_area > 0).all()
    lat, lon = grid.points("clipped")
    assert croatia.contains(lat, lon).all()
    # Each prediction point lies in its own cell, and the cell set matches an independent count.
    assert shapely.contains_xy(cells, lon, lat).all()
    lon0, lat0, lon1, lat1 = croatia.bounds
    n_cols, n_rows = int(np.ceil((lon1 - lon0) / spacing)), int(np.ceil((lat1 - lat0) / spacing))
    boxes = [
        shapely.box(
            lon0 + c * spacing,
            lat0 + r * spacing,
            lon0 + (c + 1) * spacing,
            lat0 + (r + 1) * spacing,
        )
        for r in range(n_rows)
        for c in range(n_cols)
    ]
    assert grid.num_classes == sum(b.intersection(croatia.geometry).area > 0 for b in boxes)


def test_clipped_only_when_the_centroid_is_off_land(croatia):
    grid = build_grid(croatia, 0.5, drop_empty=True)
    t = grid.table
    centroid_on_land = croatia.contains(t["centroid_latitude"], t["centroid_longitude"])
    assert (t["clipped"] == ~centroid_on_land).all()
    kept = t[~t["clipped"]]
    np.testing.assert_array_equal(kept["latitude"], kept["centroid_latitude"])
    moved = t[t["clipped"]]
    assert len(moved) > 10
    # A clipped point is the nearest land of its cell: no land point of the cell is much closer.
    projector = croatia.projector
    for _, row in moved.head(8).iterrows():
        cell = shapely.box(
            *(grid.origin_lon + row.col * grid.spacing, grid.origin_lat + row.row * grid.spacing),
            *(
                grid.origin_lon + (row.col + 1) * grid.spacing,
                grid.origin_lat + (row.row + 1) * grid.spacing,
            ),
        )
        land = projector.project_geometry(cell.intersection(croatia.geometry))
        cx, cy = projector.forward(row.centroid_latitude, row.centroid_longitude)
        px, py = projector.forward(row.latitude, row.longitude)
        nearest = land.distance(shapely.Point(float(cx), float(cy)))
        assert (
            np.hypot(px - cx, py - cy) <= nearest + 100
        )  # within the 25 m inland margin, and then some


def test_assign_is_arithmetic_and_falls_back_to_the_nearest_class(croatia):
    grid = build_grid(croatia, 0.5, drop_empty=True)
    lat, lon = grid.points("clipped")
    np.testing.assert_array_equal(grid.assign(lat, lon), grid.table["class_id"].to_numpy())
    # Points in the open sea far from any class cell still get the class of the nearest cell.
    far_lat, far_lon = np.array([41.0]), np.array([16.0])
    assert grid.assign(far_lat, far_lon, nearest=False).tolist() == [-1]
    nearest = grid.assign(far_lat, far_lon)[0]
    cell_distance = shapely.distance(grid.cells(), shapely.Point(16.0, 41.0))
    assert cell_distance[nearest] == pytest.approx(cell_distance.min(), abs=0.05)
    # Independent check with shapely containment for random land points.
    rng = np.random.default_rng(0)
    lon_r, lat_r = rng.uniform(13.5, 19.4, 3000), rng.uniform(42.4, 46.5, 3000)
    on_land = croatia.contains(lat_r, lon_r)
    lat_r, lon_r = lat_r[on_land], lon_r[on_land]
    classes = grid.assign(lat_r, lon_r)
    assert shapely.contains_xy(grid.cells()[classes], lon_r, lat_r).all()


def test_training_locations_drop_empty_cells_and_give_means(croatia):
    full = build_grid(croatia, 0.5, drop_empty=True)
    rng = np.random.default_rng(1)
    keep = full.table.sample(20, random_state=0)
    lat = np.repeat(keep["latitude"].to_numpy(), 3) + rng.normal(0, 0.01, 60)
    lon = np.repeat(keep["longitude"].to_numpy(), 3) + rng.normal(0, 0.01, 60)
    grid = build_grid(croatia, 0.5, train_lat=lat, train_lon=lon, drop_empty=True)
    assert grid.num_classes == 20
    assert grid.table["class_id"].tolist() == list(range(20))
    assert (grid.table["train_count"] == 3).all()
    classes = grid.assign(lat, lon)
    assert np.bincount(classes).tolist() == [3] * 20
    mean_lat, mean_lon = grid.points("train_mean")
    np.testing.assert_allclose(
        mean_lat[classes[::3]], [lat[i : i + 3].mean() for i in range(0, 60, 3)], atol=1e-3
    )
    np.testing.assert_allclose(
        mean_lon[classes[::3]], [lon[i : i + 3].mean() for i in range(0, 60, 3)], atol=1e-3
    )
    kept_all = build_grid(croatia, 0.5, train_lat=lat, train_lon=lon, drop_empty=False)
    assert kept_all.num_classes == 58 and kept_all.table["train_count"].sum() == 60


def test_round_trip_and_frame(croatia):
    grid = build_grid(
        croatia, 0.8, train_lat=[45.8, 43.5], train_lon=[16.0, 16.5], drop_empty=False
    )
    again = ClassGrid.from_dict(grid.to_dict())
    pd.testing.assert_frame_equal(again.table, grid.table)
    assert again.assign([45.8], [16.0]).tolist() == grid.assign([45.8], [16.0]).tolist()
    assert list(grid.to_frame().columns) == CLASSES_CSV_COLUMNS
    with pytest.raises(ValueError, match="unknown point kind"):
        grid.points("middle")


@pytest.mark.parametrize("spacing", [0, -0.5, float("nan"), "abc"])
def test_bad_spacing(croatia, spacing):
    with pytest.raises(GridError, match="grid.spacing"):
        build_grid(croatia, spacing, drop_empty=True)


def test_too_fine_spacing_and_no_training_class(croatia):
    with pytest.raises(GridError, match="cells"):
        build_grid(croatia, 0.001, drop_empty=True)
    with pytest.raises(ValueError, match="latitude nan"):
        build_grid(croatia, 0.5, train_lat=[np.nan], train_lon=[16.0], drop_empty=True)
