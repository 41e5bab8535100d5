"""Projection between WGS84 latitude/longitude and a metric CRS, vectorised both ways."""

from __future__ import annotations

import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely.geometry.base import BaseGeometry


def check_latlon(lat, lon, what: str = "coordinates") -> tuple[np.ndarray, np.ndarray]:
    """Return float64 arrays, or raise ValueError naming the first NaN or out-of-range value."""
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    for name, values, limit in (("latitude", lat, 90.0), ("longitude", lon, 180.0)):
        bad = ~np.isfinite(values) | (np.abs(values) > limit)
        if bad.any():
            index = np.flatnonzero(bad.ravel())[0]
            raise ValueError(
                f"{what}: {name} {float(values.ravel()[index])!r} at index {index} is not a finite "
                f"value in [-{limit:g}, {limit:g}]"
            )
    return lat, lon


class Projector:
    """WGS84 <-> `crs` (metres). Default EPSG:3765, HTRS96 / Croatia TM."""

    def __init__(self, crs: str = "EPSG:3765") -> None:
        self.crs = CRS.from_user_input(crs)
        if not self.crs.is_projected:
            raise ValueError(f"CRS {crs!r} is not a projected (metric) CRS")
        self._forward = Transformer.from_crs("EPSG:4326", self.crs, always_xy=True)
        self._inverse = Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True)

    def forward(self, lat, lon) -> tuple[np.ndarray, np.ndarray]:
        """Latitude/longitude in degrees to easting/northing in metres."""
        lat, lon = check_latlon(lat, lon)
        x, y = self._forward.transform(lon, lat, errcheck=True)
        return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def inverse(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Easting/northing in metres to latitude/longitude in degrees."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        for name, values in (("x", x), ("y", y)):
            if not np.isfinite(values).all():
                index = np.flatnonzero(~np.isfinite(values.ravel()))[0]
                raise ValueError(
                    f"projected {name} {float(values.ravel()[index])!r} at index {index} is not finite"
                )
        lon, lat = self._inverse.transform(x, y, errcheck=True)
        return np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)

    def project_geometry(self, geometry: BaseGeometry) -> BaseGeometry:
        return shapely.transform(
            geometry, lambda xy: np.column_stack(self._forward.transform(xy[:, 0], xy[:, 1]))
        )

    def unproject_geometry(self, geometry: BaseGeometry) -> BaseGeometry:
        return shapely.transform(
            geometry, lambda xy: np.column_stack(self._inverse.transform(xy[:, 0], xy[:, 1]))
        )
