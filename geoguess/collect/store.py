"""The dataset on disk, written so that a crash or a cancel never leaves a broken row or image.

Layout under `OUT`:
- `data.csv`, `images/<uuid>/{0,90,180,270}.jpg`: the competition layout the data loader reads;
- `failed.csv`: locations that still fail after retries, with the reason (absent when none);
- `.collect/metadata.jsonl`: every settled metadata answer, so a rerun asks nothing twice;
- `.collect/staging/<uuid>/`: images of a location still being downloaded. The folder moves
  into `images/` (one rename) when its four images are there, and only then is the row appended.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import logging
import os
import tempfile
import uuid
from pathlib import Path

import pandas as pd

from geoguess.collect.streetview import CollectError
from geoguess.data.io import HEADINGS
from geoguess.utils.io import atomic_write, write_csv_atomic

log = logging.getLogger(__name__)

DATA_COLUMNS = [
    "uuid",
    "latitude",
    "longitude",
    "sample_latitude",
    "sample_longitude",
    "panorama_id",
    "status",
    "radius",
]
REQUIRED_COLUMNS = ("uuid", "latitude", "longitude")
FAILED_COLUMNS = [
    "stage",
    "uuid",
    "panorama_id",
    "latitude",
    "longitude",
    "sample_latitude",
    "sample_longitude",
    "heading",
    "reason",
]
# Fixed forever: the uuid of a collected location is uuid5(this, panorama id), so a panorama
# gets the same uuid in every run and on every machine.
UUID_NAMESPACE = uuid.UUID("0c6f4a52-5b7e-4d0e-9d9c-6a1f2f3e7b41")
STATE_DIR = ".collect"


def location_uuid(panorama_id: str) -> str:
    return str(uuid.uuid5(UUID_NAMESPACE, panorama_id))


def image_name(heading: int) -> str:
    return f"{heading}.jpg"


class DatasetStore:
    """An existing or new dataset root, opened for extension."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_csv = root / "data.csv"
        self.failed_csv = root / "failed.csv"
        self.images = root / "images"
        self.state = root / STATE_DIR
        self.staging = self.state / "staging"
        self.columns: list[str] = list(DATA_COLUMNS)
        self.uuids: set[str] = set()
        self.panorama_ids: set[str] = set()
        self._coordinates: list[tuple[float, float]] = []

    @classmethod
    def open(cls, root: str | Path) -> DatasetStore:
        """Create or check `root`, repair an interrupted write, and load what it holds."""
        store = cls(Path(root).expanduser())
        store._make_dirs()
        store._lock()
        try:
            store._remove_temporaries()
            store._load_data_csv()
        except BaseException:
            store.close()
            raise
        return store

    def _lock(self) -> None:
        """One collection at a time per folder: two would append the same rows."""
        self._lock_handle = (self.state / "lock").open("w")
        try:
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_handle.close()
            raise CollectError(
                f"another collection is writing into {self.root}; wait for it to finish"
            ) from None

    def close(self) -> None:
        """Release the folder (also released when the process ends, however it ends)."""
        self._lock_handle.close()

    def _make_dirs(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise CollectError(f"collect.out={self.root} is a file, not a dataset folder")
        try:
            for folder in (self.root, self.images, self.staging):
                folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as exc:
            raise CollectError(
                f"collect.out={self.root} is not a writable folder ({exc.strerror})"
            ) from None

    def _remove_temporaries(self) -> None:
        """Half-written files of a killed run: never under a final name, so just drop them."""
        patterns = [(self.staging, "*/.*.tmp"), (self.root, ".*.csv.*.tmp")]
        for folder, pattern in patterns:
            for path in folder.glob(pattern):
                path.unlink(missing_ok=True)

    def _load_data_csv(self) -> None:
        if not self.data_csv.exists():
            atomic_write(self.data_csv, lambda tmp: tmp.write_text(_csv_line(self.columns)))
            return
        with self.data_csv.open(newline="") as handle:
            header = next(csv.reader(handle), [])
        _drop_partial_last_line(self.data_csv, fields=len(header))
        with self.data_csv.open(newline="") as handle:
            rows = list(csv.reader(handle))
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise CollectError(
                f"{self.data_csv} lacks the column(s) {', '.join(missing)}; "
                "collect.out must be a dataset folder (uuid,latitude,longitude) or a new folder"
            )
        extra = [c for c in DATA_COLUMNS if c not in header]
        if extra:
            # Once, for a dataset from elsewhere: give it our columns, empty for its rows.
            width = len(header)
            rows = [header + extra] + [
                row + [""] * (width - len(row) + len(extra)) for row in rows[1:] if row
            ]
            text = "".join(_csv_line(row) for row in rows)
            atomic_write(self.data_csv, lambda tmp: tmp.write_text(text), overwrite=True)
        self.columns = rows[0]
        at = {name: i for i, name in enumerate(self.columns)}
        for row in rows[1:]:
            row = row + [""] * (len(self.columns) - len(row))
            self.uuids.add(row[at["uuid"]])
            if row[at["panorama_id"]]:
                self.panorama_ids.add(row[at["panorama_id"]])
            with contextlib.suppress(ValueError):
                self._coordinates.append((float(row[at["latitude"]]), float(row[at["longitude"]])))
        self.uuids.discard("")

    def coordinates(self) -> tuple[list[float], list[float]]:
        """Latitudes and longitudes of the rows the dataset held when opened."""
        valid = [(a, b) for a, b in self._coordinates if abs(a) <= 90 and abs(b) <= 180]
        return [a for a, _ in valid], [b for _, b in valid]

    def has(self, location: str, panorama_id: str) -> bool:
        return location in self.uuids or panorama_id in self.panorama_ids

    def staged_headings(self, location: str) -> set[int]:
        folder = self.staging / location
        return {h for h in HEADINGS if (folder / image_name(h)).is_file()}

    def published(self, location: str) -> bool:
        """Whether images/<uuid> holds all four views (a run stopped before the row went in)."""
        return all((self.images / location / image_name(h)).is_file() for h in HEADINGS)

    def stage_image(self, location: str, heading: int, data: bytes) -> None:
        """Write a verified JPEG under a temporary name, sync it, then rename it into place."""
        folder = self.staging / location
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{heading}.jpg.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, folder / image_name(heading))
        finally:
            Path(tmp).unlink(missing_ok=True)

    def publish(self, location: str) -> None:
        """Move a complete staging folder into images/ in one rename."""
        target = self.images / location
        if target.exists():
            raise CollectError(f"{target} exists but is incomplete; remove it to download again")
        os.rename(self.staging / location, target)

    def append_row(self, row: dict) -> bool:
        """Append one row, synced to disk; False (and no write) when its uuid is already there."""
        if row["uuid"] in self.uuids:
            return False
        line = _csv_line([_cell(row.get(c, "")) for c in self.columns])
        with self.data_csv.open("a", newline="") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self.uuids.add(row["uuid"])
        self.panorama_ids.add(row["panorama_id"])
        return True

    def read_failed(self) -> dict[str, dict]:
        if not self.failed_csv.exists():
            return {}
        frame = pd.read_csv(self.failed_csv, dtype=str, keep_default_na=False)
        return {failure_key(row): row for row in frame.to_dict(orient="records")}

    def write_failed(self, failures: dict[str, dict]) -> None:
        """The still-failing locations; the file disappears once none fail."""
        if not failures:
            self.failed_csv.unlink(missing_ok=True)
            return
        frame = pd.DataFrame(list(failures.values()), columns=FAILED_COLUMNS)
        write_csv_atomic(self.failed_csv, frame, overwrite=True)


