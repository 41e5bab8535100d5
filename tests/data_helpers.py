"""Small datasets in the folder format, and the defects the data tests plant in them."""

from __future__ import annotations

import copy
import shutil
import uuid as uuid_lib
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from geoguess.data.io import HEADINGS
from geoguess.geo import Country

CONF = Path(__file__).resolve().parents[1] / "conf"


@cache
def croatia() -> Country:
    return Country()


def data_settings(kind: str = "folder") -> dict:
    """The `data` group `kind` as conf/ composes it for a training run, without `_target_` and
    `root`: the settings a test gives a data module it builds itself (the defaults are written
    in the YAML alone)."""
    return copy.deepcopy(_composed_data(kind))


@cache
def _composed_data(kind: str) -> dict:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        data = compose(config_name="train", overrides=[f"data={kind}"]).data
    settings = OmegaConf.to_container(data, resolve=True)
    return {k: v for k, v in settings.items() if k not in ("_target_", "root")}


def croatia_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` random points inside Croatia (rejection sampling in its bounding box)."""
    rng = np.random.default_rng(seed)
    lon0, lat0, lon1, lat1 = croatia().bounds
    lats, lons = [], []
    while sum(map(len, lats)) < n:
        lat = rng.uniform(lat0, lat1, 4 * n)
        lon = rng.uniform(lon0, lon1, 4 * n)
        inside = croatia().contains(lat, lon)
        lats.append(lat[inside])
        lons.append(lon[inside])
    return np.concatenate(lats)[:n], np.concatenate(lons)[:n]


def make_uuids(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [str(uuid_lib.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]


def write_views(root: Path, uuid: str, size: int = 32, seed: int = 0) -> None:
    """Four JPEGs: a smooth colour field per view plus noise, like a tiny photo."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "images" / uuid
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 1, size)[None, :, None]
    for heading in HEADINGS:
        base = rng.uniform(40, 200, 3)[None, None, :] * (0.5 + ramp)
        pixels = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{heading}.jpg", quality=90)


def write_dataset(
    root: Path,
    n: int = 20,
    size: int = 32,
    seed: int = 0,
    index_column: bool = True,
    collected_columns: bool = False,
) -> pd.DataFrame:
    """A valid dataset of `n` locations inside Croatia; returns its rows (uuid, latitude, longitude)."""
    root = Path(root)
    lat, lon = croatia_points(n, seed)
    frame = pd.DataFrame({"uuid": make_uuids(n, seed), "latitude": lat, "longitude": lon})
    for i, uuid in enumerate(frame["uuid"]):
        write_views(root, uuid, size, seed * 100_003 + i)
    write_csv(root, frame, index_column, collected_columns)
    return frame


def write_csv(
    root: Path, frame: pd.DataFrame, index_column: bool = True, collected_columns: bool = False
) -> None:
    table = frame.copy()
    if collected_columns:
        # The team's collected data: its own index column plus sampling metadata.
        table.insert(0, "Unnamed: 0", np.arange(len(table)))
        table["sample_longitude"] = table["longitude"] + 0.001
        table["sample_latitude"] = table["latitude"] - 0.001
        table["row_idx"] = np.arange(len(table))
        table["status"] = "OK"
        table["radius"] = 50
        table["panorama_id"] = [f"pano{i}" for i in range(len(table))]
    # The competition's file starts with an unnamed index column: `,uuid,latitude,longitude`.
    table.to_csv(Path(root) / "data.csv", index=index_column)


def append_locations(root: Path, n: int, seed: int, size: int = 32) -> pd.DataFrame:
    """Add `n` new locations at the end of data.csv (as a growing dataset does)."""
    old = read_rows(root)
    new = write_dataset(root / ".new", n, size, seed)
    for uuid in new["uuid"]:
        shutil.move(root / ".new" / "images" / uuid, root / "images" / uuid)
    shutil.rmtree(root / ".new")
    frame = pd.concat([old, new], ignore_index=True)
    write_csv(root, frame)
    return frame


def read_rows(root: Path) -> pd.DataFrame:
    table = pd.read_csv(Path(root) / "data.csv", dtype={"uuid": str}, keep_default_na=False)
    return table[["uuid", "latitude", "longitude"]]


def set_cell(root: Path, row: int, column: str, value) -> str:
    """Overwrite one cell of data row `row` (0-based); returns that row's uuid."""
    table = pd.read_csv(Path(root) / "data.csv", dtype=str, keep_default_na=False, index_col=0)
    uuid = table["uuid"].iat[row]
    table.iat[row, table.columns.get_loc(column)] = value
    table.to_csv(Path(root) / "data.csv")
    return uuid


def view_path(root: Path, uuid: str, heading: int = 90) -> Path:
    return Path(root) / "images" / uuid / f"{heading}.jpg"


def truncate(path: Path, keep: float = 0.6) -> None:
    """Cut a JPEG short: its header stays valid, so only a full decode notices."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])


def touch_newer(path: Path) -> None:
    """Bump a file's mtime deterministically (coarse filesystems may keep the old stamp)."""
    import os

    st = Path(path).stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
