"""bench.json's derived parts: figures extrapolated to large datasets, the flat dotted keys,
the printed table, and the check that every figure is a positive finite number."""

from __future__ import annotations

import math

# Dataset sizes to extrapolate the 2,000-location measurement to (docs/performance.md).
EXTRAPOLATE_TO = (16_000, 82_000)


def extrapolate(result: dict, locations: int) -> dict:
    """Time, disk and memory at `EXTRAPOLATE_TO` locations, scaled from this measurement of
    `locations` locations.

    Build time, statistics and epoch reads scale with the number of locations, allocated memory
    does not (the build holds a few rows per worker, the statistics a chunk); disk is exact
    (rows x bytes per row).
    """
    out = {}
    cold = result.get("loader", {}).get("cold", {})
    for n in EXTRAPOLATE_TO:
        entry = {}
        for size, cache in result.get("cache", {}).items():
            row_bytes = 4 * 3 * int(size) ** 2
            entry[f"cache_{size}_disk_gb"] = n * row_bytes / 1e9
            entry[f"cache_{size}_build_minutes"] = n / cache["build_locations_per_s"] / 60
            entry[f"cache_{size}_build_peak_rss_mb"] = cache["peak_rss_mb"]
        if "stats" in result:
            entry["stats_seconds"] = result["stats"]["seconds"] * n / locations
            # Allocated memory is flat; the RSS also counts the cache pages read (reclaimable).
            entry["stats_peak_anon_mb"] = result["stats"]["peak_anon_mb"]
        if cold:
            entry["cold_epoch_minutes_random"] = n / cold["random_samples_per_s"] / 60
            entry["cold_epoch_minutes_block"] = n / cold["block_samples_per_s"] / 60
        out[str(n)] = entry
    return out


def flatten(tree: dict, prefix: str = "") -> dict:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def table(result: dict) -> str:
    """The numbers as an aligned two-column table."""
    rows = []
    for key, value in flatten(result).items():
        if isinstance(value, float):
            text = f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
        else:
            text = str(value)
        rows.append((key, text))
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def finite_numbers(result: dict) -> list[str]:
    """Keys whose value is a number that is not positive and finite (should be empty)."""
    bad = []
    for key, value in flatten(result).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not (math.isfinite(value) and value > 0):
            bad.append(key)
    return bad
