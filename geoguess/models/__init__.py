"""Models: timm backbones over the four views, fusion, heads, the LightningModule, unfreezing."""

from geoguess.models.module import GeoguessModule, build_module

__all__ = ["GeoguessModule", "build_module"]
