"""Load-testing a served model: a real uvicorn server on loopback driven by locust, headless,
bounded in requests and time (both stop by themselves); and the model's own offline speed to
compare with. `make bench`'s `serve` section (`geoguess.bench.serve`) is built from these.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from geoguess.inference import predict
from geoguess.synthetic import generate

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
HEADINGS = ("0", "90", "180", "270")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server(
    models_dir: Path,
    *overrides: str,
    start_timeout: float = 300,
    log: Path | None = None,
    env: dict | None = None,
    cwd: Path | None = None,
):
    """`python -m geoguess.serve` on a free loopback port until the block ends; yields (url,
    pid). Refuses to wait longer than `start_timeout` for `/health`."""
    # optional: httpx is no dependency of geoguess itself (huggingface_hub brings it), and only
    # the server's health checks need it.
    import httpx

    port = free_port()
    log = log or Path(tempfile.mkdtemp(prefix="geoguess-serve-")) / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "geoguess.serve",
                f"serve.models_dir={models_dir}",
                f"serve.port={port}",
                *overrides,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the server exited:\n{log.read_text()[-3000:]}")
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server was not healthy after {start_timeout} s")
                time.sleep(0.5)
            yield url, process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def drive(
    url: str, model: str, views: Path, clients: int, requests: int, max_seconds: float
) -> dict:
    """locust, headless: `clients` concurrent clients posting `views` until `requests` were
    answered or `max_seconds` passed. {p50_ms, p95_ms, p99_ms, requests_per_s, requests,
    errors}: the latency percentiles of every answer, and answers per second between the first
    request and the last answer."""
    work = Path(tempfile.mkdtemp(prefix="geoguess-locust-"))
    env = {
        **os.environ,
        "GEOGUESS_LOAD_VIEWS": str(views),
        "GEOGUESS_LOAD_MODEL": model,
        "GEOGUESS_LOAD_REQUESTS": str(requests),
        "GEOGUESS_LOAD_OUT": str(work / "load.json"),
    }
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "-u",
        str(clients),
        "-r",
        str(clients),
        "-t",
        f"{int(max_seconds)}s",
        "-s",
        "10",
        "--host",
        url,
        "--exit-code-on-error",
        "0",
        "--loglevel",
        "WARNING",
    ]
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=max_seconds + 60
        )
        if done.returncode != 0 or not (work / "load.json").exists():
            raise RuntimeError(f"locust failed:\n{done.stderr[-3000:]}")
        load = json.loads((work / "load.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    latencies = np.asarray(load["latencies_ms"], dtype=float)
    if latencies.size == 0:
        raise RuntimeError(f"locust got no answer from {url} in {max_seconds} s")
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return {
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "requests_per_s": latencies.size / load["seconds"] if load["seconds"] > 0 else 0.0,
        "requests": int(latencies.size),
        "errors": int(load["errors"]),
    }


def rss_bytes(pid: int) -> int:
    import psutil  # optional: a dev extra (pyproject.toml), needed only for the RSS readings

    return psutil.Process(pid).memory_info().rss


def write_views(folder: Path, source: Path | None = None, size: int = 640) -> Path:
    """Four views to post: one real location's when `source` has images/, else generated."""
    folder.mkdir(parents=True, exist_ok=True)
    location = None
    if source is not None and (source / "images").is_dir():
        location = next(p for p in sorted((source / "images").iterdir()) if p.is_dir())
    rng = np.random.default_rng(0)
    for heading in HEADINGS:
        if location is not None:
            shutil.copy(location / f"{heading}.jpg", folder / f"{heading}.jpg")
            continue
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{heading}.jpg", quality=90)
    return folder


def offline_rate(
    checkpoint: Path,
    views: Path,
    work: Path,
    batch_size: int,
    num_workers: int,
    locations: int = 256,
    repeats: int = 3,
) -> float:
    """Locations per second of `geoguess.predict` itself (`inference.predict`, reading and
    decoding the files in its own process as the command does by default) over a folder of
    `locations` copies of `views`, with the command's `data.batch_size` and `data.num_workers`
    (`predict_settings()`); the median of `repeats` runs, each
    timed whole, loading the checkpoint included."""
    root = work / f"offline-{locations}"
    for i in range(locations):
        folder = root / "images" / f"loc{i:05d}"
        if not folder.is_dir():
            folder.mkdir(parents=True)
            for heading in HEADINGS:
                (folder / f"{heading}.jpg").symlink_to((views / f"{heading}.jpg").resolve())

    def locations_predicted() -> int:
        frame, _ = predict(
            checkpoint,
            root,
            batch_size=batch_size,
            num_workers=num_workers,
            device="cpu",
            progress=False,
            tta=None,
            refine=None,
        )
        return len(frame)

    locations_predicted()  # warm-up: the first pass pays for allocations and caches
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = locations_predicted()
        rates.append(count / (time.perf_counter() - start))
    return float(np.median(rates))


