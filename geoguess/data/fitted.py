"""`FittedData`: everything fitted on the training split, kept in every checkpoint.

Prediction and resumed runs take these values from the checkpoint instead of refitting them on
today's data, so a model always sees its inputs and decodes its outputs as it was trained to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from geoguess.data.targets import TargetSpace
from geoguess.geo import Country, Geocells, grid_from_dict
from geoguess.utils.io import json_default, write_json_atomic, write_text_atomic


@dataclass
class FittedData:
    """Targets, classes and image statistics of one training split, and the country played."""

    targets: TargetSpace
    grid: Geocells
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    image_size: int
    country: Country
    info: dict = field(default_factory=dict)  # provenance: dataset key, split settings, counts

    def to_dict(self) -> dict:
        """Plain JSON types only (checkpoints are loaded with `weights_only=True`)."""
        data = {
            "targets": self.targets.to_dict(),
            "grid": self.grid.to_dict(),
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "image_size": self.image_size,
            "country": self.country.to_dict(),
            "info": self.info,
        }
        return json.loads(json.dumps(data, default=json_default))

    @classmethod
    def from_dict(cls, data: dict) -> FittedData:
        return cls(
            targets=TargetSpace.from_dict(data["targets"]),
            grid=grid_from_dict(data["grid"]),
            image_mean=tuple(float(v) for v in data["image_mean"]),
            image_std=tuple(float(v) for v in data["image_std"]),
            image_size=int(data["image_size"]),
            country=Country.from_dict(data["country"]),
            info=dict(data.get("info", {})),
        )

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    def save_once(self, path: Path) -> None:
        """Write `fitted.json` atomically; an identical file is kept, a different one never
        clobbered (a second data module in the same run directory must reproduce the first)."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path.exists() and path.read_text() == text:
            return
        write_text_atomic(path, text)

    @classmethod
    def load(cls, path: str | Path) -> FittedData:
        return cls.from_dict(json.loads(Path(path).read_text()))


def fit_settings(datamodule) -> dict:
    """The settings a data module fits the training split under: how the split is drawn, the
    grid's settings (its factory's), the country's boundary and CRS, the image size."""
    grid = datamodule.grid_factory
    return {
        "split": [float(r) for r in datamodule.ratios],
        "split_by": datamodule.split_by,
        "spatial_gap_km": datamodule.spatial_gap_km,
        "spatial_block_km": datamodule.spatial_block_km,
        "fraction": datamodule.fraction,
        "grid": {
            "kind": getattr(getattr(grid, "func", grid), "__name__", str(grid)),
            **{k: _plain(v) for k, v in getattr(grid, "keywords", {}).items()},
        },
        "country": {"boundary": datamodule.country.boundary, "crs": datamodule.country.crs},
        "image_size": datamodule.image_size,
    }


def _plain(value):
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)
