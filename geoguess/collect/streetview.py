"""Street View Static API client: URL signing, a shared request budget, retries with backoff.

Secrets live only in `Credentials`, read from the environment; every text that may reach a log,
an exception or a file goes through `Credentials.redact` first.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import io
import json
import os
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import aiohttp
import yarl
from PIL import Image

from geoguess.errors import GeoguessError

API_KEY_ENV = "GOOGLE_MAPS_API_KEY"
SIGNING_SECRET_ENV = "GOOGLE_MAPS_URL_SIGNING_SECRET"
METADATA_PATH = "/maps/api/streetview/metadata"
IMAGE_PATH = "/maps/api/streetview"
IMAGE_SIZE = "640x640"
FOV = 90  # four headings 90° apart cover the full circle

# Metadata statuses that settle a point for good; others are retried or abort the run.
FINAL_STATUSES = ("OK", "ZERO_RESULTS", "NOT_FOUND")
RETRY_STATUSES = ("OVER_QUERY_LIMIT", "UNKNOWN_ERROR")
_SECRET_PARAMS = re.compile(r"(?i)\b(key|signature)=[^&\s'\"]*")


class CollectError(GeoguessError):
    """A collection that cannot run or cannot go on with the given settings."""


class ApiRefusedError(CollectError):
    """The API refused the credentials or the request: every further request would fail too."""


class RequestFailed(Exception):
    """One request that still failed after its retries; `reason` is already redacted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BudgetExhausted(Exception):
    """The request budget is spent; the run stops and a rerun continues."""


class _Retryable(Exception):
    """A response worth another attempt (corrupt image, transient API status)."""


@dataclass(frozen=True, repr=False)
class Credentials:
    """API key and optional decoded URL-signing secret; never printed."""

    key: str
    secret: bytes | None = None

    def __repr__(self) -> str:
        secret = "REDACTED" if self.secret else "None"
        return f"Credentials(key=REDACTED, secret={secret})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        environ = os.environ if environ is None else environ
        key = environ.get(API_KEY_ENV, "").strip()
        if not key:
            raise CollectError(
                f"set the environment variable {API_KEY_ENV} to your Google Maps Platform key "
                "(keys are never read from the command line or the config)"
            )
        raw_secret = environ.get(SIGNING_SECRET_ENV, "").strip()
        return cls(key=key, secret=decode_secret(raw_secret) if raw_secret else None)

    def redact(self, text: str) -> str:
        """`text` with the key, the secret and any key=/signature= value replaced."""
        text = _SECRET_PARAMS.sub(lambda m: f"{m.group(1)}=REDACTED", text)
        for secret in (self.key, self.secret_text):
            if secret:
                text = text.replace(secret, "REDACTED")
        return text

    @property
    def secret_text(self) -> str | None:
        return base64.urlsafe_b64encode(self.secret).decode() if self.secret else None


def decode_secret(secret: str) -> bytes:
    """The signing secret as Google hands it out: URL-safe base64 (padding optional)."""
    try:
        padded = secret + "=" * (-len(secret) % 4)
        decoded = base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded:
        # The message must not echo the secret.
        raise CollectError(f"{SIGNING_SECRET_ENV} is not a URL-safe base64 signing secret")
    return decoded


def sign(path_and_query: str, secret: bytes) -> str:
    """Google's URL signature: URL-safe base64 of HMAC-SHA1(secret, path + '?' + query)."""
    digest = hmac.new(secret, path_and_query.encode(), hashlib.sha1).digest()
    return base64.urlsafe_b64encode(digest).decode()


def build_url(base_url: str, path: str, params: dict, credentials: Credentials) -> str:
    """The request URL with `key` last and, with a secret, the `signature` after it."""
    query = urlencode({**params, "key": credentials.key}, safe=",", quote_via=quote)
    path_and_query = f"{path}?{query}"
    if credentials.secret:
        path_and_query += "&signature=" + sign(path_and_query, credentials.secret)
    return base_url.rstrip("/") + path_and_query


class RequestBudget:
    """At most `limit` HTTP requests: a slot is reserved before each one is sent.

    All coroutines share one event loop thread, and `reserve` has no await between the check
    and the increment, so concurrent workers can never overdraw it.
    """

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.used = 0

    def reserve(self) -> None:
        if self.used >= self.limit:
            raise BudgetExhausted
        self.used += 1


@dataclass(frozen=True)
class RetryPolicy:
    """collect.retries, backoff, max_backoff and timeout (conf/collect.yaml holds the defaults)."""

    retries: int
    backoff: float
    max_backoff: float
    timeout: float

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Exponential backoff with jitter; a server's Retry-After wins, within max_backoff."""
        if retry_after:
            try:
                return min(self.max_backoff, max(0.0, float(retry_after)))
            except ValueError:
                pass
        base = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        # Jitter spreads retries of concurrent workers so they do not hit a 429 together.
        return base * random.uniform(0.5, 1.0)


