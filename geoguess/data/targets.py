"""Regression targets: projected coordinates, min-max normalised with bounds fitted on train only."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from geoguess.geo.projection import Projector


@dataclass(frozen=True)
class TargetSpace:
    """Maps latitude/longitude to [0, 1]² through the metric CRS, and back.

    The bounds come from the training split only, so validation and test stay unseen.
    """

    crs: str
    x_min: float
    x_max: float
    y_min: float
    y_max: float

    @classmethod
    def fit(cls, lat, lon, crs: str = "EPSG:3765") -> TargetSpace:
        x, y = Projector(crs).forward(lat, lon)
        if x.size == 0:
            raise ValueError("cannot fit target normalisation on an empty training split")
        # A degenerate range (one location) would divide by zero; give it a 1 m extent.
        x_max = max(float(x.max()), float(x.min()) + 1.0)
        y_max = max(float(y.max()), float(y.min()) + 1.0)
        return cls(crs, float(x.min()), x_max, float(y.min()), y_max)

    @property
    def projector(self) -> Projector:
        projector = self.__dict__.get("_projector")
        if projector is None:
            projector = Projector(self.crs)
            object.__setattr__(self, "_projector", projector)
        return projector

    def scale(self) -> np.ndarray:
        return np.array([self.x_max - self.x_min, self.y_max - self.y_min])

    def offset(self) -> np.ndarray:
        return np.array([self.x_min, self.y_min])

    def project(self, lat, lon) -> np.ndarray:
        """(N, 2) easting/northing in metres."""
        return np.column_stack(self.projector.forward(lat, lon))

    def normalize(self, lat, lon) -> np.ndarray:
        """(N, 2) float64 in [0, 1] for training locations (outside for others)."""
        return (self.project(lat, lon) - self.offset()) / self.scale()

    def unproject(self, xy_metres) -> tuple[np.ndarray, np.ndarray]:
        xy = np.asarray(xy_metres, dtype=np.float64)
        return self.projector.inverse(xy[:, 0], xy[:, 1])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TargetSpace:
        return cls(**data)
