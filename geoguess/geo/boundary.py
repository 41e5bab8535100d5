"""The country boundary: the shipped Croatia by default, any GeoJSON or shapefile on request."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from geoguess.errors import GeoguessError
from geoguess.geo.distance import haversine_km
from geoguess.geo.projection import Projector

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_BOUNDARY = DATA_DIR / "croatia.geojson"
DEFAULT_NEIGHBOURS = DATA_DIR / "croatia_and_neighbours.geojson"
DEFAULT_CRS = "EPSG:3765"  # HTRS96 / Croatia TM
# Points snapped onto land land this far inside the border, so that they test as inside
# beyond floating-point doubt after the round trip through the projection.
INLAND_MARGIN_M = 25.0


class BoundaryError(GeoguessError, ValueError):
    """A boundary file that cannot serve as a country outline."""


def load_boundary(path: str | Path | None = None) -> BaseGeometry:
    """Read a (Multi)Polygon country outline in EPSG:4326; `None` means the shipped Croatia."""
    # geopandas loads here, not at the top: every command imports `geoguess.geo`, and only
    # reading a boundary file needs it.
    import geopandas as gpd

    path = Path(path) if path else DEFAULT_BOUNDARY
    if not path.exists():
        raise BoundaryError(f"boundary file {path} does not exist")
    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unusable file
        raise BoundaryError(f"boundary file {path} could not be read: {exc}") from exc
    if frame.empty:
        raise BoundaryError(f"boundary file {path} has no features")
    if frame.crs is not None and not frame.crs.equals("EPSG:4326"):
        frame = frame.to_crs("EPSG:4326")
    geoms = [g for g in frame.geometry if g is not None and not g.is_empty]
    bad = sorted({g.geom_type for g in geoms} - {"Polygon", "MultiPolygon"})
    if bad:
        raise BoundaryError(f"boundary file {path} must hold polygons, found {', '.join(bad)}")
    if not geoms:
        raise BoundaryError(f"boundary file {path} holds only empty geometries")
    geometry = shapely.union_all(geoms)
    if geometry.is_empty or geometry.area == 0:
        raise BoundaryError(f"boundary file {path} encloses no area")
    return shapely.make_valid(geometry)


def load_regions(path: str | Path | None = None) -> list[tuple[str, BaseGeometry]]:
    """(ISO code or name, geometry) of every feature of a multi-country file, EPSG:4326."""
    # geopandas loads here, not at the top: every command imports `geoguess.geo`, and only
    # reading a boundary file needs it.
    import geopandas as gpd

    frame = gpd.read_file(Path(path) if path else DEFAULT_NEIGHBOURS).to_crs("EPSG:4326")
    key = next((c for c in ("ISO_A3", "NAME", "name") if c in frame.columns), None)
    names = frame[key].astype(str) if key else frame.index.astype(str)
    return list(zip(names, frame.geometry, strict=True))


@dataclass(frozen=True)
class Country:
    """A country outline with its metric projection; built from the `country` config group.

    `geojson` holds the outline itself when it came from a checkpoint (`from_dict`), so that a
    model predicts on a machine without the boundary file it was trained with.
    """

    boundary: str | None = None
    crs: str = DEFAULT_CRS
    name: str = "Croatia"
    neighbours: str | None = None
    geojson: str | None = None

    @cached_property
    def geometry(self) -> BaseGeometry:
        if self.geojson is not None:
            return shapely.from_geojson(self.geojson)
        return load_boundary(self.boundary)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the outline and the CRS: the same country whatever file it came from."""
        digest = hashlib.sha256(str(self.crs).encode())
        digest.update(shapely.to_wkb(shapely.normalize(self.geometry), output_dimension=2))
        return digest.hexdigest()

    def to_dict(self) -> dict:
        """Plain data (the outline as GeoJSON text) from which `from_dict` rebuilds it."""
        return {
            "name": self.name,
            "crs": str(self.crs),
            "geojson": shapely.to_geojson(self.geometry),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def coerce(cls, country) -> Country:
        """A `Country` from None (the shipped Croatia), a Country, or a config node that was
        not instantiated (its keys without `_target_`)."""
        if country is None:
            return cls()
        if isinstance(country, Country):
            return country
        if isinstance(country, Mapping):
            return cls(**{k: v for k, v in country.items() if k != "_target_"})
        raise BoundaryError(f"country must be a geoguess.geo.Country, not {type(country).__name__}")

    @classmethod
    def from_dict(cls, data: dict) -> Country:
        geojson = data["geojson"]
        if not isinstance(geojson, str):
            geojson = json.dumps(geojson)
        return cls(name=str(data["name"]), crs=str(data["crs"]), geojson=geojson)

    @cached_property
    def projector(self):
        return Projector(self.crs)

    @cached_property
    def projected_geometry(self) -> BaseGeometry:
        return self.projector.project_geometry(self.geometry)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(min_lon, min_lat, max_lon, max_lat)."""
        return tuple(self.geometry.bounds)

    @cached_property
    def diagonal_km(self) -> float:
        """Great-circle length of the bounding box's diagonal (the GeoGuessr score's scale)."""
        lon0, lat0, lon1, lat1 = self.bounds
        return float(haversine_km(np.array(lat0), np.array(lon0), np.array(lat1), np.array(lon1)))

    def distance_outside_km(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Metric distance of each point to the country (0 inside), vectorised."""
        x, y = self.projector.forward(lat, lon)
        points = shapely.points(x, y)
        return shapely.distance(self.projected_geometry, points) / 1000.0

    def contains(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        return shapely.contains_xy(self.geometry, np.asarray(lon), np.asarray(lat))

    @cached_property
    def _inland(self) -> BaseGeometry:
        inland = self.projected_geometry.buffer(-INLAND_MARGIN_M)
        inland = inland if not inland.is_empty else self.projected_geometry
        shapely.prepare(inland)
        return inland

    def snap_to_land(self, lat, lon) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Points off the country moved to its nearest point (a few metres inland).

        Returns (latitude, longitude, moved): points inside are returned unchanged.
        """
        lat = np.array(lat, dtype=np.float64, copy=True)
        lon = np.array(lon, dtype=np.float64, copy=True)
        moved = ~self.contains(lat, lon)
        if moved.any():
            x, y = self.projector.forward(lat[moved], lon[moved])
            lines = shapely.shortest_line(self._inland, shapely.points(x, y))
            nearest = shapely.get_coordinates(shapely.get_point(lines, 0))
            lat[moved], lon[moved] = self.projector.inverse(nearest[:, 0], nearest[:, 1])
        return lat, lon, moved
