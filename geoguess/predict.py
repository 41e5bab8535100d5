"""`python -m geoguess.predict run=RUN data.root=DIR output=FILE`: locate every location.

Reads `DIR/images/<uuid>/{0,90,180,270}.jpg` (a `DIR/data.csv` with coordinates is optional:
when present the mean error is printed) and writes `uuid,latitude,longitude` (with the
calibrated radii and each location's novelty) for every folder. `run=` takes the training run's
best checkpoint, the one it tested; `checkpoint=PATH` any other. The checkpoint carries
everything fitted on the training split and the model's description, so nothing else is
needed; it is read as data (see `geoguess.models.checkpoint`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from geoguess import runs
from geoguess.errors import GeoguessError
from geoguess.utils.cli import CONFIG_PATH, to_log_files, user_errors
from geoguess.utils.io import write_csv_atomic


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
@user_errors
def main(cfg: DictConfig) -> str:
    return str(run(cfg))


def say(text: str, stream=None) -> None:
    """Printed, and written into predict.log."""
    print(text, file=stream or sys.stdout, flush=True)
    to_log_files(text, "geoguess.predict")


def checkpoint_of(cfg: DictConfig) -> Path:
    """The checkpoint of `run=` (its best) or `checkpoint=`: exactly one must be given."""
    # torch loads here, not at the top: `--help` and a bad override answer without it.
    from geoguess.inference import run_checkpoint
    from geoguess.models.checkpoint import existing_checkpoint

    run, checkpoint = cfg.get("run"), cfg.get("checkpoint")
    if bool(run) == bool(checkpoint):
        raise GeoguessError(
            ("run= and checkpoint= were both given" if run else "no model was given")
            + ": give the training run, run=outputs/train/<time> (its best checkpoint is used), "
            "or one checkpoint, checkpoint=PATH"
        )
    return run_checkpoint(run) if run else existing_checkpoint(checkpoint)


def run(cfg: DictConfig) -> Path:
    """Predict as configured, write the CSV, print the mean error when coordinates are known
    and a warning when most locations are unlike the training split's."""
    # torch and pandas load here, not at the top: `--help` and a bad override answer without
    # them.
    from geoguess.data.io import DataError
    from geoguess.inference import (
        check_output,
        failure_frame,
        failure_message,
        predict,
        unscored_reason,
    )
    from geoguess.novelty import WARN_SHARE, novel_share, warning

    if cfg.on_invalid not in ("error", "skip"):
        raise DataError(f"on_invalid={cfg.on_invalid!r} is not error or skip")
    # A refused command leaves no run record: the outputs and the checkpoint are checked first.
    out = runs.run_dir()
    output = Path(cfg.output).expanduser() if cfg.output else out / "predictions.csv"
    skipped_path = output.with_name(f"{output.stem}_skipped.csv")
    check_output(output, cfg.overwrite)
    if cfg.on_invalid == "skip":
        check_output(skipped_path, cfg.overwrite)
    checkpoint = checkpoint_of(cfg)
    runs.claim(cfg, out)
    frame, failures = predict(
        checkpoint,
        cfg.data.root,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        device=cfg.device,
        tta=cfg.tta,
        refine=cfg.refine,
        say=say,
    )
    if failures and cfg.on_invalid == "error":
        raise DataError(failure_message(failures, len(frame) + len({f.uuid for f in failures})))
    columns = ["uuid", "latitude", "longitude"]
    if frame["radius50_km"].notna().all():
        columns += ["radius50_km", "radius90_km"]
    else:
        say(
            f"{checkpoint} holds no calibration of the radii, so no radius columns are written "
            "(the run's tested best checkpoint holds one: predict with run=<the run's folder>)"
        )
    if frame["novelty"].notna().all():
        columns.append("novelty")
    write_csv_atomic(output, frame[columns], overwrite=cfg.overwrite)
    say(f"wrote {len(frame)} predictions to {output}")
    if failures:
        write_csv_atomic(skipped_path, failure_frame(failures), overwrite=cfg.overwrite)
        say(f"skipped {len({f.uuid for f in failures})} locations, listed in {skipped_path}")
    known = frame["true_latitude"].notna() & frame["true_longitude"].notna()
    if known.any():
        errors = frame.loc[known, "error_km"]
        say(
            f"mean error {errors.mean():.1f} km, median {errors.median():.1f} km "
            f"over the {int(known.sum())} of {len(frame)} locations with coordinates in data.csv"
        )
    reason = unscored_reason(cfg.data.root, frame)
    if reason is not None:
        say(reason)
    share = novel_share(frame["novelty"].to_numpy())
    if share is not None and share > WARN_SHARE:
        say(warning(share, len(frame)), sys.stderr)
    return output


if __name__ == "__main__":
    main()
