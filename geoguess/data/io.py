"""Reading the on-disk format: `ROOT/data.csv` plus `ROOT/images/<uuid>/{0,90,180,270}.jpg`.

Several roots may be merged (the original combined the competition set with a collected set);
uuids must then be unique across them, which validation checks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from geoguess.errors import GeoguessError

HEADINGS = (0, 90, 180, 270)
REQUIRED_COLUMNS = ("uuid", "latitude", "longitude")
CSV_NAME = "data.csv"
IMAGES_DIR = "images"


class DataError(GeoguessError, ValueError):
    """A dataset or data setting that cannot be used; the message says how to fix it."""


def as_roots(root) -> list[Path]:
    """`data.root` as a list of paths: one path, or a list (also an OmegaConf ListConfig)."""
    if root is None or (isinstance(root, str) and root in ("", "???")):
        raise DataError("data.root is not set; pass data.root=PATH (or a list [PATH1,PATH2])")
    items = [root] if isinstance(root, str | os.PathLike) else list(root)
    if not items:
        raise DataError("data.root is an empty list; give at least one dataset folder")
    roots = [Path(str(item)).expanduser() for item in items]
    resolved = [r.resolve() for r in roots]
    if len(set(resolved)) != len(resolved):
        raise DataError(f"data.root lists the same folder twice: {[str(r) for r in roots]}")
    return roots


def image_paths(root: Path, uuid: str) -> list[Path]:
    """The four views of one location, in heading order 0, 90, 180, 270."""
    folder = Path(root) / IMAGES_DIR / uuid
    return [folder / f"{heading}.jpg" for heading in HEADINGS]


def read_csv(root: Path) -> pd.DataFrame:
    """One root's `data.csv`: uuid (str), latitude/longitude (float, NaN when not a number).

    The raw text of the coordinates is kept in `latitude_raw`/`longitude_raw` for messages;
    `row` is the 1-based data row (the header is not counted).
    """
    path = Path(root) / CSV_NAME
    if not Path(root).is_dir():
        raise DataError(f"dataset folder {root} does not exist")
    if not path.is_file():
        raise DataError(f"{path} does not exist; a dataset folder holds data.csv and images/")
    if not (Path(root) / IMAGES_DIR).is_dir():
        raise DataError(f"{Path(root) / IMAGES_DIR} does not exist; images go in images/<uuid>/")
    try:
        # Everything as text: uuids such as "1e5" or "NA" must stay strings, not numbers or NaN.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable CSV file: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path} lacks the column(s) {', '.join(missing)}; it needs at least "
            f"{','.join(REQUIRED_COLUMNS)} (found: {','.join(frame.columns)})"
        )
    out = pd.DataFrame(
        {
            "uuid": frame["uuid"].astype(str).to_numpy(),
            "latitude": pd.to_numeric(frame["latitude"].str.strip(), errors="coerce"),
            "longitude": pd.to_numeric(frame["longitude"].str.strip(), errors="coerce"),
            "latitude_raw": frame["latitude"].to_numpy(),
            "longitude_raw": frame["longitude"].to_numpy(),
        }
    )
    out["root"] = str(root)
    out["csv"] = str(path)
    out["row"] = np.arange(1, len(out) + 1)
    return out


def read_locations(roots: Sequence[Path]) -> pd.DataFrame:
    """All rows of all roots, in order; raises DataError when there is no row at all."""
    frame = pd.concat([read_csv(root) for root in roots], ignore_index=True)
    if frame.empty:
        names = ", ".join(str(Path(r) / CSV_NAME) for r in roots)
        raise DataError(f"{names} holds no locations")
    return frame


def folders_without_row(roots: Sequence[Path], uuids_by_root: dict[str, Iterable[str]]) -> int:
    """How many `images/<name>` folders have no row in their root's data.csv (they are ignored)."""
    count = 0
    for root in roots:
        known = set(uuids_by_root.get(str(root), ()))
        with os.scandir(Path(root) / IMAGES_DIR) as entries:
            count += sum(1 for e in entries if e.is_dir() and e.name not in known)
    return count


def is_plain_name(uuid: str) -> bool:
    """A uuid usable as one folder name: no separators, no `.`/`..`, not absolute, no NUL."""
    if uuid in ("", ".", "..") or "\x00" in uuid:
        return False
    if "/" in uuid or "\\" in uuid or ".." in uuid:
        return False
    return not os.path.isabs(uuid)
