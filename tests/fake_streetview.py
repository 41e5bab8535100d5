"""A fake Street View Static API for tests and demos: strict, deterministic and unreliable.

    python -m tests.fake_streetview --port 8765   # then collect.base_url=http://127.0.0.1:8765

It checks every parameter and, when it has a signing secret, every signature (computed here on
the raw request target, independently of the client's code); a request that breaks the protocol
is recorded in `protocol_errors` and answered like Google would (INVALID_REQUEST, 400 or 403).

The world: the plane is cut into cells of `pano_cell_deg` degrees; a cell holds one panorama
or, for a `zero_results` share of cells, none. Every point of a cell finds its panorama, so
points in one cell give duplicate panoramas. Its reported position is the point snapped to a
~50 m lattice (a fake; the client keeps the first point's answer anyway).

Faults are a deterministic function of the request (its parameters and how often it came):
a share of requests answers 429 once, 500 twice, or stalls for `slow_s` once; a share of
images comes corrupt (truncated) once; the 90° view of a `broken` share of panoramas is always
corrupt. GET /_stats returns the request counts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import json
import math
import os
import struct
from collections import Counter
from dataclasses import dataclass, replace
from urllib.parse import parse_qsl

from aiohttp import web
from PIL import Image

from geoguess.data.io import HEADINGS as VIEW_HEADINGS

METADATA_PARAMS = {"location", "radius", "source", "key"}
IMAGE_PARAMS = {"size", "pano", "heading", "fov", "return_error_code", "key"}
HEADINGS = {str(heading) for heading in VIEW_HEADINGS}


@dataclass(frozen=True)
class FakeWorld:
    key: str = "fake-key"
    secret: str | None = None  # URL-safe base64, like Google's
    pano_cell_deg: float = 0.02
    snap_deg: float = 0.0005
    zero_results: float = 0.2
    rate_429: float = 0.05
    rate_500: float = 0.05
    rate_slow: float = 0.02
    rate_corrupt: float = 0.03
    rate_broken: float = 0.02
    slow_s: float = 2.0
    image_size: int = 640

    def without_faults(self) -> FakeWorld:
        return replace(self, rate_429=0, rate_500=0, rate_slow=0, rate_corrupt=0, rate_broken=0)


def unit(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) for `parts`."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pano_id(row: int, col: int) -> str:
    """22 URL-safe characters like Google's, decodable back to the cell."""
    packed = struct.pack(">ii", row, col)
    return base64.urlsafe_b64encode(packed + hashlib.sha1(packed).digest()[:8]).decode()[:22]


def pano_cell(pano: str) -> tuple[int, int] | None:
    try:
        raw = base64.urlsafe_b64decode(pano + "==")
    except ValueError:
        return None
    if len(raw) != 16 or hashlib.sha1(raw[:8]).digest()[:8] != raw[8:]:
        return None
    return struct.unpack(">ii", raw[:8])


