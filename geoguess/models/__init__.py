"""Models: timm backbones over the four views, fusion, heads, the LightningModule, unfreezing."""

from geoguess.models.module import GeoguessModule, build_from_spec

__all__ = ["GeoguessModule", "build_from_spec"]