def predict_settings() -> dict:
    """`geoguess.predict`'s own `data.batch_size` and `data.num_workers` (conf/predict.yaml):
    the offline reference runs as the command does."""
    data = OmegaConf.load(Path(__file__).parents[2] / "conf" / "predict.yaml").data
    return {key: data[key] for key in ("batch_size", "num_workers")}


def train_run(work: Path, backbone: str, image_size: int, locations: int) -> Path:
    """A finished run of `backbone` at `image_size` px: a few training steps on generated
    data (the bench times serving, not accuracy). Returns the folder holding it."""
    data = work / "serve-data"
    if not (data / "data.csv").exists():
        generate(data, num_locations=locations, seed=0, image_size=64, workers=1, progress=False)
    models = work / "serve-runs"
    run = models / backbone
    if (run / "results.json").exists():
        return models
    overrides = [
        f"backbone={backbone}",
        f"image.size={image_size}",
        "data=folder",
        f"data.root={data}",
        "logger=none",
        "data.batch_size=8",
        "data.num_workers=0",
        "data.augment=false",
        "scheduler=none",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        f"hydra.run.dir={run}",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "geoguess.train", *overrides],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"training the {backbone} run failed:\n{done.stderr[-3000:]}")
    return models


def bench(options: dict, work: Path, source: Path | None, progress=print) -> dict:
    """{<backbone>: {<clients>: {p50_ms, p95_ms, p99_ms, requests_per_s, requests, errors},
    rss_growth, offline_locations_per_s, saturation_ratio}, batching_speedup}."""
    o = dict(options)  # every key of the section (conf/bench.yaml's bench.serve_<key>)
    views = write_views(work / "serve-views", source)
    on = {"max_batch": o["max_batch"], "max_wait_ms": o["max_wait_ms"]}
    batching = {"on": [f"serve.{key}={value}" for key, value in on.items() if value is not None]}
    batching["off"] = ["serve.max_batch=1"]
    result: dict = {}
    for backbone in o["backbones"]:
        progress(f"serve: training a {backbone} run at {o['image_size']} px")
        models = train_run(work, backbone, o["image_size"], o["train_locations"])
        checkpoint = next((models / backbone / "checkpoints").glob("best-*.ckpt"))
        measured: dict = {}
        with server(models, *batching["on"]) as (url, pid):
            for clients in o["clients"]:
                progress(f"serve: {backbone}, {clients} clients")
                measured[str(clients)] = drive(
                    url, backbone, views, clients, o["requests"], o["max_seconds"]
                )
                progress(f"serve: {backbone}, {clients} clients: {measured[str(clients)]}")
            progress(f"serve: {backbone}, RSS over {o['rss_requests']} requests")
            drive(url, backbone, views, o["rss_clients"], 100, o["max_seconds"])  # warm-up
            before = rss_bytes(pid)
            drive(url, backbone, views, o["rss_clients"], o["rss_requests"], 10 * o["max_seconds"])
            measured["rss_growth"] = rss_bytes(pid) / before - 1
            progress(f"serve: {backbone}, RSS growth {measured['rss_growth']:.4f}")
        measured["offline_locations_per_s"] = offline_rate(
            checkpoint, views, work, **predict_settings()
        )
        most = str(max(o["clients"]))
        measured["saturation_ratio"] = (
            measured[most]["requests_per_s"] / measured["offline_locations_per_s"]
        )
        result[backbone] = measured
    chosen = o["batching_backbone"] or o["backbones"][-1]
    most = max(o["clients"])
    with server(work / "serve-runs", *batching["off"]) as (url, _):
        progress(f"serve: {chosen}, {most} clients, batching off")
        off = drive(url, chosen, views, most, o["requests"], o["max_seconds"])
    result["batching_speedup"] = result[chosen][str(most)]["requests_per_s"] / off["requests_per_s"]
    result["batching_off"] = {str(most): off}
    return result
