"""A real server under a seeded stream of malformed requests: never a 5xx, never a traceback,
still healthy afterwards, its memory bounded."""

from __future__ import annotations

import io
import random
import zipfile
from collections import Counter

import httpx
import psutil
import pytest

from tests.serve_helpers import RUN_NAME, live_server, models_dir
from tests.test_serve import jpeg, png_header

SEED = 26
REQUESTS = 600
WARM_UP = 100
# The server's resident memory may grow this much between the warm-up and the end.
MAX_RSS_GROWTH = 0.25

HEADINGS = ["0", "90", "180", "270"]


def bad_image(rng: random.Random) -> bytes:
    good = jpeg((rng.randint(8, 300), rng.randint(8, 300)))
    kind = rng.randrange(6)
    if kind == 0:
        return good[: rng.randint(0, len(good) - 1)]  # truncated
    if kind == 1:
        return rng.randbytes(rng.randint(1, 3000))  # noise
    if kind == 2:
        return png_header(rng.randint(7000, 60000), rng.randint(7000, 60000))  # bomb
    if kind == 3:
        return b""
    if kind == 4:
        data = bytearray(good)  # damaged in the middle (may still decode: counted apart)
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(20, len(data))] = rng.randrange(256)
        return bytes(data)
    return b"<svg xmlns='http://www.w3.org/2000/svg'/>"


def bad_zip(rng: random.Random) -> bytes:
    if rng.random() < 0.3:
        return rng.randbytes(rng.randint(0, 2000))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(rng.randint(0, 3)):
            headings = rng.sample(HEADINGS, rng.randint(1, 4))
            for h in headings:
                name = rng.choice([f"images/loc{i}/{h}.jpg", f"x/images/../{h}.jpg", f"{h}.jpg"])
                if name in archive.namelist():
                    continue
                archive.writestr(name, bad_image(rng))
    data = buffer.getvalue()
    return data[: rng.randint(1, len(data))] if rng.random() < 0.3 else data


def malformed(rng: random.Random) -> dict:
    """One malformed request: method, path and body chosen by `rng`."""
    strange = ["../x", "..%2F..%2Fetc", "nope", "a" * 300, "%00", "ü/ß"]
    name = RUN_NAME if rng.random() < 0.8 else rng.choice(strange)
    if rng.random() < 0.25:
        files = {"file": ("a.zip", bad_zip(rng), "application/zip")}
        return {"method": "POST", "url": f"/models/{name}/predict-batch", "files": files}
    url = f"/models/{name}/predict"
    kind = rng.randrange(8)
    if kind == 0:
        return {"method": "POST", "url": url, "json": {"0": "x"}}
    if kind == 1:
        headers = {"content-type": rng.choice(["multipart/form-data", "image/jpeg", "text/plain"])}
        return {"method": "POST", "url": url, "content": rng.randbytes(200), "headers": headers}
    if kind == 2:
        return {"method": rng.choice(["GET", "PUT", "DELETE"]), "url": url}
    if rng.random() < 0.6:
        fields = rng.sample(HEADINGS, 4)  # the right fields, one of them bad
    else:
        fields = rng.sample(HEADINGS + ["extra", "file"], rng.randint(0, 6))
    files = [(f, (f"{f}.jpg", jpeg(), "image/jpeg")) for f in fields]
    if len(fields) == 4 and set(fields) == set(HEADINGS):
        j = rng.randrange(4)
        files[j] = (files[j][0], ("x.jpg", bad_image(rng), "image/jpeg"))
    if rng.random() < 0.3 and files:
        files.append(files[0])  # a field twice
    return {
        "method": "POST",
        "url": url,
        "files": files or None,
        "data": {"note": "x"} if rng.random() < 0.2 else None,
    }


@pytest.mark.slow
def test_a_seeded_stream_of_malformed_requests_leaves_the_server_healthy(tmp_path_factory):
    models = models_dir(tmp_path_factory.getbasetemp())
    rng = random.Random(SEED)
    statuses: Counter = Counter()
    with live_server(models, tmp_path_factory.mktemp("fuzz")) as (url, pid):
        server = psutil.Process(pid)
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(REQUESTS):
                if i == WARM_UP:
                    rss_start = server.memory_info().rss
                response = client.request(**malformed(rng))
                statuses[response.status_code] += 1
                assert response.status_code < 500, (i, response.text)
                assert "Traceback" not in response.text
                if response.status_code >= 400:
                    assert response.json()["error"]
            assert client.get("/health").json()["status"] == "ok"
        rss_end = server.memory_info().rss
    growth = rss_end / rss_start - 1
    print(
        f"statuses {dict(sorted(statuses.items()))}, RSS {rss_start >> 20} -> {rss_end >> 20} MiB"
    )
    assert sum(statuses.values()) == REQUESTS
    assert sum(n for s, n in statuses.items() if s >= 400) >= 500
    assert growth <= MAX_RSS_GROWTH, f"RSS grew {growth:.0%}"
