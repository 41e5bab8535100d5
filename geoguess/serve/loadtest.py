"""Load-testing a served model: a real uvicorn server on loopback driven by locust, headless,
bounded in requests and time (both stop by themselves); and the model's own offline speed to
compare with. `make bench`'s `serve` section (`geoguess.bench.serve`) is built from these.
"""

from __future__ import annotations

import csv
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

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
HEADINGS = ("0", "90", "180", "270")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server(models_dir: Path, *overrides: str, start_timeout: float = 300, log: Path | None = None):
    """`python -m geoguess.serve` on a free loopback port until the block ends; yields (url,
    pid). Refuses to wait longer than `start_timeout` for `/health`."""
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
    sent or `max_seconds` passed. {p50_ms, p95_ms, p99_ms, requests_per_s, requests, errors}."""
    work = Path(tempfile.mkdtemp(prefix="geoguess-locust-"))
    env = {
        **os.environ,
        "GEOGUESS_LOAD_VIEWS": str(views),
        "GEOGUESS_LOAD_MODEL": model,
        "GEOGUESS_LOAD_REQUESTS": str(requests),
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
        "--csv",
        str(work / "load"),
        "--exit-code-on-error",
        "0",
        "--loglevel",
        "WARNING",
    ]
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=max_seconds + 60
        )
        if done.returncode != 0:
            raise RuntimeError(f"locust failed:\n{done.stderr[-3000:]}")
        with open(work / "load_stats.csv") as f:
            row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "p50_ms": float(row["50%"]),
        "p95_ms": float(row["95%"]),
        "p99_ms": float(row["99%"]),
        "requests_per_s": float(row["Requests/s"]),
        "requests": int(row["Request Count"]),
        "errors": int(row["Failure Count"]),
    }


def rss_bytes(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def write_views(folder: Path, source: Path | None = None, size: int = 640) -> Path:
    """Four views to post: one real location's when `source` has images/, else generated."""
    from PIL import Image

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


def offline_rate(checkpoint: Path, views: Path, batch: int, repeats: int = 3) -> float:
    """Locations per second of the predictor alone, in batches of `batch`, on the views as the
    server decodes them (the decoding is timed too: the server does it per request)."""
    import torch

    from geoguess.data.cache import decode_image
    from geoguess.serve._predictor_shim import Predictor

    predictor = Predictor.from_checkpoint(checkpoint)
    paths = [views / f"{h}.jpg" for h in HEADINGS]
    predictor.predict(
        torch.from_numpy(np.stack([decode_image(p, predictor.image_size) for p in paths]))[None]
    )
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        location = np.stack([decode_image(p, predictor.image_size) for p in paths])
        images = [location] + [
            np.stack([decode_image(p, predictor.image_size) for p in paths])
            for _ in range(batch - 1)
        ]
        predictor.predict(torch.from_numpy(np.stack(images)))
        rates.append(batch / (time.perf_counter() - start))
    return float(np.median(rates))
