"""The synthetic world's error."""

from __future__ import annotations

from geoguess.errors import GeoguessError


class SynthesizeError(GeoguessError, ValueError):
    """Settings, a country or a target folder the generator cannot work with."""
