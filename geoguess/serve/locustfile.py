"""The load of `geoguess.serve.loadtest`: each simulated client posts the same four views to
`/models/<model>/predict` again and again; the run stops itself once a number of requests has
been answered, and writes every answer's latency to a JSON file.

Read by `locust -f` in its own process (gevent), configured by environment variables:
GEOGUESS_LOAD_VIEWS (a folder holding 0.jpg, 90.jpg, 180.jpg, 270.jpg), GEOGUESS_LOAD_MODEL,
GEOGUESS_LOAD_REQUESTS and GEOGUESS_LOAD_OUT (the JSON file written when locust quits).

The latencies are recorded here rather than read from locust's CSV: locust rounds them to two
significant digits and its CSV may miss the answers of the last second.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import gevent
from locust import FastHttpUser, events, task
from locust.exception import StopUser

VIEWS = Path(os.environ["GEOGUESS_LOAD_VIEWS"])
MODEL = os.environ["GEOGUESS_LOAD_MODEL"]
LIMIT = int(os.environ["GEOGUESS_LOAD_REQUESTS"])
OUT = Path(os.environ["GEOGUESS_LOAD_OUT"])
BOUNDARY = "geoguess-load-boundary"


def multipart_body() -> bytes:
    parts = []
    for heading in ("0", "90", "180", "270"):
        parts += [
            f"--{BOUNDARY}\r\n".encode(),
            f'Content-Disposition: form-data; name="{heading}"; filename="{heading}.jpg"\r\n'.encode(),
            b"Content-Type: image/jpeg\r\n\r\n",
            (VIEWS / f"{heading}.jpg").read_bytes(),
            b"\r\n",
        ]
    return b"".join([*parts, f"--{BOUNDARY}--\r\n".encode()])


BODY = multipart_body()
HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
# Requests started and answered; answers' latencies (ms) and failures; the first start and the
# last answer (perf_counter seconds), between which the rate is measured.
_load = {"started": 0, "latencies_ms": [], "errors": 0, "first": None, "last": None}
_environment = {}


@events.init.add_listener
def keep_environment(environment, **kwargs):
    _environment["it"] = environment


@events.request.add_listener
def record(response_time, exception, **kwargs):
    _load["last"] = time.perf_counter()
    _load["latencies_ms"].append(float(response_time))
    _load["errors"] += exception is not None
    if len(_load["latencies_ms"]) == LIMIT:
        gevent.spawn(_environment["it"].runner.quit)


@events.quitting.add_listener
def write_results(**kwargs):
    OUT.write_text(
        json.dumps(
            {
                "latencies_ms": _load["latencies_ms"],
                "errors": _load["errors"],
                "seconds": (_load["last"] or 0) - (_load["first"] or 0),
            }
        )
    )


class Client(FastHttpUser):
    @task
    def predict(self) -> None:
        if _load["started"] >= LIMIT:
            raise StopUser()
        _load["started"] += 1
        if _load["first"] is None:
            _load["first"] = time.perf_counter()
        self.client.post(f"/models/{MODEL}/predict", data=BODY, headers=HEADERS, name="predict")
