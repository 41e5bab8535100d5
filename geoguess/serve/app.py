"""The HTTP API: FastAPI app over the runs of one folder (`create_app`).

Every refusal is a JSON body `{"error": reason, "field": name or null}` with a 4xx status;
an unexpected failure is logged here and answered with a plain 500, never a traceback. No
endpoint reads a server-side path named in a request: models are looked up by name in the
table built at start-up, and many locations come as an uploaded zip.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import threading
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from geoguess.serve.batching import Batcher
from geoguess.serve.models import ServedModel, discover, is_safe_name, load_all
from geoguess.serve.uploads import (
    FIELDS,
    Limits,
    RequestError,
    check_fields,
    location_from_fields,
    locations_from_zip,
)

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
BOUNDARY = Path(__file__).parents[1] / "geo" / "data" / "croatia.geojson"
MULTIPART = "multipart/form-data"


@dataclass(frozen=True)
class Settings:
    """`serve.*` of conf/serve.yaml (which holds the defaults), as plain values."""

    models_dir: str
    device: str
    tta: str | None
    refine: str | None
    top_k: int
    max_batch: int
    max_wait_ms: float
    max_image_bytes: int
    max_pixels: int
    max_zip_bytes: int
    max_zip_locations: int

    @property
    def limits(self) -> Limits:
        return Limits(self.max_image_bytes, self.max_pixels, self.max_zip_locations)

    def as_dict(self) -> dict:
        return asdict(self)


class State:
    """What the app serves; `ready` once every model is loaded."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, ServedModel] = discover(settings.models_dir)
        self.batchers: dict[str, Batcher] = {}
        self.ready = False
        self.load_error: str | None = None


