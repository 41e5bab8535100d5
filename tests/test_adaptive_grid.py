"""Adaptive geocells (quadtree over the training locations) and region cells from a polygon file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import shapely
from PIL import Image

from geoguess.geo import (
    ClassGrid,
    Country,
    PolygonGrid,
    build_grid,
    build_region_grid,
    grid_from_dict,
)
from geoguess.geo.adaptive_grid import merge_small_cells
from geoguess.geo.boundary import BoundaryError
from geoguess.geo.geocells import CLASSES_CSV_COLUMNS, GridError
from tests.cli import run_module
from tests.conf_helpers import from_conf
from tests.data_helpers import croatia_points

MAX, MIN, MIN_KM = 60, 6, 5.0


def adaptive(country: Country, **settings) -> PolygonGrid:
    """`grid=adaptive` as a run builds it (conf/grid/adaptive.yaml), `settings` over its keys."""
    return from_conf("grid", "adaptive")(country, **settings)


@pytest.fixture(scope="module")
def croatia() -> Country:
    return Country()


@pytest.fixture(scope="module")
def train() -> tuple[np.ndarray, np.ndarray]:
    """1,200 locations: uniform over the land plus a dense cluster around Zagreb."""
    lat, lon = croatia_points(1000, seed=3)
    rng = np.random.default_rng(4)
    return (
        np.concatenate([lat, 45.81 + rng.normal(0, 0.05, 200)]),
        np.concatenate([lon, 15.98 + rng.normal(0, 0.07, 200)]),
    )


@pytest.fixture(scope="module")
def grid(croatia, train) -> PolygonGrid:
    lat, lon = train
    return adaptive(
        croatia,
        max_per_cell=MAX,
        min_per_cell=MIN,
        min_cell_km=MIN_KM,
        train_lat=lat,
        train_lon=lon,
    )


def covering(grid, lat, lon) -> np.ndarray:
    """Brute force: [cells, points] whether each cell (metres) covers each point."""
    x, y = grid.projector.forward(lat, lon)
    points = shapely.points(x, y)
    return np.array([shapely.covers(cell, points) for cell in grid.metric_cells()])


def test_every_training_location_falls_in_exactly_one_cell(grid, train):
    lat, lon = train
    hits = covering(grid, lat, lon)
    assert (hits.sum(axis=0) == 1).all()
    classes = grid.assign(lat, lon)
    np.testing.assert_array_equal(classes, hits.argmax(axis=0))
    np.testing.assert_array_equal(
        grid.table["train_count"], np.bincount(classes, minlength=grid.num_classes)
    )
    assert grid.table["train_count"].sum() == len(lat)


def test_cells_hold_between_min_and_max_training_locations(grid):
    counts = grid.table["train_count"].to_numpy()
    assert counts.min() >= MIN
    assert counts.max() <= MAX
    # Dense Zagreb gets small cells, the sparse rest large ones: the cells follow the data.
    areas = shapely.area(grid.metric_cells()) / 1e6
    zagreb = grid.assign([45.81], [15.98])[0]
    assert areas[zagreb] < np.median(areas) / 3
    assert 20 < grid.num_classes < 60


def test_a_minimum_size_square_may_hold_more_than_the_maximum(croatia):
    rng = np.random.default_rng(0)
    lat = np.r_[45.5 + rng.normal(0, 0.001, 300), croatia_points(200, seed=5)[0]]
    lon = np.r_[16.5 + rng.normal(0, 0.001, 300), croatia_points(200, seed=5)[1]]
    grid = adaptive(
        croatia, max_per_cell=50, min_per_cell=5, min_cell_km=MIN_KM, train_lat=lat, train_lon=lon
    )
    full = grid.table["train_count"] > 50
    assert full.sum() == 1
    cell = grid.metric_cells()[np.flatnonzero(full)[0]]
    x0, y0, x1, y1 = cell.bounds
    # One square, 5-10 km wide: halving it would make it narrower than min_cell_km.
    assert cell.area == pytest.approx((x1 - x0) * (y1 - y0))
    assert x1 - x0 == pytest.approx(y1 - y0)
    assert MIN_KM * 1000 <= x1 - x0 < 2 * MIN_KM * 1000


def test_small_cells_merge_into_the_neighbour_that_stays_smallest():
    #  [3][50]
    #  [10]         [4]   (the last one touches nothing)
    cells = shapely.box([0, 1, 0, 5], [1, 1, 0, 0], [1, 2, 1, 6], [2, 2, 1, 1])
    assert merge_small_cells(cells, np.array([3, 50, 10, 4]), 5) == [[0, 2], [1, 3]]
    # Cell 0 joins 2 (3 + 10 < 3 + 50); the isolated 4 joins the nearest cell, 50 (3 away).
    # When every neighbour is full, the minimum wins over the maximum: 3 + 60 in one cell.
    row = shapely.box([0, 1, 2], 0, [1, 2, 3], 1)
    assert merge_small_cells(row, np.array([3, 60, 60]), 5) == [[0, 1], [2]]
    # Ties on the merged count go to the longer shared border.
    tall = shapely.box([0, 1, 0], [0, 0, 2], [1, 3, 1], [2, 2, 3])  # borders 2 and 1 long
    assert merge_small_cells(tall, np.array([1, 20, 20]), 5) == [[0, 1], [2]]


def test_cells_cover_the_land_without_overlapping(grid, croatia):
    cells = grid.metric_cells()
    land = croatia.projected_geometry
    union = shapely.union_all(cells)
    assert union.intersection(land).area == pytest.approx(land.area, rel=1e-9)
    assert shapely.area(cells).sum() == pytest.approx(union.area, rel=1e-9)
    assert (shapely.area(shapely.intersection(cells, land)) > 0).all()


def test_assign_agrees_with_a_brute_force_point_in_polygon(grid, croatia):
    rng = np.random.default_rng(7)
    lon0, lat0, lon1, lat1 = croatia.bounds
    lat = rng.uniform(lat0 - 0.3, lat1 + 0.3, 1500)
    lon = rng.uniform(lon0 - 0.3, lon1 + 0.3, 1500)
    hits = covering(grid, lat, lon)
    inside = hits.any(axis=0)
    assert 0.3 < inside.mean() < 0.95  # both cases are exercised
    expected = np.where(inside, hits.argmax(axis=0), -1)
    np.testing.assert_array_equal(grid.assign(lat, lon, nearest=False), expected)
    x, y = grid.projector.forward(lat[~inside], lon[~inside])
    distance = np.array([shapely.distance(c, shapely.points(x, y)) for c in grid.metric_cells()])
    nearest = grid.assign(lat[~inside], lon[~inside])
    np.testing.assert_allclose(distance[nearest, np.arange(len(x))], distance.min(axis=0))


def test_class_points_are_those_of_the_square_grid(grid, croatia, train):
    t = grid.table
    lat, lon = grid.points("clipped")
    assert croatia.contains(lat, lon).all()
    x, y = grid.projector.forward(lat, lon)
    cells = grid.metric_cells()
    # Each prediction point lies on its own cell's land.
    assert shapely.contains_xy(cells, x, y).all()
    c_lat, c_lon = grid.points("centroid")
    cx, cy = grid.projector.forward(c_lat, c_lon)
    centroids = shapely.centroid(cells)
    np.testing.assert_allclose(cx, shapely.get_x(centroids), atol=1e-3)
    np.testing.assert_allclose(cy, shapely.get_y(centroids), atol=1e-3)
    kept = ~t["clipped"].to_numpy()
    assert kept.sum() > 10 and (~kept).sum() > 3
    np.testing.assert_array_equal(lat[kept], c_lat[kept])
    # Moved only when the centroid is off the cell's land.
    centroid_on_land = shapely.contains_xy(
        shapely.intersection(cells, croatia.projected_geometry), cx, cy
    )
    np.testing.assert_array_equal(~kept, ~centroid_on_land)
    m_lat, m_lon = grid.points("train_mean")
    t_lat, t_lon = train
    classes = grid.assign(t_lat, t_lon)
    tx, ty = grid.projector.forward(t_lat, t_lon)
    mx, my = grid.projector.forward(m_lat, m_lon)
    for k in range(0, grid.num_classes, 5):
        assert mx[k] == pytest.approx(tx[classes == k].mean(), abs=0.01)
        assert my[k] == pytest.approx(ty[classes == k].mean(), abs=0.01)


def test_round_trip_through_json_is_exact(grid, croatia):
    data = json.loads(json.dumps(grid.to_dict()))
    again = grid_from_dict(data)
    assert isinstance(again, PolygonGrid) and again.kind == "adaptive"
    pd.testing.assert_frame_equal(again.table, grid.table)
    assert again.to_dict() == grid.to_dict()
    assert again.description == grid.description
    # What checkpoints written before `kind` existed call also restores it.
    assert isinstance(ClassGrid.from_dict(data), PolygonGrid)
    lat, lon = croatia_points(300, seed=9)
    np.testing.assert_array_equal(again.assign(lat, lon), grid.assign(lat, lon))
    # A square grid's dict without `kind` (old checkpoints) is still a square grid.
    square = build_grid(croatia, 0.8, drop_empty=True).to_dict()
    assert square.pop("kind") == "square"
    assert isinstance(grid_from_dict(square), ClassGrid)
    with pytest.raises(GridError, match="unknown grid kind 'hexagons'"):
        grid_from_dict({**square, "kind": "hexagons"})


def test_without_training_locations_the_density_is_uniform(croatia):
    grid = adaptive(croatia, max_per_cell=100, min_per_cell=10, uniform_points=2000)
    assert "uniform density" in grid.description
    assert "train_count" not in grid.table
    with pytest.raises(ValueError, match="train_mean"):
        grid.points("train_mean")
    assert 20 < grid.num_classes < 80
    assert list(grid.to_frame().columns) == CLASSES_CSV_COLUMNS


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"max_per_cell": 0}, "grid.max_per_cell=0 must be a whole number of at least 1"),
        ({"min_per_cell": 2.5}, "grid.min_per_cell=2.5 must be a whole number"),
        ({"min_per_cell": 20, "max_per_cell": 10}, "must not exceed grid.max_per_cell=10"),
        ({"min_cell_km": -1}, "grid.min_cell_km=-1 must be a positive number"),
        ({"min_cell_km": "far"}, "grid.min_cell_km='far' is not a number"),
    ],
)
def test_bad_settings_say_which(croatia, settings, message):
    with pytest.raises(GridError, match=message):
        adaptive(croatia, **settings)


def test_the_heads_and_the_fitted_data_take_adaptive_cells(grid, train, croatia):
    import torch

    from geoguess.data import FittedData
    from geoguess.data.targets import TargetSpace
    from geoguess.models.heads import ClassificationHead

    targets = TargetSpace.fit(*train)
    fitted = FittedData(targets, grid, (0.5,) * 3, (0.25,) * 3, 32, croatia)
    again = FittedData.from_dict(json.loads(json.dumps(fitted.to_dict())))
    pd.testing.assert_frame_equal(again.grid.table, grid.table)
    head = ClassificationHead(8, again.grid, targets, again.country, points="train_mean")
    assert head.linear.out_features == grid.num_classes
    assert head(torch.zeros(2, 8)).shape == (2, grid.num_classes)


# -- region cells -----------------------------------------------------------------------------


def quadrants(croatia, path, extra=()):
    """The country's bounding box cut in four, plus `extra` features, as GeoJSON."""
    lon0, lat0, lon1, lat1 = croatia.bounds
    mid_lon, mid_lat = (lon0 + lon1) / 2, (lat0 + lat1) / 2
    boxes = {
        "south-west": shapely.box(lon0, lat0, mid_lon, mid_lat),
        "south-east": shapely.box(mid_lon, lat0, lon1, mid_lat),
        "north-west": shapely.box(lon0, mid_lat, mid_lon, lat1),
        "north-east": shapely.box(mid_lon, mid_lat, lon1, lat1),
    }
    features = [
        {"type": "Feature", "properties": {"name": name}, "geometry": json.loads(g)}
        for name, g in zip(boxes, shapely.to_geojson(list(boxes.values())), strict=True)
    ]
    features += list(extra)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return boxes


