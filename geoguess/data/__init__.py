"""Datasets: the on-disk format, validation, splits, image cache and the Lightning datamodule.

Exports are resolved lazily so that light modules (`geoguess.data.io`, `.cache`, decode
workers, the synthetic generator) do not pay for importing torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "DataError": "geoguess.data.io",
    "FittedData": "geoguess.data.datamodule",
    "GeoguesserDataModule": "geoguess.data.datamodule",
    "GeoguesserDataset": "geoguess.data.dataset",
    "PredictionDataModule": "geoguess.data.datamodule",
    "ValidationReport": "geoguess.data.validate",
}

__all__ = [
    "DataError",
    "FittedData",
    "GeoguesserDataModule",
    "GeoguesserDataset",
    "PredictionDataModule",
    "ValidationReport",
]

if TYPE_CHECKING:
    from geoguess.data.datamodule import FittedData, GeoguesserDataModule, PredictionDataModule
    from geoguess.data.dataset import GeoguesserDataset
    from geoguess.data.io import DataError
    from geoguess.data.validate import ValidationReport


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
