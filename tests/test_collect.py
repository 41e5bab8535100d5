"""geoguess.collect against the fake Street View server on 127.0.0.1 (no internet)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import os
import subprocess
import sys
import threading
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from aiohttp import web
from aiohttp.test_utils import TestServer
from omegaconf import OmegaConf

from geoguess.collect import (
    API_KEY_ENV,
    DATA_COLUMNS,
    SIGNING_SECRET_ENV,
    CollectError,
    CollectSettings,
    Credentials,
    DatasetStore,
    balance_region,
    build_url,
    collect,
    location_uuid,
    sample_points,
    sign,
    thin_cells,
)
from geoguess.collect.pipeline import load_plan
from geoguess.collect.streetview import (
    ApiRefusedError,
    RequestBudget,
    RetryPolicy,
    StreetViewClient,
)
from geoguess.geo import Country, build_grid, haversine_km
from tests.conftest import REPO_ROOT
from tests.fake_streetview import FakeStreetView, FakeWorld

KEY = "AIzaTEST-key-4f1c9e2b7a"
SECRET_BYTES = b"test signing secret 0123"
SECRET = base64.urlsafe_b64encode(SECRET_BYTES).decode()
CREDENTIALS = Credentials(KEY, SECRET_BYTES)
# Coarse panorama cells give duplicates among a few dozen points; a large broken share makes
# sure some location fails for good; slow_s well above the client timeout.
WORLD = FakeWorld(key=KEY, secret=SECRET, pano_cell_deg=0.2, rate_broken=0.1, slow_s=3.0)
N = 40


@pytest.fixture(scope="module")
def country() -> Country:
    return Country()


def yaml_settings() -> dict:
    """conf/collect.yaml's `collect:` block: the one place of the settings' defaults."""
    return OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "collect.yaml").collect)


def settings(out: Path, base_url: str, **overrides) -> CollectSettings:
    values = dict(
        n=N,
        out=out,
        base_url=base_url,
        seed=7,
        concurrency=4,
        max_requests=1000,
        retries=5,
        backoff=0.01,
        max_backoff=0.05,
        timeout=1.0,
        progress=False,
    )
    return CollectSettings(**{**yaml_settings(), **values, **overrides})


@asynccontextmanager
async def fake_server(world: FakeWorld = WORLD, port: int | None = None):
    fake = FakeStreetView(world)
    server = TestServer(fake.app(), port=port)
    await server.start_server()
    try:
        yield fake, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def rows_of(out: Path) -> pd.DataFrame:
    frame = pd.read_csv(out / "data.csv", dtype=str, keep_default_na=False)
    return frame.sort_values("uuid").reset_index(drop=True)


def rows_written(out: Path) -> int:
    path = out / "data.csv"
    return len(path.read_text().splitlines()) - 1 if path.exists() else 0


def failed_uuids(out: Path) -> set[str]:
    if not (out / "failed.csv").exists():
        return set()
    return set(pd.read_csv(out / "failed.csv", dtype=str)["uuid"])


def files_under(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def reference(country, tmp_path_factory):
    """One uninterrupted collection: (out folder, summary, fake server, its port)."""
    out = tmp_path_factory.mktemp("reference") / "out"

    async def run():
        async with fake_server() as (fake, url):
            summary = await collect(settings(out, url), country, CREDENTIALS)
        return summary, fake, int(url.rsplit(":", 1)[1])

    return (out, *asyncio.run(run()))


# ------------------------------------------------------------------------------------------
# Signing, credentials, sampling, storage


def test_signature_is_googles_hmac_sha1_in_url_safe_base64():
    # Wikipedia's HMAC-SHA1 test vector; "a2V5" is the URL-safe base64 secret for b"key".
    message = "The quick brown fox jumps over the lazy dog"
    expected = base64.urlsafe_b64encode(bytes.fromhex("de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9"))
    assert sign(message, base64.urlsafe_b64decode("a2V5")) == expected.decode()
    assert sign(message, b"key") == "3nybhbi3iqa8ino29wqQcBydtNk="
    url = build_url(
        "https://maps.googleapis.com/",
        "/maps/api/streetview/metadata",
        {"location": "45.1,15.2", "radius": 500, "source": "outdoor"},
        Credentials("K", b"key"),
    )
    signed = "/maps/api/streetview/metadata?location=45.1,15.2&radius=500&source=outdoor&key=K"
    digest = hmac.new(b"key", signed.encode(), hashlib.sha1).digest()
    assert url == (
        f"https://maps.googleapis.com{signed}&signature="
        + base64.urlsafe_b64encode(digest).decode()
    )
    unsigned = build_url("http://h", "/p", {"a": 1}, Credentials("K"))
    assert unsigned == "http://h/p?a=1&key=K"


def test_credentials_come_from_the_environment_and_never_show():
    with pytest.raises(CollectError, match=API_KEY_ENV):
        Credentials.from_env({})
    with pytest.raises(CollectError, match=SIGNING_SECRET_ENV) as error:
        Credentials.from_env({API_KEY_ENV: KEY, SIGNING_SECRET_ENV: "%%not-base64%%"})
    assert "%%not-base64%%" not in str(error.value)
    credentials = Credentials.from_env({API_KEY_ENV: KEY, SIGNING_SECRET_ENV: SECRET})
    assert credentials == CREDENTIALS
    assert KEY not in repr(credentials) and SECRET not in repr(credentials)
    text = credentials.redact(f"GET /x?key={KEY}&signature=abc, then {KEY} and {SECRET}")
    assert KEY not in text and SECRET not in text and "abc" not in text
    assert "key=REDACTED&signature=REDACTED" in text


def test_settings_refuse_bad_input(tmp_path):
    base = {**yaml_settings(), "n": 5, "out": str(tmp_path / "out")}
    assert CollectSettings.from_config(base).out == tmp_path / "out"
    for bad, message in [
        ({"n": 0}, "collect.n=0 must be a positive number"),
        ({"n": 2.5}, "collect.n=2.5 must be an integer"),
        ({"out": None}, "set collect.out"),
        ({"max_requests": -1}, "collect.max_requests=-1"),
        ({"base_url": "ftp://x"}, "must start with http"),
        ({"api_key": KEY}, "unknown collect setting"),
    ]:
        with pytest.raises(CollectError, match=message) as error:
            CollectSettings.from_config({**base, **bad})
        assert KEY not in str(error.value)
    without_radius = {k: v for k, v in base.items() if k != "radius"}
    with pytest.raises(CollectError, match="collect setting\\(s\\) missing: radius"):
        CollectSettings.from_config(without_radius)
    # Journalled answers belong to the server that gave them.
    other = CollectSettings.from_config({**base, "base_url": "http://127.0.0.1:8765"})
    assert other.metadata_key("45.1,16.2") != CollectSettings.from_config(base).metadata_key(
        "45.1,16.2"
    )
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(CollectError, match="not a writable folder"):
        DatasetStore.open(blocker / "out")


def test_sampling_is_uniform_by_area_inside_and_deterministic(country):
    n = 200_000
    lat, lon = sample_points(country, n, seed=3)
    assert country.contains(lat, lon).all()
    again = sample_points(country, n, seed=3)
    np.testing.assert_array_equal(lat, again[0])
    prefix = sample_points(country, 500, seed=3)
    np.testing.assert_array_equal(prefix[0], lat[:500])  # a larger n extends, not replaces
    assert not np.array_equal(sample_points(country, 500, seed=4)[0], prefix[0])

    # Uniform by area: the mean northing is the area centroid's, within sampling error.
    # Uniform in degrees would crowd the north (a degree of longitude is shorter there).
    def northing_z(lat, lon) -> float:
        _, y = country.projector.forward(lat, lon)
        return (y.mean() - country.projected_geometry.centroid.y) / (y.std() / np.sqrt(len(y)))

    assert abs(northing_z(lat, lon)) < 3.5
    rng = np.random.default_rng(3)
    lon0, lat0, lon1, lat1 = country.bounds
    d_lat, d_lon = rng.uniform(lat0, lat1, 3 * n), rng.uniform(lon0, lon1, 3 * n)
    keep = shapely.contains_xy(country.geometry, d_lon, d_lat)
    assert northing_z(d_lat[keep][:n], d_lon[keep][:n]) > 3.5  # the check has teeth


def test_balance_with_samples_only_thin_classes_and_keeps_its_plan(country, tmp_path):
    grid = build_grid(country, 0.5, drop_empty=True)
    lat, lon = sample_points(country, 400, seed=1)
    zagreb = np.full(300, 45.81), np.full(300, 15.98)
    lat, lon = np.concatenate([lat, zagreb[0]]), np.concatenate([lon, zagreb[1]])
    thin = thin_cells(grid, lat, lon, below=None)
    assert not thin[grid.assign(np.array([45.81]), np.array([15.98]))[0]]
    assert 0 < thin.sum() < grid.num_classes
    region, n_thin = balance_region(country, grid, lat, lon, below=None)
    assert n_thin == thin.sum()
    new_lat, new_lon = sample_points(country, 2000, seed=2, region=region)
    assert thin.to_numpy()[grid.assign(new_lat, new_lon, nearest=False)].all()
    assert country.contains(new_lat, new_lon).all()

    # Through the pipeline: the plan is saved, so growing the balance dataset mid-collection
    # (it may be collect.out itself) does not move the points of a resumed run.
    existing = tmp_path / "existing"
    existing.mkdir()
    pd.DataFrame({"uuid": range(len(lat)), "latitude": lat, "longitude": lon}).to_csv(
        existing / "data.csv", index=False
    )
    config = settings(tmp_path / "out", "http://unused", n=50, balance_with=existing)
    store = DatasetStore.open(config.out)
    factory = partial(build_grid, spacing=0.5, drop_empty=True)
    plan = load_plan(store, config, country, factory)
    assert thin.to_numpy()[grid.assign(plan.sample_latitude, plan.sample_longitude)].all()
    pd.DataFrame({"uuid": [0], "latitude": [45.0], "longitude": [15.0]}).to_csv(
        existing / "data.csv", index=False
    )
    pd.testing.assert_frame_equal(load_plan(store, config, country, factory), plan)
    store.close()


def test_store_extends_a_foreign_dataset_and_never_duplicates(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # Pandas' index column without a name and no final newline, as files from elsewhere come.
    (out / "data.csv").write_text(",uuid,latitude,longitude\n0,a,45.1,15.9\n1,b,45.2,16.0")
    store = DatasetStore.open(out)
    assert store.columns == ["", "uuid", "latitude", "longitude", *DATA_COLUMNS[3:]]
    assert store.uuids == {"a", "b"}
    row = {"uuid": location_uuid("P1"), "latitude": 45.3, "longitude": 16.1,
           "sample_latitude": 45.30001, "sample_longitude": 16.1, "panorama_id": "P1",
           "status": "OK", "radius": 500}  # fmt: skip
    assert store.append_row(row) and not store.append_row(row)
    # A torn last line, as a power cut in the middle of an append would leave it:
    with (out / "data.csv").open("a") as handle:
        handle.write(",torn-uuid,45.")
    store.close()
    store = DatasetStore.open(out)
    frame = pd.read_csv(out / "data.csv", dtype=str, keep_default_na=False)
    assert frame["uuid"].tolist() == ["a", "b", location_uuid("P1")]
    assert frame.loc[2, "panorama_id"] == "P1" and frame.loc[0, "panorama_id"] == ""
    assert store.has("x", "P1") and store.has(location_uuid("P1"), "")
    assert location_uuid("P1") == location_uuid("P1") != location_uuid("P2")
    with pytest.raises(CollectError, match="another collection is writing"):
        DatasetStore.open(out)
    store.close()
    DatasetStore.open(out).close()


# ------------------------------------------------------------------------------------------
# Collection against the fake server


def test_collection_is_valid_dataset_with_faults_survived(reference, country, tmp_path):
    from geoguess.data.validation import validate_dataset

    out, summary, fake, _ = reference
    assert fake.protocol_errors == []  # every parameter and every signature was right
    assert fake.total == summary.requests <= 1000
    for fault in ("429", "500", "slow", "corrupt", "zero_results"):
        assert fake.outcomes[fault] > 0, fault
    assert summary.retries > 0 and summary.duplicates > 0 and summary.zero_results > 0
    assert summary.points == N == summary.ok + summary.zero_results

    rows = rows_of(out)
    assert list(pd.read_csv(out / "data.csv", nrows=0).columns) == DATA_COLUMNS
    assert len(rows) == summary.collected == summary.rows == summary.to_download - summary.failed
    assert rows["uuid"].is_unique and rows["panorama_id"].is_unique
    assert (rows["uuid"] == rows["panorama_id"].map(location_uuid)).all()
    assert set(rows["status"]) == {"OK"} and set(rows["radius"]) == {"500"}
    moved = haversine_km(*(rows[c].astype(float) for c in DATA_COLUMNS[1:5]))
    assert (moved < 0.1).all()  # the fake snaps each point to its panorama within 50 m

    failed = pd.read_csv(out / "failed.csv", dtype=str)
    assert len(failed) == summary.failed > 0
    assert set(failed["stage"]) == {"images"} and set(failed["heading"]) == {"90"}
    assert failed["reason"].str.contains("corrupt image").all()
    assert not set(failed["uuid"]) & set(rows["uuid"])
    assert {p.name for p in (out / "images").iterdir()} == set(rows["uuid"])
    assert not [p for p in files_under(out) if p.name.endswith(".tmp")]

    report = validate_dataset(
        [out], country, 5.0, cache_root=tmp_path / "verdicts", workers=1, progress=False
    )
    assert report.problems == [], report.summary()
    assert report.n_rows == len(rows) and report.folders_without_row == 0


def test_rerun_repairs_a_torn_row_and_only_retries_failures(reference, country, tmp_path):
    source, summary, _, port = reference
    out = tmp_path / "out"
    subprocess.run(["cp", "-a", str(source), str(out)], check=True)
    lines = (out / "data.csv").read_text().splitlines(keepends=True)
    torn = lines[-1][:20]  # the last row half written; its images are already in images/
    (out / "data.csv").write_text("".join(lines[:-1]) + torn)
    staged = out / ".collect" / "staging" / next(iter(failed_uuids(out)))
    (staged / ".90.jpg.abc.tmp").write_bytes(b"\xff\xd8 half an image")

    async def rerun():
        # The same address: answers journalled from another server would not count.
        async with fake_server(port=port) as (fake, url):
            again = await collect(settings(out, url), country, CREDENTIALS)
        return again, fake

    again, fake = asyncio.run(rerun())
    # No metadata asked again; only the failed views, each with all its attempts.
    assert again.metadata_from_earlier_runs == N
    assert fake.total == again.requests == summary.failed * 6
    assert again.collected == 1 and again.failed == summary.failed
    pd.testing.assert_frame_equal(rows_of(out), rows_of(source))
    assert failed_uuids(out) == failed_uuids(source)
    assert not (staged / ".90.jpg.abc.tmp").exists()


def test_budget_is_never_exceeded_and_reruns_finish_the_same_rows(reference, country, tmp_path):
    source, summary, *_ = reference
    out = tmp_path / "out"

    async def runs():
        async with fake_server() as (fake, url):
            sent = []
            for budget in (25, 60, 1000):
                before = fake.total
                result = await collect(
                    settings(out, url, max_requests=budget, concurrency=8), country, CREDENTIALS
                )
                sent.append((fake.total - before, result))
        return sent

    (first_sent, first), (second_sent, second), (_, last) = asyncio.run(runs())
    assert first_sent == first.requests == 25 and first.budget_exhausted
    assert first.collected == 0  # images wait until every point's metadata is settled
    assert second_sent == second.requests <= 60 and second.budget_exhausted
    assert 0 < second.collected < summary.collected
    assert not last.budget_exhausted
    pd.testing.assert_frame_equal(rows_of(out), rows_of(source))
    assert failed_uuids(out) == failed_uuids(source)


def test_cancelled_run_resumes_to_exactly_the_uninterrupted_rows(reference, country, tmp_path):
    source, summary, *_ = reference
    out = tmp_path / "out"

    async def interrupt_and_resume():
        async with fake_server() as (_, url):
            config = settings(out, url)
            task = asyncio.ensure_future(collect(config, country, CREDENTIALS))
            while not task.done() and rows_written(out) < 10:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            cut = rows_of(out)
            # Whatever was in flight: no image under a final name without its three siblings.
            for folder in (out / "images").iterdir():
                assert sorted(p.name for p in folder.iterdir()) == [
                    "0.jpg", "180.jpg", "270.jpg", "90.jpg"
                ]  # fmt: skip
            resumed = await collect(config, country, CREDENTIALS)
        return cut, resumed

    cut, resumed = asyncio.run(interrupt_and_resume())
    assert 10 <= len(cut) < summary.collected
    assert resumed.collected == summary.collected - len(cut)
    pd.testing.assert_frame_equal(rows_of(out), rows_of(source))
    assert failed_uuids(out) == failed_uuids(source)


def test_refused_credentials_abort_without_showing_them(tmp_path):
    yaml = yaml_settings()

    async def attempt(credentials: Credentials):
        async with fake_server() as (fake, url):
            import aiohttp

            async with aiohttp.ClientSession() as session:
                policy = RetryPolicy(
                    **{f.name: yaml[f.name] for f in dataclasses.fields(RetryPolicy)}
                )
                client = StreetViewClient(session, credentials, RequestBudget(10), url, policy)
                with pytest.raises(ApiRefusedError) as error:
                    await client.metadata("45.000000,16.000000", yaml["radius"], yaml["source"])
        return str(error.value), fake.total

    message, sent = asyncio.run(attempt(Credentials("wrong-key-123", SECRET_BYTES)))
    assert "denied" in message and "wrong-key-123" not in message and sent == 1
    message, sent = asyncio.run(attempt(Credentials(KEY, b"another secret")))
    assert "HTTP 403" in message and "/maps/api/streetview/metadata" in message and sent == 1
    assert KEY not in message and "signature" not in message


# ------------------------------------------------------------------------------------------
# The command


class ThreadedFakeServer:
    """The fake server on its own thread, for the command run as a separate process."""

    def __init__(self, world: FakeWorld) -> None:
        self.fake = FakeStreetView(world)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        self.runner = web.AppRunner(self.fake.app())
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        host, port = self.runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def run_cli(*overrides: str, env: dict) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in (API_KEY_ENV, SIGNING_SECRET_ENV)}
    return subprocess.run(
        [sys.executable, "-m", "geoguess.collect", *overrides],
        cwd=REPO_ROOT,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_command_collects_and_the_secrets_appear_nowhere(tmp_path):
    out, run = tmp_path / "out", tmp_path / "run"
    secrets = {API_KEY_ENV: KEY, SIGNING_SECRET_ENV: SECRET}
    world = dataclasses.replace(WORLD, pano_cell_deg=0.02, rate_broken=0)
    with ThreadedFakeServer(world) as url:
        result = run_cli(
            "collect.n=12", f"collect.out={out}", f"collect.base_url={url}",
            "collect.backoff=0.01", "collect.timeout=1", f"hydra.run.dir={run}", env=secrets,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "12 points" in result.stdout and "collected" in result.stdout
    rows = pd.read_csv(out / "data.csv")
    assert len(rows) > 0 and len(list((out / "images").iterdir())) == len(rows)
    assert (run / ".hydra" / "config.yaml").exists() and (run / "summary.json").exists()
    assert OmegaConf.load(run / ".hydra" / "config.yaml").collect.n == 12
    files = files_under(out, run)
    assert len(files) > 4 * len(rows)
    for secret in (KEY, SECRET, SECRET_BYTES.decode()):
        assert secret not in result.stdout + result.stderr
        assert not [p for p in files if secret.encode() in p.read_bytes()], secret


def test_command_refuses_missing_or_command_line_secrets(tmp_path):
    result = run_cli(f"collect.out={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'a'}", env={})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: set the environment variable {API_KEY_ENV}")
    result = run_cli(
        f"+collect.key={KEY}", f"collect.out={tmp_path / 'out'}",
        f"hydra.run.dir={tmp_path / 'b'}", env={API_KEY_ENV: KEY},
    )  # fmt: skip
    assert result.returncode == 2 and API_KEY_ENV in result.stderr
    assert KEY not in result.stderr
    assert not (tmp_path / "b").exists()  # refused before Hydra saved the command line


def test_panoramas_near_one_kept_are_left_out(tmp_path):
    """Neighbouring panoramas of one road would straddle the splits: only the first is kept."""
    from geoguess.collect.selection import select_panoramas
    from geoguess.collect.settings import CollectSettings

    settings = CollectSettings(**{**yaml_settings(), "n": 5, "out": tmp_path, "min_distance_m": 30})
    zagreb = (45.8150, 15.9819)
    # Sample order: a panorama, one 20 m north of it, one 50 m north, the first again, and
    # one 10 m from a location already in the dataset.
    metres = 1 / 111_195  # degrees of latitude per metre
    answers = [
        ("a", zagreb[0], zagreb[1]),
        ("b", zagreb[0] + 20 * metres, zagreb[1]),
        ("c", zagreb[0] + 50 * metres, zagreb[1]),
        ("a", zagreb[0], zagreb[1]),
        ("d", 45.3271 + 10 * metres, 14.4422),
    ]
    plan = pd.DataFrame(
        {
            "location": [f"p{i}" for i in range(5)],
            "sample_latitude": [a[1] for a in answers],
            "sample_longitude": [a[2] for a in answers],
        }
    )
    journal = {
        settings.metadata_key(f"p{i}"): {"status": "OK", "pano_id": pano, "lat": lat, "lng": lon}
        for i, (pano, lat, lon) in enumerate(answers)
    }

    class Store:  # a dataset already holding a location in Rijeka
        def has(self, uuid, pano):
            return False

        def coordinates(self):
            return [45.3271], [14.4422]

    class Journal:
        def get(self, key):
            return journal.get(key)

    rows, counts = select_panoramas(plan, Journal(), Store(), Country(), settings)
    assert [r["panorama_id"] for r in rows] == ["a", "c"]
    assert counts == {
        "duplicates": 1,
        "already_in_dataset": 0,
        "outside_country": 0,
        "too_close": 2,
    }
    # min_distance_m=0 keeps every distinct panorama.
    settings = CollectSettings(**{**yaml_settings(), "n": 5, "out": tmp_path, "min_distance_m": 0})
    journal = {
        settings.metadata_key(k.split("location=")[1].split("&")[0]): v for k, v in journal.items()
    }
    rows, _ = select_panoramas(plan, Journal(), Store(), Country(), settings)
    assert [r["panorama_id"] for r in rows] == ["a", "b", "c", "d"]
