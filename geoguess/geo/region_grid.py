"""Region cells (`grid.regions=PATH`), as PIGEON builds its geocells: one class per polygon of
a layer of counties or municipalities that intersects the country; regions without training
locations are dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from geoguess.geo.boundary import BoundaryError, Country
from geoguess.geo.geocells import GridError, with_training_locations
from geoguess.geo.polygon_grid import PolygonGrid, polygon_grid


def build_region_grid(
    country: Country,
    regions: str | Path,
    train_lat=None,
    train_lon=None,
    *,
    drop_empty: bool,
) -> PolygonGrid:
    """One class per region polygon of the file `regions` that intersects the country."""
    names, geometries = load_region_polygons(regions)
    metric = np.array([country.projector.project_geometry(g) for g in geometries], dtype=object)
    metric = shapely.make_valid(metric)
    on_land = shapely.area(shapely.intersection(metric, country.projected_geometry)) > 0
    if not on_land.any():
        raise GridError(f"grid.regions={regions}: no region intersects {country.name}")
    settings = {"regions": str(regions)}
    grid = polygon_grid(country, "regions", metric[on_land], settings)
    table = grid.table
    table.insert(len(table.columns) - 1, "region", np.asarray(names, dtype=object)[on_land])
    grid = grid.with_table(table)
    if train_lat is not None:
        grid = with_training_locations(grid, train_lat, train_lon, drop_empty=drop_empty)
    return grid


def load_region_polygons(path: str | Path) -> tuple[list[str], list[BaseGeometry]]:
    """Names and (Multi)Polygons, EPSG:4326, of a GeoJSON/shapefile layer of regions."""
    # Imported here, not at the top: geopandas takes long to import and only a region grid
    # needs it.
    import geopandas as gpd

    path = Path(path).expanduser()
    if not path.exists():
        raise BoundaryError(f"grid.regions file {path} does not exist")
    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unusable file
        raise BoundaryError(f"grid.regions file {path} could not be read: {exc}") from exc
    if frame.empty:
        raise BoundaryError(f"grid.regions file {path} has no features")
    if frame.crs is not None and not frame.crs.equals("EPSG:4326"):
        frame = frame.to_crs("EPSG:4326")
    key = next((c for c in ("name", "NAME", "Name", "NAME_2", "NAME_1") if c in frame), None)
    names = frame[key].astype(str).tolist() if key else [f"region {i}" for i in range(len(frame))]
    geometries = []
    for row, geometry in enumerate(frame.geometry):
        if geometry is None or geometry.is_empty:
            raise BoundaryError(f"grid.regions file {path}: feature {row} has no geometry")
        if geometry.geom_type not in ("Polygon", "MultiPolygon"):
            raise BoundaryError(
                f"grid.regions file {path}: feature {row} is a {geometry.geom_type}, not a polygon"
            )
        geometries.append(geometry)
    return names, geometries