def create_app(settings: Settings) -> FastAPI:
    """The app; it loads its models in the background once started (`/health` says when)."""
    state = State(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        loaded = asyncio.Event()

        def load() -> None:
            try:
                load_all(
                    state.models, settings.device, settings.top_k, settings.tta, settings.refine
                )
            except Exception as exc:  # noqa: BLE001 - reported by /health, not a dead thread
                log.exception("loading the models failed")
                state.load_error = f"{type(exc).__name__}: {exc}"
            loop.call_soon_threadsafe(loaded.set)

        async def finish_loading() -> None:
            await loaded.wait()
            for name, served in state.models.items():
                batcher = Batcher(served.predictor, settings.max_batch, settings.max_wait_ms)
                batcher.start()
                state.batchers[name] = batcher
            state.ready = state.load_error is None

        threading.Thread(target=load, name="load-models", daemon=True).start()
        waiter = asyncio.create_task(finish_loading())
        yield
        waiter.cancel()
        for batcher in state.batchers.values():
            await batcher.stop()

    app = FastAPI(
        title="geoguess",
        summary="Locate a place in the country from its four Street View headings.",
        lifespan=lifespan,
    )
    app.state.geoguess = state
    _add_error_handlers(app)
    _add_routes(app, state)
    return app


def _error(status: int, reason: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": reason, "field": field}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError):
        return _error(exc.status, exc.reason, exc.field)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return _error(422, str(first.get("msg", "invalid request")), field)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, "internal error; the server log says more")


def _model(state: State, name: str) -> tuple[ServedModel, Batcher]:
    if not is_safe_name(name):
        raise RequestError("name", "not a model name (letters, digits, _ - . and / only)", 404)
    if name not in state.models:
        raise RequestError("name", f"no model named {name!r}; GET /models lists them", 404)
    if not state.ready:
        raise RequestError(None, "the models are still loading; retry shortly", 503)
    return state.models[name], state.batchers[name]


def _check_upload(request: Request, max_bytes: int) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != MULTIPART:
        raise RequestError(
            "content-type", f"{content_type or 'none'}: send {MULTIPART}", status=415
        )
    length = request.headers.get("content-length")
    if length is None:
        raise RequestError("content-length", "missing; send the upload's length", 411)
    if not length.isdigit():
        raise RequestError("content-length", f"{length!r} is not a length")
    if int(length) == 0:
        raise RequestError("body", "the request body is empty")
    if int(length) > max_bytes:
        raise RequestError("body", f"larger than {max_bytes} bytes", status=413)


async def _form_files(
    request: Request, max_files: int, max_bytes: int
) -> tuple[list[str], dict[str, bytes]]:
    """Every field's name as sent (repeats kept), and the uploaded files' bytes by name (at
    most `max_bytes` + 1 of each: enough to tell that one is too large)."""
    form = await request.form(max_files=max_files, max_fields=max_files)
    try:
        names = [name for name, _ in form.multi_items()]
        uploads = {n: v for n, v in form.multi_items() if isinstance(v, UploadFile)}
        return names, {n: await f.read(max_bytes + 1) for n, f in uploads.items()}
    finally:
        await form.close()


def _number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _answer(name: str, rows: dict[str, np.ndarray], i: int = 0) -> dict:
    cells = [
        {
            "cell": int(cell),
            "probability": float(p),
            "latitude": float(lat),
            "longitude": float(lon),
        }
        for cell, p, lat, lon in zip(
            rows["top_cells"][i],
            rows["top_probabilities"][i],
            rows["top_cell_latitude"][i],
            rows["top_cell_longitude"][i],
            strict=True,
        )
    ]
    return {
        "model": name,
        "latitude": float(rows["latitude"][i]),
        "longitude": float(rows["longitude"][i]),
        "radius50_km": _number(rows["radius50_km"][i]),
        "radius90_km": _number(rows["radius90_km"][i]),
        "snapped": bool(rows["snapped"][i]),
        "novelty": _number(rows["novelty"][i]) if "novelty" in rows else None,
        "top_cells": cells,
    }


def _csv(uuids: list[str], rows: dict[str, np.ndarray]) -> str:
    """The CSV `python -m geoguess.predict` writes, written the same way (pandas)."""
    frame = pd.DataFrame(
        {"uuid": uuids, "latitude": rows["latitude"], "longitude": rows["longitude"]}
    )
    if np.isfinite(rows["radius50_km"]).any():
        frame["radius50_km"], frame["radius90_km"] = rows["radius50_km"], rows["radius90_km"]
    if "novelty" in rows and np.isfinite(rows["novelty"]).all():
        frame["novelty"] = rows["novelty"]
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue()


def _file_fields_body(fields) -> dict:
    """OpenAPI's description of a multipart body of one required file per field in `fields`."""
    schema = {
        "type": "object",
        "required": list(fields),
        "properties": {f: {"type": "string", "format": "binary"} for f in fields},
    }
    return {"requestBody": {"required": True, "content": {MULTIPART: {"schema": schema}}}}


VIEWS_BODY = _file_fields_body(FIELDS)
ZIP_BODY = _file_fields_body(["file"])


def _add_routes(app: FastAPI, state: State) -> None:
    settings = state.settings

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/country.geojson", summary="The country's outline the page draws")
    async def country():
        return FileResponse(BOUNDARY, media_type="application/geo+json")

    @app.get("/health", summary="200 once every model is loaded, 503 before")
    async def health():
        if state.load_error:
            return _error(503, f"loading the models failed: {state.load_error}")
        if not state.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok", "models": len(state.models)}

    @app.get("/models", summary="The runs served: name, backbone, head, classes, test km")
    async def models():
        return [served.info for served in state.models.values()]

    @app.post(
        "/models/{name:path}/predict",
        summary="Locate one place from its four views (multipart fields 0, 90, 180, 270)",
        openapi_extra=VIEWS_BODY,
    )
    async def predict(name: str, request: Request):
        served, batcher = _model(state, name)
        _check_upload(request, 4 * settings.max_image_bytes + 64_000)
        names, files = await _form_files(request, len(FIELDS) + 4, settings.max_image_bytes)
        check_fields(names, set(files))
        size = served.predictor.image_size
        images = await asyncio.to_thread(location_from_fields, files, size, settings.limits)
        rows = await batcher.predict(images[None])
        return _answer(name, rows)

    @app.post(
        "/models/{name:path}/predict-batch",
        summary="Locate every images/<uuid>/{0,90,180,270}.jpg of an uploaded zip; answers CSV",
        openapi_extra=ZIP_BODY,
        response_class=Response,
    )
    async def predict_batch(name: str, request: Request):
        served, batcher = _model(state, name)
        _check_upload(request, settings.max_zip_bytes + 64_000)
        names, files = await _form_files(request, 4, settings.max_zip_bytes)
        if names != ["file"] or "file" not in files:
            raise RequestError("file", "send exactly one field, file: a zip of images/<uuid>/")
        if len(files["file"]) > settings.max_zip_bytes:
            raise RequestError("file", f"larger than {settings.max_zip_bytes} bytes", 413)
        size = served.predictor.image_size
        uuids, images = await asyncio.to_thread(
            locations_from_zip, files["file"], size, settings.limits
        )
        rows = await batcher.predict(images)
        return Response(_csv(uuids, rows), media_type="text/csv")

    @app.get("/models/{name:path}", summary="One served run")
    async def model(name: str):
        if not is_safe_name(name) or name not in state.models:
            raise RequestError("name", f"no model named {name!r}; GET /models lists them", 404)
        return state.models[name].info
