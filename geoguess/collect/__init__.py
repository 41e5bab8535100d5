"""Collecting more data: sample points in the country, download four Street View headings each.

`python -m geoguess.collect collect.n=300 collect.out=PATH` (see docs/collect.md). The API key
and signing secret come from `GOOGLE_MAPS_API_KEY` / `GOOGLE_MAPS_URL_SIGNING_SECRET` only.
"""

from geoguess.collect.pipeline import collect
from geoguess.collect.sampling import balance_region, sample_points, thin_cells
from geoguess.collect.selection import select_panoramas
from geoguess.collect.settings import CollectSettings, Summary
from geoguess.collect.store import DATA_COLUMNS, DatasetStore, location_uuid
from geoguess.collect.streetview import (
    API_KEY_ENV,
    SIGNING_SECRET_ENV,
    CollectError,
    Credentials,
    RequestBudget,
    StreetViewClient,
    build_url,
    sign,
)

__all__ = [
    "API_KEY_ENV",
    "DATA_COLUMNS",
    "SIGNING_SECRET_ENV",
    "CollectError",
    "CollectSettings",
    "Credentials",
    "DatasetStore",
    "RequestBudget",
    "StreetViewClient",
    "Summary",
    "balance_region",
    "build_url",
    "collect",
    "location_uuid",
    "sample_points",
    "select_panoramas",
    "sign",
    "thin_cells",
]
