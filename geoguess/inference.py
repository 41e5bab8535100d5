"""Predicting with a trained checkpoint: every location folder of a dataset, in one process,
through the run's `Predictor`."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from geoguess import metrics
from geoguess.data.io import CSV_NAME, DataError
from geoguess.data.prediction import prediction_frame, prediction_loader
from geoguess.errors import GeoguessError
from geoguess.predictor import Predictor
from geoguess.runs import CHECKPOINT_DIR, RESULTS_FILE

MAX_LISTED = 50
PROGRESS_SECONDS = 10.0  # between progress lines when the output is not a terminal


def run_checkpoint(run: str | Path) -> Path:
    """The best checkpoint of the training run folder `run`: results.json's `best_checkpoint`
    (looked up under the folder's checkpoints/ when the folder was moved), else the newest
    checkpoints/best-*.ckpt."""
    folder = Path(run).expanduser()
    if not folder.is_dir():
        raise GeoguessError(
            f"run={run} is not a folder; give a training run's folder, e.g. "
            "run=outputs/train/<time>"
        )
    try:
        best = json.loads((folder / RESULTS_FILE).read_text()).get("best_checkpoint")
    except (OSError, ValueError, AttributeError):  # no results yet, or damaged: look below
        best = None
    if best:
        for path in (Path(best), folder / CHECKPOINT_DIR / Path(best).name):
            if path.is_file():
                return path
    found = sorted((folder / CHECKPOINT_DIR).glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if found:
        return found[-1]
    raise GeoguessError(
        f"run={run} holds no best checkpoint (neither results.json's best_checkpoint nor "
        f"{CHECKPOINT_DIR}/best-*.ckpt); give a finished training run, or a checkpoint with "
        "checkpoint=PATH"
    )


class Progress:
    """Progress over `total` locations: tqdm's bar on a terminal, otherwise a line through
    `say` every `seconds` and at the end (a piped or logged run is not silent)."""

    def __init__(self, total: int, say: Callable[[str], None] | None, seconds: float) -> None:
        self.total, self.done, self.say, self.seconds = total, 0, say, seconds
        self.bar = None
        if say is not None and sys.stderr.isatty():
            self.bar = tqdm(total=total, desc="predicting", unit="location")
        self.started = self.last = time.monotonic()

    def advance(self, locations: int) -> None:
        self.done += locations
        if self.bar is not None:
            self.bar.update(locations)
        elif self.say is not None and time.monotonic() - self.last >= self.seconds:
            self.last = time.monotonic()
            self.say(self._line())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.say is not None:
            self.say(self._line())

    def _line(self) -> str:
        seconds = time.monotonic() - self.started
        return f"predicted {self.done} / {self.total} locations ({seconds:.0f} s)"


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
    batch_size: int,
    num_workers: int,
    device: str,
    progress: bool = True,
    *,
    tta: str | None,
    refine: str | None,
    say: Callable[[str], None] = print,
    progress_seconds: float = PROGRESS_SECONDS,
) -> tuple[pd.DataFrame, list]:
    """Predictions for every location folder of `root` (`uuid, latitude, longitude,
    radius50_km, radius90_km, snapped, novelty, true_latitude, true_longitude, error_km`; NaN
    radii without a calibration, NaN novelty without a novelty reference, NaN truth without
    coordinates in data.csv), and the locations that could not be read (`Failure`s naming file
    and reason). `tta` / `refine`: None keeps what the run was tested with. With `progress`,
    a start line and progress lines go to `say`."""
    predictor = Predictor.from_checkpoint(checkpoint, _device(device), tta=tta, refine=refine)
    frame, failures = prediction_frame(root)
    loader = prediction_loader(frame, predictor.image_size, batch_size, num_workers)
    if progress:
        say(start_line(checkpoint, root, len(frame), predictor, tta is None, refine is None))
    ticker = Progress(len(frame), say if progress else None, progress_seconds)
    uuids, answers, true = [], [], []
    with torch.inference_mode():
        for batch in loader:
            failures += batch["failures"]
            ticker.advance(len(batch["uuid"]) + len({f.uuid for f in batch["failures"]}))
            if not batch["uuid"]:
                continue
            uuids += batch["uuid"]
            answers.append(predictor.predict(batch["images"]))
            true.append(batch["latlon"])
    ticker.close()
    if not uuids:
        raise DataError(f"no location of {root} could be read")
    true = np.concatenate(true)
    columns = ("latitude", "longitude", "radius50_km", "radius90_km", "snapped", "novelty")
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


def start_line(
    checkpoint, root, total: int, predictor: Predictor, tested_tta: bool, tested_refine: bool
) -> str:
    inference = predictor.inference
    tta = f"tta={inference.tta}" + (" (as tested)" if tested_tta else "")
    refine = f"refine={inference.refine}" + (" (as tested)" if tested_refine else "")
    return f"predicting {total} locations of {root} with {checkpoint}, {tta}, {refine}"


def unscored_reason(root: str | Path, predictions: pd.DataFrame) -> str | None:
    """Why the predictions of `root` cannot be scored although it has a data.csv; None when
    they can (some are), or when it has none (the coordinates are optional)."""
    path = Path(root) / CSV_NAME
    if not path.is_file() or predictions["true_latitude"].notna().any():
        return None
    try:
        columns = pd.read_csv(path, nrows=0).columns.tolist()
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"{path} cannot be read ({exc}): the predictions are not scored"
    missing = [name for name in ("uuid", "latitude", "longitude") if name not in columns]
    if missing:
        return (
            f"{path} has no {' and no '.join(missing)} column (its columns: "
            f"{', '.join(map(str, columns)) or 'none'}): the predictions are not scored"
        )
    return (
        f"{path} gives coordinates for none of the {len(predictions)} predicted folders: "
        "the predictions are not scored"
    )


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
