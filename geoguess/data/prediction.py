"""The locations of a folder to predict: every `images/<uuid>/` of one dataset folder,
decoded on the fly (one pass needs no cache), each failure kept with its file and reason."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from geoguess.data.cache import decode_location
from geoguess.data.io import CSV_NAME, IMAGES_DIR, DataError, as_roots, image_paths, is_plain_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """A location that cannot be predicted: which file, and why."""

    uuid: str
    file: str
    reason: str


class PredictionDataset(Dataset):
    """Items `{"uuid", "images" (uint8 [4, 3, S, S]), "latlon"}` or `{"uuid", "failures"}`."""

    def __init__(self, frame: pd.DataFrame, image_size: int) -> None:
        self.uuids = frame["uuid"].tolist()
        self.root = str(frame["root"].iat[0]) if len(frame) else ""
        self.latlon = frame[["latitude", "longitude"]].to_numpy(dtype=np.float64)
        self.image_size = int(image_size)

    def __len__(self) -> int:
        return len(self.uuids)

    def __getitem__(self, index: int) -> dict:
        uuid = self.uuids[index]
        paths = [str(p) for p in image_paths(self.root, uuid)]
        views, failures = decode_location(paths, self.image_size)
        if views is None:
            return {"uuid": uuid, "failures": [Failure(uuid, p, r) for p, r in failures.items()]}
        return {"uuid": uuid, "images": torch.from_numpy(views), "latlon": self.latlon[index]}


def collate(items: list[dict]) -> dict:
    """The decodable items as one batch; the others' failures listed beside it."""
    good = [item for item in items if "images" in item]
    return {
        "uuid": [item["uuid"] for item in good],
        "images": torch.stack([item["images"] for item in good]) if good else None,
        "latlon": np.array([item["latlon"] for item in good]).reshape(-1, 2),
        "failures": [f for item in items for f in item.get("failures", [])],
    }


def prediction_frame(root) -> tuple[pd.DataFrame, list[Failure]]:
    """One row per `images/<name>` folder with all four views present, coordinates from
    data.csv when it has the uuid; and a failure for each folder that lacks a view. The rows
    follow data.csv's order (a submission's), then the folders it does not list, by name."""
    roots = as_roots(root)
    if len(roots) != 1:
        raise DataError("prediction reads one dataset folder at a time")
    root = roots[0]
    folder = root / IMAGES_DIR
    if not folder.is_dir():
        raise DataError(
            f"{folder} does not exist; prediction reads images/<uuid>/{{0,90,180,270}}.jpg"
        )
    names = _in_csv_order(
        root, sorted(e.name for e in folder.iterdir() if e.is_dir() and is_plain_name(e.name))
    )
    failures = []
    for name in names:
        for path in image_paths(root, name):
            if not path.is_file() or not path.stat().st_size:
                failures.append(Failure(name, str(path), "missing or empty file"))
    broken = {f.uuid for f in failures}
    names = [n for n in names if n not in broken]
    frame = pd.DataFrame({"uuid": names, "root": str(root)})
    coords = _csv_coordinates(root)
    frame["latitude"] = frame["uuid"].map(coords.get("latitude", {})).astype(float)
    frame["longitude"] = frame["uuid"].map(coords.get("longitude", {})).astype(float)
    return frame, failures


def prediction_loader(frame: pd.DataFrame, image_size: int, batch_size: int, num_workers: int):
    return DataLoader(
        PredictionDataset(frame, image_size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
    )


def _in_csv_order(root: Path, names: list[str]) -> list[str]:
    path = root / CSV_NAME
    if not path.is_file():
        return names
    try:
        listed = pd.read_csv(path, usecols=["uuid"], dtype={"uuid": str})["uuid"].tolist()
    except (ValueError, pd.errors.ParserError):  # no uuid column: validate says why
        return names
    present = set(names)
    ordered = list(dict.fromkeys(u for u in listed if u in present))
    seen = set(ordered)
    return ordered + [n for n in names if n not in seen]


def _csv_coordinates(root: Path) -> dict:
    path = root / CSV_NAME
    if not path.is_file():
        return {}
    table = pd.read_csv(path, dtype={"uuid": str}, keep_default_na=False)
    if "uuid" not in table or "latitude" not in table or "longitude" not in table:
        return {}
    table = table.drop_duplicates("uuid").set_index("uuid")
    return {
        name: pd.to_numeric(table[name], errors="coerce").to_dict()
        for name in ("latitude", "longitude")
    }
