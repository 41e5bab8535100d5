"""geoguess: train models to play GeoGuessr on one country."""

__version__ = "0.1.0"
