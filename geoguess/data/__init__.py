"""Datasets: the on-disk format, validation, splits, image cache and the Lightning data modules.

Exports are resolved lazily so that light modules (`geoguess.data.io`, `.cache`, decode
workers, the synthetic generator, the validate command) do not pay for importing torch and
Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "DataError": "geoguess.data.io",
    "FittedData": "geoguess.data.fitted",
    "FolderDataModule": "geoguess.data.datamodule",
    "GeoDataModule": "geoguess.data.datamodule",
    "GeoguesserDataset": "geoguess.data.dataset",
    "ValidationReport": "geoguess.data.validation",
}

__all__ = [
    "DataError",
    "FittedData",
    "FolderDataModule",
    "GeoDataModule",
    "GeoguesserDataset",
    "ValidationReport",
]

if TYPE_CHECKING:
    from geoguess.data.datamodule import FolderDataModule, GeoDataModule
    from geoguess.data.dataset import GeoguesserDataset
    from geoguess.data.fitted import FittedData
    from geoguess.data.io import DataError
    from geoguess.data.validation import ValidationReport


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
