import json

import numpy as np
import pytest
import shapely

from geoguess.geo import Country, Projector, load_boundary
from geoguess.geo.boundary import DEFAULT_NEIGHBOURS, BoundaryError


def test_projection_known_point_and_round_trip():
    projector = Projector("EPSG:3765")
    # HTRS96/TM: central meridian 16.5°E, false easting 500 000 m, scale 0.9999.
    x, y = projector.forward(45.0, 16.5)
    assert float(x) == pytest.approx(500_000.0, abs=1e-6)
    assert float(y) == pytest.approx(
        0.9999 * 4_984_944.378, abs=1.0
    )  # meridian arc to 45°N on GRS80
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(42.4, 46.6, 1000), rng.uniform(13.5, 19.4, 1000)
    back_lat, back_lon = projector.inverse(*projector.forward(lat, lon))
    np.testing.assert_allclose(back_lat, lat, atol=1e-9)
    np.testing.assert_allclose(back_lon, lon, atol=1e-9)


def test_projected_distances_are_metric():
    from geoguess.geo import haversine_km

    projector = Projector()
    x, y = projector.forward([45.0, 45.1], [16.0, 16.1])
    planar_km = np.hypot(x[1] - x[0], y[1] - y[0]) / 1000
    assert planar_km == pytest.approx(float(haversine_km(45.0, 16.0, 45.1, 16.1)), rel=0.005)


def test_projection_rejects_bad_values():
    projector = Projector()
    with pytest.raises(ValueError, match="latitude nan"):
        projector.forward([45.0, np.nan], [16.0, 16.0])
    with pytest.raises(ValueError, match="longitude 200.0"):
        projector.forward([45.0], [200.0])
    with pytest.raises(ValueError, match="projected x inf"):
        projector.inverse([np.inf], [5e6])
    with pytest.raises(ValueError, match="not a projected"):
        Projector("EPSG:4326")


def test_shipped_boundary():
    croatia = Country()
    lon0, lat0, lon1, lat1 = croatia.bounds
    assert (lon0, lat0, lon1, lat1) == pytest.approx((13.501, 42.416, 19.408, 46.547), abs=2e-3)
    assert len(croatia.geometry.geoms) == 25
    # Zagreb and Knin are inside; Ljubljana, Venice and the open Adriatic are not.
    inside = croatia.contains(
        np.array([45.815, 44.041, 46.056, 45.44, 43.5]),
        np.array([15.982, 16.197, 14.506, 12.33, 15.0]),
    )
    assert inside.tolist() == [True, True, False, False, False]
    outside = croatia.distance_outside_km(np.array([45.815, 46.056]), np.array([15.982, 14.506]))
    assert outside[0] == 0 and 35 < outside[1] < 50  # Ljubljana is ~44 km from the border
    assert 640 < croatia.diagonal_km < 670


def _write_geojson(path, geometry) -> str:
    feature = {
        "type": "Feature",
        "properties": {},
        "geometry": shapely.geometry.mapping(geometry) if geometry is not None else None,
    }
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return str(path)


def test_boundary_errors(tmp_path):
    with pytest.raises(BoundaryError, match="does not exist"):
        load_boundary(tmp_path / "missing.geojson")
    with pytest.raises(BoundaryError, match="must hold polygons, found LineString"):
        load_boundary(
            _write_geojson(tmp_path / "line.geojson", shapely.LineString([(15, 45), (16, 46)]))
        )
    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(BoundaryError, match="no features"):
        load_boundary(empty)
    garbage = tmp_path / "garbage.geojson"
    garbage.write_text("not json at all")
    with pytest.raises(BoundaryError, match="could not be read"):
        load_boundary(garbage)


def test_another_country_from_a_file(tmp_path):
    import geopandas as gpd

    frame = gpd.read_file(DEFAULT_NEIGHBOURS)
    slovenia = frame[frame["ISO_A3"] == "SVN"]
    path = tmp_path / "slovenia.geojson"
    slovenia.to_file(path, driver="GeoJSON")
    country = Country(boundary=str(path), crs="EPSG:3794", name="Slovenia")
    assert country.contains(np.array([46.056]), np.array([14.506])).all()  # Ljubljana
    assert not country.contains(np.array([45.815]), np.array([15.982])).any()  # Zagreb
