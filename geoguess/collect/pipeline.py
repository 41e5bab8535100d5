"""One collection run: sample points, settle their metadata, download the new panoramas.

The run goes in two phases. First every sampled point's metadata (each answer journalled);
then, once all points are settled, the images of the new panoramas in sample order. A panorama
found from several points belongs to the lowest-numbered one, so an interrupted and resumed
run writes exactly the rows an uninterrupted one would.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import pandas as pd
from tqdm import tqdm

from geoguess.collect.sampling import balance_region, read_locations, sample_points
from geoguess.collect.store import (
    FAILED_COLUMNS,
    DatasetStore,
    MetadataJournal,
    failure_key,
    location_uuid,
)
from geoguess.collect.streetview import (
    DEFAULT_BASE_URL,
    BudgetExhausted,
    CollectError,
    Credentials,
    RequestBudget,
    RequestFailed,
    RetryPolicy,
    StreetViewClient,
)
from geoguess.data.io import HEADINGS
from geoguess.geo import Country
from geoguess.utils.io import write_csv_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectSettings:
    """The `collect:` block of conf/collect.yaml (never holds a secret)."""

    n: int
    out: Path
    base_url: str = DEFAULT_BASE_URL
    radius: int = 500
    source: str = "outdoor"
    concurrency: int = 8
    max_requests: int = 1000
    seed: int = 0
    balance_with: Path | None = None
    balance_below: float | None = None
    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    timeout: float = 30.0
    outside_tolerance_km: float = 1.0
    min_distance_m: float = 30.0
    progress: bool = True

    @classmethod
    def from_config(cls, cfg) -> CollectSettings:
        """From a mapping (e.g. the DictConfig `cfg.collect`), checked."""
        values = dict(cfg)
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise CollectError(f"unknown collect setting(s): {', '.join(unknown)}")
        if values.get("out") in (None, ""):
            raise CollectError("set collect.out to the dataset folder to create or extend")
        values["out"] = Path(str(values["out"])).expanduser()
        if values.get("balance_with"):
            values["balance_with"] = Path(str(values["balance_with"])).expanduser()
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        positive = {
            "n": self.n,
            "radius": self.radius,
            "concurrency": self.concurrency,
            "max_requests": self.max_requests,
            "timeout": self.timeout,
        }
        for name, value in positive.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise CollectError(f"collect.{name}={value!r} must be a positive number")
        for name in ("n", "radius", "concurrency", "max_requests", "retries"):
            if not isinstance(getattr(self, name), int):
                raise CollectError(f"collect.{name}={getattr(self, name)!r} must be an integer")
        if not isinstance(self.min_distance_m, int | float) or self.min_distance_m < 0:
            raise CollectError(f"collect.min_distance_m={self.min_distance_m!r} must be >= 0")
        if self.retries < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise CollectError("collect.retries, backoff and max_backoff must not be negative")
        if not self.base_url.startswith(("http://", "https://")):
            raise CollectError(f"collect.base_url={self.base_url!r} must start with http(s)://")

    def metadata_key(self, location: str) -> str:
        """What settles a point's metadata: answers from another server or radius do not count."""
        base = self.base_url.rstrip("/")
        return f"{base}|location={location}&radius={self.radius}&source={self.source}"


@dataclass
class Summary:
    """What a run did; `report()` is what the command prints."""

    out: str
    points: int = 0
    metadata_from_earlier_runs: int = 0
    metadata_failed: int = 0
    ok: int = 0
    zero_results: int = 0
    duplicates: int = 0
    already_in_dataset: int = 0
    outside_country: int = 0
    too_close: int = 0
    to_download: int = 0
    collected: int = 0
    failed: int = 0
    unfinished: int = 0
    rows: int = 0
    requests: int = 0
    retries: int = 0
    max_requests: int = 0
    budget_exhausted: bool = False
    seconds: float = 0.0
    responses: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def report(self) -> str:
        lines = [
            f"{self.points} points: {self.ok} with a panorama, {self.zero_results} without "
            f"({self.metadata_from_earlier_runs} settled by earlier runs"
            + (f", {self.metadata_failed} failed" if self.metadata_failed else "")
            + ")",
            f"panoramas: {self.duplicates} duplicates, {self.already_in_dataset} already in the "
            f"dataset, {self.outside_country} outside the country, {self.too_close} within "
            f"collect.min_distance_m of one kept, {self.to_download} to download",
            f"collected {self.collected} new locations, {self.failed} failed"
            + (" (see failed.csv)" if self.failed else "")
            + (f", {self.unfinished} unfinished" if self.unfinished else "")
            + f"; {self.out}/data.csv now has {self.rows} rows",
            f"{self.requests} requests ({self.retries} retries) of a budget of "
            f"{self.max_requests} in {self.seconds:.1f} s",
        ]
        if self.budget_exhausted:
            lines.append(
                "request budget spent before the end: rerun the same command (with a new "
                "collect.max_requests if you like) to continue where this run stopped"
            )
        return "\n".join(lines)


