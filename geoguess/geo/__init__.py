"""Geography: country boundary, metric projection, great-circle distance and the class grid.

Nothing here knows about torch training; `distance` offers a torch variant only because the
model's metric needs a differentiable haversine.
"""

from geoguess.geo.adaptive_grid import build_adaptive_grid
from geoguess.geo.boundary import Country, load_boundary
from geoguess.geo.cells import ClassGrid, build_grid
from geoguess.geo.distance import EARTH_RADIUS_KM, haversine_km, haversine_km_torch
from geoguess.geo.geocells import Geocells, grid_from_dict
from geoguess.geo.polygon_grid import PolygonGrid
from geoguess.geo.projection import Projector, check_latlon
from geoguess.geo.region_grid import build_region_grid

__all__ = [
    "EARTH_RADIUS_KM",
    "ClassGrid",
    "Country",
    "Geocells",
    "PolygonGrid",
    "Projector",
    "build_adaptive_grid",
    "build_grid",
    "build_region_grid",
    "check_latlon",
    "grid_from_dict",
    "haversine_km",
    "haversine_km_torch",
    "load_boundary",
]
