"""Predicting with a trained checkpoint: every location folder of a dataset, in one process,
through the run's `Predictor`."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from geoguess import metrics
from geoguess.data.io import DataError
from geoguess.data.prediction import prediction_frame, prediction_loader
from geoguess.errors import GeoguessError
from geoguess.predictor import Predictor

MAX_LISTED = 50


def check_output(output: Path, overwrite: bool) -> None:
    """Fail now, before any work, when `output` cannot be written."""
    output = Path(output)
    if output.is_dir():
        raise GeoguessError(f"output={output} is a folder; give a file name")
    if output.exists() and not overwrite:
        raise GeoguessError(
            f"{output} already exists; pass overwrite=true or choose another output"
        )
    existing = output.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise GeoguessError(f"output={output}: {existing} is a file, not a folder")
    try:  # the only sure test (permissions, read-only mounts, root's privileges)
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise GeoguessError(
            f"output={output}: cannot write into {existing} ({exc.strerror})"
        ) from None


def predict(
    checkpoint: str | Path,
    root: str | Path,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str = "auto",
    progress: bool = True,
    tta: str | None = None,
    refine: str | None = None,
) -> tuple[pd.DataFrame, list]:
    """Predictions for every location folder of `root` (`uuid, latitude, longitude,
    radius50_km, radius90_km, snapped, true_latitude, true_longitude, error_km`; NaN radii
    without a calibration, NaN truth without coordinates in data.csv), and the locations that
    could not be read (`Failure`s naming file and reason). `tta` / `refine`: None keeps what
    the run was tested with."""
    predictor = Predictor.from_checkpoint(checkpoint, _device(device), tta=tta, refine=refine)
    frame, failures = prediction_frame(root)
    loader = prediction_loader(frame, predictor.image_size, batch_size, num_workers)
    uuids, answers, true = [], [], []
    bar = tqdm(loader, desc="predicting", unit="batch", disable=None if progress else True)
    with torch.inference_mode():
        for batch in bar:
            failures += batch["failures"]
            if not batch["uuid"]:
                continue
            uuids += batch["uuid"]
            answers.append(predictor.predict(batch["images"]))
            true.append(batch["latlon"])
    if not uuids:
        raise DataError(f"no location of {root} could be read")
    true = np.concatenate(true)
    columns = ("latitude", "longitude", "radius50_km", "radius90_km", "snapped")
    predictions = pd.DataFrame({"uuid": uuids})
    for column in columns:
        predictions[column] = np.concatenate([a[column] for a in answers])
    predictions["true_latitude"], predictions["true_longitude"] = true[:, 0], true[:, 1]
    known = np.isfinite(true).all(axis=1)
    predictions["error_km"] = np.nan
    if known.any():
        lat, lon = predictions["latitude"].to_numpy(), predictions["longitude"].to_numpy()
        scored = metrics.prediction_frame(
            np.asarray(uuids)[known], lat[known], lon[known], true[known, 0], true[known, 1]
        )
        predictions.loc[known, "error_km"] = scored["error_km"].to_numpy()
    return predictions, sorted(failures, key=lambda f: (f.uuid, f.file))


def failure_message(failures: list, total: int) -> str:
    listed = [f"  {f.file}: {f.reason}" for f in failures[:MAX_LISTED]]
    if len(failures) > MAX_LISTED:
        listed.append(f"  ... and {len(failures) - MAX_LISTED} more")
    locations = len({f.uuid for f in failures})
    return "\n".join(
        [
            f"{locations} of {total} locations cannot be predicted, so no prediction file was "
            "written (a submission must hold every location):",
            *listed,
            "fix or remove these folders, or pass on_invalid=skip to predict the others "
            "(the skipped ones are then listed in a CSV beside the output)",
        ]
    )


def failure_frame(failures: list) -> pd.DataFrame:
    return pd.DataFrame(
        [{"uuid": f.uuid, "file": f.file, "reason": f.reason} for f in failures],
        columns=["uuid", "file", "reason"],
    )


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
