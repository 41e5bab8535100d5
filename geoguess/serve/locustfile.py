"""The load of `geoguess.serve.loadtest`: each simulated client posts the same four views to
`/models/<model>/predict` again and again; the run stops itself after a number of requests.

Read by `locust -f` in its own process (gevent), configured by environment variables:
GEOGUESS_LOAD_VIEWS (a folder holding 0.jpg, 90.jpg, 180.jpg, 270.jpg), GEOGUESS_LOAD_MODEL
and GEOGUESS_LOAD_REQUESTS.
"""

from __future__ import annotations

import os
from pathlib import Path

import gevent
from locust import FastHttpUser, events, task

VIEWS = Path(os.environ["GEOGUESS_LOAD_VIEWS"])
MODEL = os.environ["GEOGUESS_LOAD_MODEL"]
LIMIT = int(os.environ["GEOGUESS_LOAD_REQUESTS"])
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
_sent = {"count": 0, "environment": None}


@events.init.add_listener
def keep_environment(environment, **kwargs):
    _sent["environment"] = environment


@events.request.add_listener
def stop_after_limit(**kwargs):
    _sent["count"] += 1
    if _sent["count"] == LIMIT:
        gevent.spawn(_sent["environment"].runner.quit)


class Client(FastHttpUser):
    @task
    def predict(self) -> None:
        if _sent["count"] >= LIMIT:
            return
        self.client.post(f"/models/{MODEL}/predict", data=BODY, headers=HEADERS, name="predict")
