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

import aiohttp
import numpy as np
import pandas as pd
from tqdm import tqdm

from geoguess.collect.sampling import balance_region, read_locations, sample_points
from geoguess.collect.selection import select_panoramas
from geoguess.collect.settings import CollectSettings, Summary
from geoguess.collect.store import FAILED_COLUMNS, DatasetStore, MetadataJournal, failure_key
from geoguess.collect.streetview import (
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
