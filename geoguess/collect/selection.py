"""Which panoramas a collection run downloads: each found once, inside the country, not yet
in the dataset and not within `collect.min_distance_m` of one kept."""

from __future__ import annotations

import numpy as np
import pandas as pd

from geoguess.collect.settings import CollectSettings
from geoguess.collect.store import DatasetStore, MetadataJournal, location_uuid
from geoguess.geo import Country


def select_panoramas(
    plan: pd.DataFrame,
    journal: MetadataJournal,
    store: DatasetStore,
    country: Country,
    settings: CollectSettings,
) -> tuple[list[dict], dict[str, int]]:
    """The rows still to collect, in sample order, and how many panoramas were left out why.

    Besides the same panorama found twice, a panorama within `min_distance_m` of one kept
    earlier (or already in the dataset) is left out: neighbouring panoramas of one road are
    near-copies, and in different splits they would flatter the scores.
    """
    candidates, seen = [], set()
    counts = {"duplicates": 0, "already_in_dataset": 0, "outside_country": 0, "too_close": 0}
    for point in plan.itertuples():
        answer = journal.get(settings.metadata_key(point.location))
        if not answer or answer["status"] != "OK":
            continue
        pano = answer["pano_id"]
        if pano in seen:
            counts["duplicates"] += 1
            continue
        seen.add(pano)
        candidates.append(
            {
                "uuid": location_uuid(pano),
                "latitude": answer["lat"],
                "longitude": answer["lng"],
                "sample_latitude": point.sample_latitude,
                "sample_longitude": point.sample_longitude,
                "panorama_id": pano,
                "status": "OK",
                "radius": settings.radius,
            }
        )
    if not candidates:
        return [], counts
    lat = np.array([r["latitude"] for r in candidates])
    lon = np.array([r["longitude"] for r in candidates])
    inside = country.distance_outside_km(lat, lon) <= settings.outside_tolerance_km
    kept = _NearbyIndex(country, settings.min_distance_m, *store.coordinates())
    rows = []
    for row, is_inside in zip(candidates, inside, strict=True):
        if store.has(row["uuid"], row["panorama_id"]):
            counts["already_in_dataset"] += 1
        elif not is_inside:
            counts["outside_country"] += 1
        elif kept.near(row["latitude"], row["longitude"]):
            counts["too_close"] += 1
        else:
            kept.add(row["latitude"], row["longitude"])
            rows.append(row)
    return rows, counts


class _NearbyIndex:
    """Points in the country's metric CRS, hashed into cells of the minimum distance, so that
    "is any kept point within d?" looks at 9 cells, not at every point."""

    def __init__(self, country: Country, distance_m: float, lat=(), lon=()) -> None:
        self.projector, self.distance = country.projector, float(distance_m)
        self.cells: dict[tuple[int, int], list[tuple[float, float]]] = {}
        if len(lat) and self.distance > 0:
            for x, y in zip(*self.projector.forward(lat, lon), strict=True):
                self._insert(float(x), float(y))

    def _cell(self, x: float, y: float) -> tuple[int, int]:
        return int(x // self.distance), int(y // self.distance)

    def _insert(self, x: float, y: float) -> None:
        self.cells.setdefault(self._cell(x, y), []).append((x, y))

    def add(self, lat: float, lon: float) -> None:
        if self.distance > 0:
            self._insert(*(float(v) for v in self.projector.forward(lat, lon)))

    def near(self, lat: float, lon: float) -> bool:
        if self.distance <= 0:
            return False
        x, y = (float(v) for v in self.projector.forward(lat, lon))
        cx, cy = self._cell(x, y)
        return any(
            (x - px) ** 2 + (y - py) ** 2 < self.distance**2
            for i in (-1, 0, 1)
            for j in (-1, 0, 1)
            for px, py in self.cells.get((cx + i, cy + j), ())
        )
