"""Great-circle (haversine) distance in km, for numpy arrays and torch tensors."""

from __future__ import annotations

import numpy as np

from geoguess.geo.projection import check_latlon

# Mean Earth radius (IUGG R1); the spherical error against the WGS84 ellipsoid stays under 0.5 %.
EARTH_RADIUS_KM = 6371.0088


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (broadcasting, float64)."""
    lat1, lon1 = check_latlon(lat1, lon1, "first point")
    lat2, lon2 = check_latlon(lat2, lon2, "second point")
    phi1, phi2 = np.radians(lat1), np.radians(lat2)
    dphi, dlmb = phi2 - phi1, np.radians(lon2 - lon1)
    a = np.sin(dphi / 2) ** 2 + np.cos(phi1) * np.cos(phi2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def haversine_km_torch(lat1, lon1, lat2, lon2, check: bool = True):
    """Differentiable great-circle distance in km between tensors of degrees.

    Computed in float64 with autocast off: in float32 or bf16 the sub-km terms vanish
    (bf16 is off by tens of km). Returns float64.
    """
    # torch loads here, not at the top: the numpy distances serve commands that never load it.
    import torch

    with torch.autocast(device_type=lat1.device.type, enabled=False):
        lat1, lon1, lat2, lon2 = (t.to(torch.float64) for t in (lat1, lon1, lat2, lon2))
        if check:
            _check_tensor_latlon(lat1, lon1, lat2, lon2)
        phi1, phi2 = torch.deg2rad(lat1), torch.deg2rad(lat2)
        dphi, dlmb = phi2 - phi1, torch.deg2rad(lon2 - lon1)
        a = torch.sin(dphi / 2) ** 2 + torch.cos(phi1) * torch.cos(phi2) * torch.sin(dlmb / 2) ** 2
        # The clamp keeps the gradient finite at zero distance, where d sqrt(a)/da diverges.
        a = a.clamp(1e-30, 1.0)
        return 2 * EARTH_RADIUS_KM * torch.asin(torch.sqrt(a))


def _check_tensor_latlon(*tensors) -> None:
    import torch  # here, not at the top: see haversine_km_torch

    for index, values in enumerate(tensors):
        limit = 90.0 if index % 2 == 0 else 180.0
        bad = ~torch.isfinite(values) | (values.abs() > limit)
        if bool(bad.any()):
            name = ("latitude", "longitude")[index % 2]
            which = ("first", "second")[index // 2]
            value = values[bad].flatten()[0].item()
            raise ValueError(
                f"{which} point: {name} {value!r} is not a finite value in [-{limit:g}, {limit:g}]"
            )