async def collect(
    settings: CollectSettings,
    country: Country,
    credentials: Credentials,
    grid_factory: Callable | None = None,
) -> Summary:
    """Run one collection into `settings.out`; resumable, see the module docstring."""
    started = time.monotonic()
    store = DatasetStore.open(settings.out)
    try:
        return await _collect(store, settings, country, credentials, grid_factory, started)
    finally:
        store.close()


async def _collect(store, settings, country, credentials, grid_factory, started) -> Summary:
    plan = load_plan(store, settings, country, grid_factory)
    summary = Summary(out=str(store.root), points=len(plan), max_requests=settings.max_requests)
    journal = MetadataJournal(store.state / "metadata.jsonl")
    budget = RequestBudget(settings.max_requests)
    policy = RetryPolicy(settings.retries, settings.backoff, settings.max_backoff, settings.timeout)
    failures = _unresolved(store.read_failed(), store, journal, settings)
    try:
        connector = aiohttp.TCPConnector(limit=settings.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            client = StreetViewClient(session, credentials, budget, settings.base_url, policy)
            try:
                await _settle_metadata(client, plan, journal, settings, summary, failures)
                if not summary.budget_exhausted:
                    await _download(
                        client, plan, journal, store, country, settings, summary, failures
                    )
            finally:
                summary.requests = client.stats.requests
                summary.retries = client.stats.retries
                summary.responses = dict(sorted(client.stats.by_outcome.items()))
    finally:
        journal.close()
        store.write_failed(failures)
    summary.failed = sum(1 for f in failures.values() if f["stage"] == "images")
    summary.metadata_failed = sum(1 for f in failures.values() if f["stage"] == "metadata")
    summary.rows = len(store.uuids)
    summary.seconds = time.monotonic() - started
    log.debug("collect summary: %s", json.dumps(summary.to_dict()))
    return summary


def load_plan(
    store: DatasetStore, settings: CollectSettings, country: Country, grid_factory: Callable | None
) -> pd.DataFrame:
    """The sampled points: `sample_latitude`, `sample_longitude`, `location` ("lat,lon").

    Without balancing the points are a pure function of the settings. With `balance_with`
    they depend on that dataset, which this very run may grow: the first run's points are
    saved and reused, so a rerun continues the same plan.
    """
    if settings.balance_with is None:
        return _plan_frame(*sample_points(country, settings.n, settings.seed))
    identity = {
        "n": settings.n,
        "seed": settings.seed,
        "balance_with": str(settings.balance_with.resolve()),
        "balance_below": settings.balance_below,
        "country": [country.boundary, str(country.crs)],
        "grid": getattr(grid_factory, "keywords", None) and dict(grid_factory.keywords),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    path = store.state / f"plan-{digest.hexdigest()[:16]}.csv"
    if path.exists():
        return _plan_frame(*pd.read_csv(path)[["sample_latitude", "sample_longitude"]].T.values)
    if grid_factory is None:
        raise CollectError("collect.balance_with needs a class grid (the `grid` config group)")
    lat, lon = read_locations(settings.balance_with)
    grid = grid_factory(country)
    region, thin = balance_region(country, grid, lat, lon, settings.balance_below)
    log.info("balancing: sampling in %d of %d classes", thin, grid.num_classes)
    plan = _plan_frame(*sample_points(country, settings.n, settings.seed, region))
    write_csv_atomic(path, plan[["sample_latitude", "sample_longitude"]], overwrite=True)
    return plan


def _plan_frame(lat: Iterable[float], lon: Iterable[float]) -> pd.DataFrame:
    # Rounded once to what the request sends (6 decimals, 0.1 m), so data.csv and the
    # request agree exactly.
    lat = np.round(np.asarray(lat, dtype=float), 6)
    lon = np.round(np.asarray(lon, dtype=float), 6)
    location = [f"{a:.6f},{b:.6f}" for a, b in zip(lat, lon, strict=True)]
    return pd.DataFrame({"sample_latitude": lat, "sample_longitude": lon, "location": location})


def _unresolved(previous: dict, store: DatasetStore, journal, settings) -> dict[str, dict]:
    """Earlier failures that are still failures (a rerun tries them again)."""
    keep = {}
    for key, row in previous.items():
        if row.get("stage") == "images" and row.get("uuid") in store.uuids:
            continue
        location = f"{float(row['sample_latitude']):.6f},{float(row['sample_longitude']):.6f}"
        if row.get("stage") == "metadata" and journal.get(settings.metadata_key(location)):
            continue
        keep[key] = row
    return keep


async def _settle_metadata(client, plan, journal, settings, summary, failures) -> None:
    keys = [settings.metadata_key(location) for location in plan["location"]]
    todo = [i for i, key in enumerate(keys) if journal.get(key) is None]
    summary.metadata_from_earlier_runs = len(plan) - len(todo)

    async def settle(i: int) -> None:
        point = plan.iloc[i]
        failure = _failure(
            "metadata",
            sample_latitude=point.sample_latitude,
            sample_longitude=point.sample_longitude,
        )
        try:
            answer = await client.metadata(point.location, settings.radius, settings.source)
        except RequestFailed as exc:
            failures[failure_key(failure)] = {**failure, "reason": exc.reason}
            return
        failures.pop(failure_key(failure), None)
        journal.add(keys[i], answer)

    with _bar(len(todo), "metadata", settings.progress) as bar:
        summary.budget_exhausted = await run_pool(todo, settle, settings.concurrency, bar)
    answers = [journal.get(key) for key in keys]
    summary.ok = sum(1 for a in answers if a and a["status"] == "OK")
    summary.zero_results = sum(1 for a in answers if a and a["status"] != "OK")


def select_panoramas(
    plan: pd.DataFrame, journal, store: DatasetStore, country: Country, settings
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


async def _download(client, plan, journal, store, country, settings, summary, failures) -> None:
    rows, counts = select_panoramas(plan, journal, store, country, settings)
    summary.duplicates = counts["duplicates"]
    summary.already_in_dataset = counts["already_in_dataset"]
    summary.outside_country = counts["outside_country"]
    summary.too_close = counts["too_close"]
    summary.to_download = len(rows)

    async def fetch(row: dict) -> None:
        location = row["uuid"]
        if not store.published(location):
            for heading in HEADINGS:
                if heading in store.staged_headings(location):
                    continue
                try:
                    data = await client.image(row["panorama_id"], heading)
                except RequestFailed as exc:
                    # Later headings are not worth the budget while this one fails.
                    failures[location] = _failure(
                        "images", **row, heading=heading, reason=exc.reason
                    )
                    return
                store.stage_image(location, heading, data)
            store.publish(location)
        failures.pop(location, None)
        summary.collected += store.append_row(row)

    with _bar(len(rows), "images", settings.progress) as bar:
        summary.budget_exhausted = await run_pool(rows, fetch, settings.concurrency, bar)
    summary.unfinished = sum(
        1 for r in rows if r["uuid"] not in store.uuids and r["uuid"] not in failures
    )


def _failure(stage: str, **values) -> dict:
    """A failed.csv row: the columns it has, empty for the others."""
    return {c: values.get(c, "") for c in FAILED_COLUMNS} | {"stage": stage}


async def run_pool(
    items: Iterable, handle: Callable[[object], Awaitable[None]], workers: int, bar
) -> bool:
    """`handle` each item with at most `workers` at a time; True when the budget ran out.

    Items not started when the budget runs out are simply left for the next run. Any other
    exception cancels the remaining workers and propagates.
    """
    items = iter(items)
    exhausted = False

    async def worker() -> None:
        nonlocal exhausted
        for item in items:  # one iterator shared by all workers: each item is taken once
            if exhausted:
                return
            try:
                await handle(item)
            except BudgetExhausted:
                exhausted = True
                return
            bar.update(1)

    tasks = [asyncio.ensure_future(worker()) for _ in range(workers)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return exhausted


def _bar(total: int, what: str, progress: bool) -> tqdm:
    # disable=None: tqdm shows itself on a terminal only, so logs and CI stay clean.
    return tqdm(
        total=total,
        desc=what,
        unit="pt" if what == "metadata" else "loc",
        disable=None if progress else True,
        file=sys.stderr,
        dynamic_ncols=True,
    )
