"""Checks of the data modules' settings: a value the code cannot use is a `DataError` naming its
key and what it must be."""

from __future__ import annotations

import math

from geoguess.data.io import DataError


def choice(key: str, value, allowed) -> str:
    if value not in allowed:
        raise DataError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    return value


def fraction(value) -> float:
    value = float(value)
    if not (0 < value <= 1):
        raise DataError(f"data.fraction={value} must be in (0, 1]")
    return value


def non_negative(key: str, value) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise DataError(f"{key}={value} must be a non-negative number")
    return value


def positive_int(key: str, value) -> int:
    if int(value) != value or int(value) <= 0:
        raise DataError(f"{key}={value!r} must be a positive integer")
    return int(value)


def non_negative_int(key: str, value) -> int:
    if int(value) != value or int(value) < 0:
        raise DataError(f"{key}={value!r} must be a non-negative integer")
    return int(value)