def failure_key(row: dict) -> str:
    """A failed location by uuid; a point whose metadata failed by its sample coordinates."""
    if row.get("uuid"):
        return str(row["uuid"])
    return f"point:{row['sample_latitude']},{row['sample_longitude']}"


class MetadataJournal:
    """Append-only JSON lines of settled metadata answers, keyed by the request's parameters."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict] = {}
        if path.exists():
            _drop_partial_last_line(path)
            for number, line in enumerate(path.read_text().splitlines(), 1):
                try:
                    entry = json.loads(line)
                    self.records[entry["request"]] = entry["answer"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    log.warning("ignoring unreadable line %d of %s", number, path)
        self._handle = path.open("a")

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def add(self, key: str, answer: dict) -> None:
        # Flushed, not synced: losing the tail in a power cut only costs a repeated request.
        self._handle.write(json.dumps({"request": key, "answer": answer}) + "\n")
        self._handle.flush()
        self.records[key] = answer

    def close(self) -> None:
        self._handle.close()


def _drop_partial_last_line(path: Path, fields: int | None = None) -> None:
    """Repair a file whose last line lacks its newline.

    Our appends write whole lines, so such a line is a torn write of a killed run and is cut;
    with `fields`, a last line that holds that many fields is a complete row of a file written
    elsewhere without a final newline, and gets its newline instead.
    """
    with path.open("rb") as handle:
        if handle.seek(0, os.SEEK_END) == 0:
            return
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    tail = data[keep:].decode("utf-8", "replace")
    if fields is not None and len(next(csv.reader([tail]), [])) == fields:
        with path.open("ab") as handle:
            handle.write(b"\n")
        return
    with path.open("rb+") as handle:
        handle.truncate(keep)
    log.warning("dropped an incomplete last line of %s (left by an interrupted run)", path)


def _csv_line(values: list) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _cell(value) -> str:
    if isinstance(value, float):
        return repr(value)
    return "" if value is None else str(value)
