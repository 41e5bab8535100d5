"""Predicting with a trained checkpoint: every location folder of a dataset, in one process."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from geoguess.data.io import DataError
from geoguess.errors import GeoguessError

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
    tta: str = "none",
    refine: str = "none",
) -> tuple[pd.DataFrame, list]:
    """Predictions for every location folder of `root` (`uuid, latitude, longitude,
    true_latitude, true_longitude, error_km`, NaN without coordinates in data.csv), and the
    locations that could not be read (`Failure`s naming file and reason)."""
    import torch
    from tqdm.auto import tqdm

    from geoguess import metrics
    from geoguess.data.prediction import prediction_frame, prediction_loader
    from geoguess.models.checkpoint import load_for_inference

    device = _device(device)
    model, fitted = load_for_inference(checkpoint, device)
    configure(model, checkpoint, tta, refine)
    frame, failures = prediction_frame(root)
    loader = prediction_loader(frame, fitted.image_size, batch_size, num_workers)
    uuids, lats, lons, true, radii = [], [], [], [], []
    bar = tqdm(loader, desc="predicting", unit="batch", disable=None if progress else True)
    with torch.inference_mode():
        for batch in bar:
            failures += batch["failures"]
            if not batch["uuid"]:
                continue
            guess = model.guess(batch["images"].to(device))
            lat, lon, _ = model.head.decode(guess["xy"].cpu().numpy())
            uuids += batch["uuid"]
            lats.append(lat)
            lons.append(lon)
            true.append(batch["latlon"])
            radii.append(torch.stack([guess["radius50"], guess["radius90"]], -1).cpu().numpy())
    if not uuids:
        raise DataError(f"no location of {root} could be read")
    true = np.concatenate(true)
    lat, lon = np.concatenate(lats), np.concatenate(lons)
    predictions = pd.DataFrame({"uuid": uuids, "latitude": lat, "longitude": lon})
    if model.radius_scale is not None:
        radii = np.concatenate(radii)
        predictions["radius50_km"], predictions["radius90_km"] = radii[:, 0], radii[:, 1]
    predictions["true_latitude"], predictions["true_longitude"] = true[:, 0], true[:, 1]
    known = np.isfinite(true).all(axis=1)
    predictions["error_km"] = np.nan
    if known.any():
        scored = metrics.prediction_frame(
            np.asarray(uuids)[known], lat[known], lon[known], true[known, 0], true[known, 1]
        )
        predictions.loc[known, "error_km"] = scored["error_km"].to_numpy()
    return predictions, sorted(failures, key=lambda f: (f.uuid, f.file))


def configure(model, checkpoint, tta: str, refine: str) -> None:
    """Test-time augmentation, retrieval refinement and calibrated radii for prediction."""
    from geoguess.models.refinement import REFINE, TTA, load_extras

    if tta not in TTA or refine not in REFINE:
        raise GeoguessError(
            f"tta={tta!r} / refine={refine!r}: choose from {', '.join(TTA)} / {', '.join(REFINE)}"
        )
    model.radius_scale, model.retrieval = load_extras(checkpoint)
    if refine == "knn" and model.retrieval is None:
        raise GeoguessError(
            f"refine=knn needs the training split's embeddings, kept beside the checkpoint by "
            f"a run trained with model.refine=knn; {checkpoint} has none"
        )
    model.tta, model.refine = tta, refine


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
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