def test_regions_give_one_class_per_region_on_land(croatia, tmp_path):
    sahara = {
        "type": "Feature",
        "properties": {"name": "elsewhere"},
        "geometry": json.loads(shapely.to_geojson(shapely.box(5, 20, 6, 21))),
    }
    boxes = quadrants(croatia, tmp_path / "regions.geojson", extra=[sahara])
    grid = adaptive(croatia, regions=str(tmp_path / "regions.geojson"))
    assert grid.kind == "regions" and grid.num_classes == 4
    assert grid.to_frame()["region"].tolist() == list(boxes)
    assert grid.description == "grid.regions=regions.geojson"
    # A point in a quadrant gets that quadrant's class; each class point is on its land.
    for class_id, box in enumerate(boxes.values()):
        land = box.intersection(croatia.geometry)
        point = land.representative_point()
        assert grid.assign([point.y], [point.x])[0] == class_id
        lat, lon = grid.points("clipped")
        assert land.buffer(1e-9).contains(shapely.Point(lon[class_id], lat[class_id]))
    again = grid_from_dict(json.loads(json.dumps(grid.to_dict())))
    pd.testing.assert_frame_equal(again.table, grid.table)


def test_regions_without_training_locations_are_dropped(croatia, tmp_path):
    quadrants(croatia, tmp_path / "regions.geojson")
    lat, lon = croatia_points(400, seed=2)
    north = lat > (croatia.bounds[1] + croatia.bounds[3]) / 2
    west = lon < (croatia.bounds[0] + croatia.bounds[2]) / 2
    keep = north | west  # nothing in the south-east
    grid = build_region_grid(
        croatia, tmp_path / "regions.geojson", lat[keep], lon[keep], drop_empty=True
    )
    assert grid.table["region"].tolist() == ["south-west", "north-west", "north-east"]
    assert grid.table["train_count"].sum() == keep.sum()