@dataclass
class RequestStats:
    requests: int = 0
    retries: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: str) -> None:
        self.by_outcome[outcome] = self.by_outcome.get(outcome, 0) + 1


class StreetViewClient:
    """Metadata and images of the Street View Static API over one aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        credentials: Credentials,
        budget: RequestBudget,
        base_url: str,
        policy: RetryPolicy,
    ) -> None:
        self.session = session
        self.credentials = credentials
        self.budget = budget
        self.base_url = base_url
        self.policy = policy
        self.stats = RequestStats()

    async def metadata(self, location: str, radius: int, source: str) -> dict:
        """The metadata record of the panorama nearest `location` ("lat,lon"), or its status."""
        params = {"location": location, "radius": radius, "source": source}
        return await self._fetch(METADATA_PATH, params, self._parse_metadata)

    async def image(self, pano_id: str, heading: int) -> bytes:
        """A decodable JPEG of `pano_id` looking towards `heading`."""
        params = {
            "size": IMAGE_SIZE,
            "pano": pano_id,
            "heading": heading,
            "fov": FOV,
            "return_error_code": "true",
        }
        return await self._fetch(IMAGE_PATH, params, _check_jpeg)

    async def _fetch(self, path: str, params: dict, parse: Callable[[bytes], object]):
        url = yarl.URL(build_url(self.base_url, path, params, self.credentials), encoded=True)
        what = self.credentials.redact(f"{path}?{urlencode(params, safe=',')}")
        reason, retry_after = "no attempt", None
        for attempt in range(self.policy.retries + 1):
            if attempt:
                await asyncio.sleep(self.policy.delay(attempt, retry_after))
            self.budget.reserve()
            self.stats.requests += 1
            self.stats.retries += attempt > 0
            try:
                status, body, retry_after = await self._send(url)
            except (TimeoutError, asyncio.TimeoutError, aiohttp.ClientError) as exc:
                # str(exc) of aiohttp errors may hold the URL: only the type name goes on.
                reason, retry_after = type(exc).__name__, None
                self.stats.count("timeout" if isinstance(exc, TimeoutError) else "error")
                continue
            self.stats.count(str(status))
            if status in (401, 403):
                raise ApiRefusedError(
                    f"the Street View API refused {what} with HTTP {status} "
                    f"({self._excerpt(body)}): check {API_KEY_ENV} and {SIGNING_SECRET_ENV}"
                )
            if status == 429 or status >= 500:
                reason = f"HTTP {status}"
                continue
            if status != 200:
                raise RequestFailed(f"HTTP {status} ({self._excerpt(body)})")
            try:
                return parse(body)
            except _Retryable as exc:
                reason, retry_after = self.credentials.redact(str(exc)), None
        raise RequestFailed(f"{reason} after {self.policy.retries + 1} attempts")

    async def _send(self, url: yarl.URL) -> tuple[int, bytes, str | None]:
        timeout = aiohttp.ClientTimeout(total=self.policy.timeout)
        async with self.session.get(url, timeout=timeout, allow_redirects=False) as response:
            body = await response.read()
            return response.status, body, response.headers.get("Retry-After")

    def _parse_metadata(self, body: bytes) -> dict:
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _Retryable("metadata response is not JSON") from None
        status = data.get("status") if isinstance(data, dict) else None
        if status in FINAL_STATUSES:
            return _metadata_record(data)
        message = self.credentials.redact(str(data.get("error_message", "")))[:300]
        if status in RETRY_STATUSES:
            raise _Retryable(f"metadata status {status}")
        if status == "REQUEST_DENIED":
            raise ApiRefusedError(
                f"the Street View API denied the request ({message}): check {API_KEY_ENV}"
            )
        raise CollectError(f"the Street View API answered status {status!r}: {message}")

    def _excerpt(self, body: bytes) -> str:
        return self.credentials.redact(body[:200].decode("utf-8", "replace").strip()) or "no body"


def _metadata_record(data: dict) -> dict:
    if data["status"] != "OK":
        return {"status": data["status"]}
    try:
        return {
            "status": "OK",
            "pano_id": str(data["pano_id"]),
            "lat": float(data["location"]["lat"]),
            "lng": float(data["location"]["lng"]),
            "date": data.get("date"),
        }
    except (KeyError, TypeError, ValueError):
        raise _Retryable("metadata status OK without pano_id and location") from None


def _check_jpeg(body: bytes) -> bytes:
    """`body` if it decodes completely as a JPEG; truncated or foreign data is retried."""
    # The end-of-image marker catches truncation even where PIL.ImageFile.LOAD_TRUNCATED_IMAGES
    # has been switched on by some other module.
    if not body.rstrip(b"\0").endswith(b"\xff\xd9"):
        raise _Retryable("corrupt image (truncated: no JPEG end marker)")
    try:
        with Image.open(io.BytesIO(body)) as image:
            if image.format != "JPEG":
                raise _Retryable(f"image is {image.format}, not JPEG")
            image.load()
    except _Retryable:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken data
        raise _Retryable(f"corrupt image ({type(exc).__name__})") from None
    return body
