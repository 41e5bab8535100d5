import math

import numpy as np
import pytest
import torch
from pyproj import Geod

from geoguess.geo import EARTH_RADIUS_KM, haversine_km, haversine_km_torch

GEOD = Geod(ellps="WGS84")


def _random_pairs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lat1 = rng.uniform(42.3, 46.6, n)
    lon1 = rng.uniform(13.4, 19.5, n)
    # Mix of tiny (metres), local and cross-country distances.
    step = 10.0 ** rng.uniform(-4, 0.7, n)
    angle = rng.uniform(0, 2 * np.pi, n)
    return lat1, lon1, lat1 + step * np.sin(angle), lon1 + step * np.cos(angle)


def test_hand_computed_pairs():
    one_degree = EARTH_RADIUS_KM * math.pi / 180
    assert haversine_km(0.0, 0.0, 0.0, 1.0) == pytest.approx(one_degree, rel=1e-12)
    assert haversine_km(0.0, 0.0, 1.0, 0.0) == pytest.approx(one_degree, rel=1e-12)
    assert haversine_km(0.0, 0.0, 90.0, 0.0) == pytest.approx(
        EARTH_RADIUS_KM * math.pi / 2, rel=1e-12
    )
    assert haversine_km(0.0, 0.0, 0.0, 180.0) == pytest.approx(EARTH_RADIUS_KM * math.pi, rel=1e-12)
    # At latitude 60° a degree of longitude spans half as much (small-angle check).
    assert haversine_km(60.0, 0.0, 60.0, 0.001) == pytest.approx(one_degree * 0.0005, rel=1e-6)
    assert haversine_km(45.0, 16.0, 45.0, 16.0) == 0.0


def test_against_pyproj_geod_within_half_percent():
    lat1, lon1, lat2, lon2 = _random_pairs(2000)
    _, _, metres = GEOD.inv(lon1, lat1, lon2, lat2)
    ours = haversine_km(lat1, lon1, lat2, lon2)
    relative = np.abs(ours - metres / 1000) / (metres / 1000)
    assert relative.max() < 0.005
    # Zagreb - Dubrovnik, about 390 km on the ellipsoid.
    zg_du = haversine_km(45.8150, 15.9819, 42.6507, 18.0944)
    _, _, ref = GEOD.inv(15.9819, 45.8150, 18.0944, 42.6507)
    assert zg_du == pytest.approx(ref / 1000, rel=0.005)
    assert 385 < zg_du < 395


def test_torch_matches_numpy_and_broadcasts():
    lat1, lon1, lat2, lon2 = _random_pairs(500, seed=1)
    expected = haversine_km(lat1, lon1, lat2, lon2)
    got = haversine_km_torch(*(torch.tensor(a) for a in (lat1, lon1, lat2, lon2)))
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    one_to_many = haversine_km_torch(
        torch.tensor(45.0), torch.tensor(16.0), torch.tensor(lat2), torch.tensor(lon2)
    )
    np.testing.assert_allclose(
        one_to_many.numpy(), haversine_km(45.0, 16.0, lat2, lon2), rtol=1e-12
    )


def test_torch_float32_input_keeps_sub_km_accuracy():
    # 50 m to 900 m apart: in float32 arithmetic the haversine term (d/2R)^2 would be noise.
    lat1 = np.full(50, 45.8150)
    lon1 = np.full(50, 15.9819)
    lat2 = lat1 + np.linspace(0.0005, 0.008, 50)
    lon2 = lon1 + 0.0003
    f32 = [torch.tensor(a, dtype=torch.float32) for a in (lat1, lon1, lat2, lon2)]
    got = haversine_km_torch(*f32).numpy()
    # Reference on exactly the float32-rounded inputs, in float64.
    reference = haversine_km(*(t.double().numpy() for t in f32))
    np.testing.assert_allclose(got, reference, rtol=1e-9)
    _, _, metres = GEOD.inv(lon1, lat1, lon2, lat2)
    assert np.abs(got - metres / 1000).max() < 0.005  # within 5 m


def test_torch_gradient_is_finite_even_at_zero_distance():
    lat = torch.tensor([45.0, 45.0], dtype=torch.float32, requires_grad=True)
    lon = torch.tensor([16.0, 16.0], dtype=torch.float32, requires_grad=True)
    target_lat = torch.tensor([45.0, 45.5])
    target_lon = torch.tensor([16.0, 16.5])
    haversine_km_torch(lat, lon, target_lat, target_lon).sum().backward()
    assert torch.isfinite(lat.grad).all() and torch.isfinite(lon.grad).all()
    # Moving the second point north-east towards its target must shrink the distance.
    assert lat.grad[1] < 0 and lon.grad[1] < 0


def test_torch_under_bf16_autocast_stays_exact():
    lat1, lon1, lat2, lon2 = (torch.tensor(a) for a in _random_pairs(100, seed=2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = haversine_km_torch(lat1.float(), lon1.float(), lat2.float(), lon2.float())
    reference = haversine_km(
        lat1.float().double().numpy(),
        lon1.float().double().numpy(),
        lat2.float().double().numpy(),
        lon2.float().double().numpy(),
    )
    np.testing.assert_allclose(got.numpy(), reference, rtol=1e-9)


@pytest.mark.parametrize(
    "args, message",
    [
        ((float("nan"), 16.0, 45.0, 16.0), "latitude nan"),
        ((45.0, 16.0, 91.0, 16.0), "latitude 91.0"),
        ((45.0, 181.5, 45.0, 16.0), "longitude 181.5"),
        ((45.0, float("inf"), 45.0, 16.0), "longitude inf"),
    ],
)
def test_bad_coordinates_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        haversine_km(*args)
    with pytest.raises(ValueError, match=message.split(" ")[0]):
        haversine_km_torch(*(torch.tensor([a]) for a in args))