def test_unusable_region_files_say_why(croatia, tmp_path):
    with pytest.raises(BoundaryError, match="does not exist"):
        build_region_grid(croatia, tmp_path / "nope.geojson", drop_empty=True)
    points = tmp_path / "points.geojson"
    points.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": {"type": "Point", "coordinates": [16, 45]},
                    }
                ],
            }
        )
    )
    with pytest.raises(BoundaryError, match="feature 0 is a Point, not a polygon"):
        build_region_grid(croatia, points, drop_empty=True)
    elsewhere = tmp_path / "elsewhere.geojson"
    quadrants(Country(boundary=None), elsewhere)
    text = elsewhere.read_text()
    far = json.loads(text)
    for feature in far["features"]:
        feature["geometry"] = json.loads(shapely.to_geojson(shapely.box(5, 20, 6, 21)))
    elsewhere.write_text(json.dumps(far))
    with pytest.raises(GridError, match="no region intersects Croatia"):
        build_region_grid(croatia, elsewhere, drop_empty=True)


# -- the grid command -------------------------------------------------------------------------


def test_grid_cli_draws_adaptive_cells(tmp_path):
    out = tmp_path / "run"
    result = run_module(
        "geoguess.grid", "grid=adaptive", "grid.max_per_cell=200", f"hydra.run.dir={out}"
    )
    assert result.returncode == 0, result.stderr
    assert "classes at grid=adaptive (max_per_cell=200" in result.stdout
    assert "uniform density" in result.stdout
    classes = pd.read_csv(out / "classes.csv")
    assert list(classes.columns) == CLASSES_CSV_COLUMNS
    assert classes["class_id"].tolist() == list(range(len(classes)))
    assert 5 < len(classes) < 40
    with Image.open(out / "grid.png") as image:
        assert image.format == "PNG" and image.width > 400
