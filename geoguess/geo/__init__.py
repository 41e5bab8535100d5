"""Geography: country boundary, metric projection, great-circle distance and the class grid.

Nothing here knows about torch training; `distance` offers a torch variant only because the
model's metric needs a differentiable haversine.
"""

from geoguess.geo.boundary import Country, load_boundary
from geoguess.geo.distance import EARTH_RADIUS_KM, haversine_km, haversine_km_torch
from geoguess.geo.grid import ClassGrid, build_grid
from geoguess.geo.projection import Projector, check_latlon

__all__ = [
    "EARTH_RADIUS_KM",
    "ClassGrid",
    "Country",
    "Projector",
    "build_grid",
    "check_latlon",
    "haversine_km",
    "haversine_km_torch",
    "load_boundary",
]
