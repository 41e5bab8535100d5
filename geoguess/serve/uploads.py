"""Uploaded views as the model reads them, or a `RequestError` naming the field and why.

Every view is decoded and resized by `geoguess.data.decode.decode_image`, the function
`python -m geoguess.predict` decodes files with, so that a view uploaded here gives the
prediction the same file gives there. Its pixel count is read from the header and bounded
before any pixel is decoded (a small file may declare a huge image).
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass

import numpy as np
from PIL import Image

from geoguess.data.decode import decode_image, describe_failure
from geoguess.data.io import HEADINGS, is_plain_name

FIELDS = tuple(str(h) for h in HEADINGS)
# images/<uuid>/<heading>.jpg, optionally under one top folder (how zip tools often pack).
ZIP_MEMBER = re.compile(r"(?:[^/]+/)?images/([^/]+)/(0|90|180|270)\.jpg")


class RequestError(Exception):
    """A request the server refuses: HTTP `status`, the `field` at fault and the `reason`."""

    def __init__(self, field: str | None, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.field, self.reason, self.status = field, reason, status


@dataclass(frozen=True)
class Limits:
    max_image_bytes: int
    max_pixels: int
    max_zip_locations: int


def decode_view(data: bytes, size: int, field: str, limits: Limits) -> np.ndarray:
    """`uint8 [3, size, size]` of one uploaded image."""
    if not data:
        raise RequestError(field, "the file is empty")
    if len(data) > limits.max_image_bytes:
        raise RequestError(
            field, f"the file is larger than {limits.max_image_bytes} bytes", status=413
        )
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Image.DecompressionBombError:
        raise RequestError(field, _too_many_pixels(limits), status=413) from None
    except Exception:  # noqa: BLE001 - whatever PIL says, the bytes are not an image it reads
        raise RequestError(field, "not an image (no format PIL reads recognises it)") from None
    if width * height > limits.max_pixels:
        raise RequestError(field, f"{width}x{height} px: {_too_many_pixels(limits)}", status=413)
    try:
        return decode_image(io.BytesIO(data), size)
    except Exception as exc:  # noqa: BLE001 - truncated or damaged: the decoder's own words
        raise RequestError(field, describe_failure(exc)) from None


def _too_many_pixels(limits: Limits) -> str:
    return f"more than {limits.max_pixels} pixels; refused before decoding"


def location_from_fields(files: dict[str, bytes], size: int, limits: Limits) -> np.ndarray:
    """`uint8 [4, 3, S, S]` from the four fields `0`, `90`, `180`, `270`."""
    return np.stack([decode_view(files[f], size, f, limits) for f in FIELDS])


def check_fields(names: list[str], file_names: set[str]) -> None:
    """Exactly the four view fields, each once, each a file."""
    unknown = sorted(set(names) - set(FIELDS))
    if unknown:
        raise RequestError(
            unknown[0], f"unexpected field; send exactly the fields {', '.join(FIELDS)}"
        )
    for field in FIELDS:
        if field not in names:
            raise RequestError(field, "missing; send one image in each of 0, 90, 180, 270")
        if names.count(field) > 1:
            raise RequestError(field, "sent more than once")
        if field not in file_names:
            raise RequestError(field, "not a file upload (send it as a file part)")


def locations_from_zip(data: bytes, size: int, limits: Limits) -> tuple[list[str], np.ndarray]:
    """The uuids and `uint8 [N, 4, 3, S, S]` of a zip holding `images/<uuid>/<heading>.jpg`."""
    field = "file"
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        raise RequestError(field, "not a zip archive (or a damaged one)") from None
    views: dict[str, dict[str, zipfile.ZipInfo]] = {}
    for info in members:
        match = ZIP_MEMBER.fullmatch(info.filename)
        if info.is_dir() or match is None:
            continue
        uuid, heading = match.groups()
        if not is_plain_name(uuid):
            raise RequestError(field, f"{info.filename}: not a plain location name")
        views.setdefault(uuid, {})[heading] = info
        if len(views) > limits.max_zip_locations:
            raise RequestError(
                field, f"more than {limits.max_zip_locations} locations in one request", 413
            )
    if not views:
        raise RequestError(field, "no images/<uuid>/{0,90,180,270}.jpg in the archive")
    uuids = sorted(views)
    stacked = []
    for uuid in uuids:
        missing = [h for h in FIELDS if h not in views[uuid]]
        if missing:
            raise RequestError(field, f"images/{uuid}/{missing[0]}.jpg is missing")
        location = []
        for heading in FIELDS:
            info = views[uuid][heading]
            name = info.filename
            if info.file_size > limits.max_image_bytes:
                raise RequestError(
                    field, f"{name}: larger than {limits.max_image_bytes} bytes", 413
                )
            try:
                # Read at most one byte past the limit: a member's declared size may lie.
                with archive.open(info) as member:
                    content = member.read(limits.max_image_bytes + 1)
            except Exception:  # noqa: BLE001 - bad CRC, zlib errors, encryption: unusable
                raise RequestError(field, f"{name}: cannot be extracted") from None
            try:
                location.append(decode_view(content, size, name, limits))
            except RequestError as exc:
                raise RequestError(field, f"{name}: {exc.reason}", exc.status) from None
        stacked.append(np.stack(location))
    return uuids, np.stack(stacked)
