"""`python -m geoguess.predict checkpoint=PATH data.root=DIR output=FILE`: locate every location.

Reads `DIR/images/<uuid>/{0,90,180,270}.jpg` (a `DIR/data.csv` with coordinates is optional:
when present the mean error is printed) and writes `uuid,latitude,longitude`. The checkpoint
carries everything fitted on the training split and the run's config, so nothing else is needed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig

import geoguess.models.schema  # noqa: F401 - registers the config schemas before composition
from geoguess.errors import GeoguessError
from geoguess.utils.cli import CONFIG_PATH, run_dir, user_errors

log = logging.getLogger(__name__)


class CheckpointError(GeoguessError):
    """A checkpoint that is not a geoguess training checkpoint, or cannot be read."""


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
@user_errors
def main(cfg: DictConfig) -> str:
    return str(run(cfg))


def run(cfg: DictConfig) -> Path:
    """Predict as configured, write the CSV, print the mean error when coordinates are known."""
    output = Path(cfg.output) if cfg.output else run_dir() / "predictions.csv"
    _check_output(output, cfg.overwrite)
    frame = predict(
        cfg.checkpoint,
        cfg.data.root,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        on_invalid=cfg.on_invalid,
        device=cfg.device,
    )
    from geoguess.utils.io import write_csv_atomic

    write_csv_atomic(output, frame[["uuid", "latitude", "longitude"]], overwrite=cfg.overwrite)
    print(f"wrote {len(frame)} predictions to {output}")
    known = frame["true_latitude"].notna() & frame["true_longitude"].notna()
    if known.any():
        errors = frame.loc[known, "error_km"]
        print(
            f"mean error {errors.mean():.1f} km, median {errors.median():.1f} km "
            f"over the {int(known.sum())} locations with coordinates in data.csv"
        )
    return output


def _check_output(output: Path, overwrite: bool) -> None:
    # Checked before any work as well as at the write, so a refused run costs nothing.
    if output.exists() and not overwrite:
        raise GeoguessError(
            f"{output} already exists; pass overwrite=true or choose another output"
        )


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """The model of a training checkpoint, in eval mode, and its `FittedData`."""
    import torch

    from geoguess.data import FittedData
    from geoguess.models.module import CHECKPOINT_KEY, build_module

    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint={path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint:
        raise CheckpointError(f"{path} is not a checkpoint written by geoguess.train")
    extra = checkpoint[CHECKPOINT_KEY]
    fitted = FittedData.from_dict(extra["fitted"])
    model = build_module(extra["config"], fitted, inference=True)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), fitted


def predict(
    checkpoint: str | Path,
    root: str | Path,
    batch_size: int = 32,
    num_workers: int = 0,
    on_invalid: str = "error",
    device: str = "auto",
) -> pd.DataFrame:
    """Predictions for every location folder of `root`: `uuid, latitude, longitude`, and
    `true_latitude, true_longitude, error_km` (NaN without coordinates in data.csv)."""
    import torch

    from geoguess import metrics
    from geoguess.data import GeoguesserDataModule

    device = _device(device)
    model, fitted = load_checkpoint(checkpoint, device)
    data = GeoguesserDataModule.for_prediction(
        root,
        fitted,
        fitted.image_size,
        batch_size=batch_size,
        num_workers=num_workers,
        on_invalid=on_invalid,
    )
    uuids, lats, lons, true = [], [], [], []
    with torch.inference_mode():
        for batch in data.predict_dataloader():
            if not batch["uuid"]:
                continue
            lat, lon = model.predict_latlon(batch["images"].to(device))
            uuids += list(batch["uuid"])
            lats.append(lat)
            lons.append(lon)
            true.append(batch["latlon"].numpy())
    if not uuids:
        raise GeoguessError(f"no location of {root} could be read")
    true = np.concatenate(true)
    lat, lon = np.concatenate(lats), np.concatenate(lons)
    frame = pd.DataFrame({"uuid": uuids, "latitude": lat, "longitude": lon})
    frame["true_latitude"], frame["true_longitude"] = true[:, 0], true[:, 1]
    known = np.isfinite(true).all(axis=1)
    frame["error_km"] = np.nan
    if known.any():
        scored = metrics.prediction_frame(
            np.asarray(uuids)[known], lat[known], lon[known], true[known, 0], true[known, 1]
        )
        frame.loc[known, "error_km"] = scored["error_km"].to_numpy()
    return frame


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


if __name__ == "__main__":
    main()