class FakeStreetView:
    """The aiohttp application and its counters."""

    def __init__(self, world: FakeWorld | None = None) -> None:
        self.world = world or FakeWorld()
        self.total = 0
        self.outcomes: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        self.protocol_errors: list[str] = []
        self.served_images = 0
        self._jpegs: dict[int, bytes] = {}
        self._closing = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/maps/api/streetview/metadata", self.metadata)
        app.router.add_get("/maps/api/streetview", self.image)
        app.router.add_get("/_stats", self.stats)
        app.on_shutdown.append(self._shutdown)
        return app

    def stats_dict(self) -> dict:
        return {
            "requests": self.total,
            "images_served": self.served_images,
            "outcomes": dict(sorted(self.outcomes.items())),
            "protocol_errors": self.protocol_errors,
        }

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats_dict())

    async def _shutdown(self, app: web.Application) -> None:
        self._closing.set()  # ends stalled responses so the server closes at once

    # -- endpoints -------------------------------------------------------------------------

    async def metadata(self, request: web.Request) -> web.Response:
        self.total += 1
        params, refusal = self._check(request, METADATA_PARAMS)
        if refusal is not None:
            return refusal
        if params["key"] != self.world.key:
            return self._answer("denied", {"status": "REQUEST_DENIED", "error_message": "bad key"})
        try:
            lat, lng = (float(v) for v in params["location"].split(","))
            radius = int(params["radius"])
            assert -90 <= lat <= 90 and -180 <= lng <= 180 and radius > 0
            assert params["source"] in ("default", "outdoor")
        except (ValueError, AssertionError):
            return self._invalid(f"bad metadata parameters {sorted(params.items())}")
        fault = await self._fault(f"m|{params['location']}|{radius}")
        if fault is not None:
            return fault
        cell = (
            math.floor(lat / self.world.pano_cell_deg),
            math.floor(lng / self.world.pano_cell_deg),
        )
        if unit("empty", *cell) < self.world.zero_results:
            return self._answer("zero_results", {"status": "ZERO_RESULTS"})
        snap = self.world.snap_deg
        return self._answer(
            "ok",
            {
                "copyright": "© Fake Street View",
                "date": "2019-05",
                "location": {
                    "lat": round(round(lat / snap) * snap, 7),
                    "lng": round(round(lng / snap) * snap, 7),
                },
                "pano_id": pano_id(*cell),
                "status": "OK",
            },
        )

    async def image(self, request: web.Request) -> web.Response:
        self.total += 1
        params, refusal = self._check(request, IMAGE_PARAMS)
        if refusal is not None:
            return refusal
        if params["key"] != self.world.key:
            self.outcomes["denied"] += 1
            return web.Response(status=403, text="The provided API key is invalid.")
        size = f"{self.world.image_size}x{self.world.image_size}"
        bad = {
            "size": params["size"] != size,
            "heading": params["heading"] not in HEADINGS,
            "fov": params["fov"] != "90",
            "return_error_code": params["return_error_code"] != "true",
        }
        if any(bad.values()):
            self.protocol_errors.append(f"bad image parameters {sorted(params.items())}")
            self.outcomes["invalid"] += 1
            return web.Response(status=400, text="invalid request")
        if pano_cell(params["pano"]) is None:
            self.outcomes["404"] += 1
            return web.Response(status=404, text="no imagery")
        pano, heading = params["pano"], int(params["heading"])
        request_key = f"i|{pano}|{heading}"
        fault = await self._fault(request_key)
        if fault is not None:
            return fault
        jpeg = self._jpeg(pano, heading)
        broken = heading == 90 and unit("broken", pano) < self.world.rate_broken
        corrupt_once = self.attempts[request_key] == 1 and (self._band(request_key) == "corrupt")
        if broken or corrupt_once:
            self.outcomes["corrupt"] += 1
            return web.Response(body=jpeg[: len(jpeg) // 2], content_type="image/jpeg")
        self.outcomes["image"] += 1
        self.served_images += 1
        return web.Response(body=jpeg, content_type="image/jpeg")

    # -- protocol checks -------------------------------------------------------------------

    def _check(self, request: web.Request, expected: set[str]):
        """The query parameters, or the response refusing the request."""
        path, _, query = request.raw_path.partition("?")  # exactly as the client sent it
        if self.world.secret:
            unsigned, sep, signature = query.rpartition("&signature=")
            if not sep or not hmac.compare_digest(signature, self._signature(path, unsigned)):
                self.protocol_errors.append(f"bad or missing signature on {path}")
                self.outcomes["bad_signature"] += 1
                return None, web.Response(status=403, text="Unable to authenticate the request.")
            query = unsigned
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            return None, self._invalid(f"unparseable query on {path}")
        names = [name for name, _ in pairs]
        if sorted(names) != sorted(expected):
            return None, self._invalid(f"parameters {sorted(names)} on {path}")
        return dict(pairs), None

    def _signature(self, path: str, query: str) -> str:
        secret = base64.urlsafe_b64decode(self.world.secret + "=" * (-len(self.world.secret) % 4))
        digest = hmac.new(secret, f"{path}?{query}".encode(), hashlib.sha1).digest()
        return base64.urlsafe_b64encode(digest).decode()

    def _invalid(self, problem: str) -> web.Response:
        self.protocol_errors.append(problem)
        return self._answer("invalid", {"status": "INVALID_REQUEST", "error_message": problem})

    def _answer(self, outcome: str, data: dict) -> web.Response:
        self.outcomes[outcome] += 1
        return web.json_response(data)

    # -- faults ----------------------------------------------------------------------------

    def _band(self, request_key: str) -> str | None:
        w, u = self.world, unit("fault", request_key)
        for band, rate in (
            ("429", w.rate_429),
            ("500", w.rate_500),
            ("slow", w.rate_slow),
            ("corrupt", w.rate_corrupt),
        ):
            if u < rate:
                return band
            u -= rate
        return None

    async def _fault(self, request_key: str) -> web.Response | None:
        self.attempts[request_key] += 1
        attempt, band = self.attempts[request_key], self._band(request_key)
        if band == "429" and attempt == 1:
            self.outcomes["429"] += 1
            return web.json_response({"status": "OVER_QUERY_LIMIT"}, status=429)
        if band == "500" and attempt <= 2:
            self.outcomes["500"] += 1
            return web.Response(status=500, text="backend error")
        if band == "slow" and attempt == 1:
            self.outcomes["slow"] += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.world.slow_s)
        return None

    def _jpeg(self, pano: str, heading: int) -> bytes:
        shade = int(unit("colour", pano, heading) * 32)
        if shade not in self._jpegs:
            colour = (40 + shade * 6, 200 - shade * 4, 90 + shade * 3)
            image = Image.new("RGB", (self.world.image_size,) * 2, colour)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
            self._jpegs[shade] = buffer.getvalue()
        return self._jpegs[shade]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--key",
        default=os.environ.get("GOOGLE_MAPS_API_KEY", "fake-key"),
        help="the key it accepts (default: $GOOGLE_MAPS_API_KEY, else fake-key)",
    )
    parser.add_argument(
        "--secret",
        default=os.environ.get("GOOGLE_MAPS_URL_SIGNING_SECRET") or None,
        help="URL-safe base64 signing secret it checks (default: $GOOGLE_MAPS_URL_SIGNING_SECRET)",
    )
    parser.add_argument("--pano-cell-deg", type=float, default=FakeWorld.pano_cell_deg)
    parser.add_argument("--slow-s", type=float, default=FakeWorld.slow_s)
    parser.add_argument("--no-faults", action="store_true", help="a reliable server")
    args = parser.parse_args(argv)
    world = FakeWorld(
        key=args.key, secret=args.secret, pano_cell_deg=args.pano_cell_deg, slow_s=args.slow_s
    )
    server = FakeStreetView(world.without_faults() if args.no_faults else world)
    signed = "checks signatures" if world.secret else "no signing"
    print(f"fake Street View on http://{args.host}:{args.port} ({signed})", flush=True)
    try:
        web.run_app(server.app(), host=args.host, port=args.port, print=None)
    finally:
        print(json.dumps(server.stats_dict()), flush=True)


if __name__ == "__main__":
    main()
