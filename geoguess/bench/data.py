"""The bench's dataset: real locations replicated by links, or generated stand-ins, and the
original's naive decoding (the reference the cache and the loader are compared with).

No torch here: `in_subprocess` children import this module, and their memory figures must
count only the measured work.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from geoguess.data.io import image_paths

REAL_SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real-sample"
SOURCE_SIZE = 640  # side of the generated stand-in images, as the real ones


def prepare_data(work: Path, locations: int, source: Path | None = None) -> tuple[Path, str]:
    """`work/data`: `locations` locations linking to the views of `source` (or generated ones).

    Returns (root, description). Real data, replicated by symbolic links to each location's
    folder under new uuids, gives real decode costs without copying images.
    """
    root = work / "data"
    if source is None and (REAL_SAMPLE / "data.csv").exists():
        source = REAL_SAMPLE
    if source is None:
        source = work / "generated"
        if not (source / "data.csv").exists():
            generate_views(source, min(100, locations))
        description = f"{locations} locations replicated from generated 640x640 JPEGs"
    else:
        description = f"{locations} locations replicated from {source}"
    if (root / "data.csv").exists():
        return root, description
    table = pd.read_csv(source / "data.csv", dtype={"uuid": str}, keep_default_na=False)
    table = table[["uuid", "latitude", "longitude"]]
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(locations):
        row = table.iloc[k % len(table)]
        uuid = f"{row.uuid}-r{k // len(table):04d}"
        (root / "images" / uuid).symlink_to((source / "images" / row.uuid).resolve())
        rows.append((uuid, row.latitude, row.longitude))
    frame = pd.DataFrame(rows, columns=["uuid", "latitude", "longitude"])
    frame.to_csv(root / "data.csv", index=False)
    return root, description


def generate_views(root: Path, locations: int, seed: int = 0) -> None:
    """Photograph-like 640x640 JPEGs (smooth structure plus fine texture, quality 90)."""
    rng = np.random.default_rng(seed)
    lat = rng.uniform(45.0, 46.0, locations)
    lon = rng.uniform(15.5, 17.5, locations)
    uuids = [f"{seed:04d}{k:04d}-0000-4000-8000-{k:012d}" for k in range(locations)]
    for uuid in uuids:
        folder = root / "images" / uuid
        folder.mkdir(parents=True, exist_ok=True)
        for heading in (0, 90, 180, 270):
            pixels = _photo_like(rng, SOURCE_SIZE)
            Image.fromarray(pixels).save(folder / f"{heading}.jpg", quality=90)
    frame = pd.DataFrame({"uuid": uuids, "latitude": lat, "longitude": lon})
    frame.to_csv(root / "data.csv", index=False)


def _photo_like(rng: np.random.Generator, size: int) -> np.ndarray:
    image = np.zeros((size, size, 3), dtype=np.float64)
    for cells, weight in ((4, 90.0), (16, 40.0), (64, 20.0), (size, 12.0)):
        noise = rng.normal(0.0, 1.0, (cells, cells, 3))
        layer = Image.fromarray(((noise + 4) * 30).clip(0, 255).astype(np.uint8))
        layer = np.asarray(layer.resize((size, size), Image.Resampling.BICUBIC), np.float64)
        image += weight * (layer / 120.0 - 1.0)
    sky = np.linspace(60, -60, size)[:, None, None]
    return (image + sky + 128).clip(0, 255).astype(np.uint8)


def dataset_frame(root: Path) -> pd.DataFrame:
    """The dataset table of `root` as the suite's datasets take it."""
    frame = pd.read_csv(root / "data.csv", dtype={"uuid": str}, keep_default_na=False)
    frame = frame.assign(root=str(root))
    frame["latitude_raw"] = frame["latitude"].astype(str)
    frame["longitude_raw"] = frame["longitude"].astype(str)
    return frame


def naive_decode(paths: Sequence[str], size: int) -> np.ndarray:
    """The original's decoding: full-resolution PIL decode, then a bilinear resize per view."""
    views = []
    for path in paths:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        views.append(np.asarray(rgb).transpose(2, 0, 1))
    return np.stack(views)


def location_paths(frame: pd.DataFrame) -> list[list[str]]:
    """The view files of each location of `frame`."""
    pairs = zip(frame["root"], frame["uuid"], strict=True)
    return [[str(p) for p in image_paths(root, uuid)] for root, uuid in pairs]
