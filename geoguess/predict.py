"""`python -m geoguess.predict checkpoint=PATH data.root=DIR output=FILE`: locate every location.

Reads `DIR/images/<uuid>/{0,90,180,270}.jpg` (a `DIR/data.csv` with coordinates is optional:
when present the mean error is printed) and writes `uuid,latitude,longitude` for every folder.
The checkpoint carries everything fitted on the training split and the model's description, so
nothing else is needed; it is read as data (see `geoguess.models.checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from geoguess.utils.cli import CONFIG_PATH, user_errors


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
@user_errors
def main(cfg: DictConfig) -> str:
    return str(run(cfg))


def run(cfg: DictConfig) -> Path:
    """Predict as configured, write the CSV, print the mean error when coordinates are known."""
    from geoguess import runs
    from geoguess.data.io import DataError
    from geoguess.inference import check_output, failure_frame, failure_message, predict
    from geoguess.models.checkpoint import existing_checkpoint
    from geoguess.utils.io import write_csv_atomic

    if cfg.on_invalid not in ("error", "skip"):
        raise DataError(f"on_invalid={cfg.on_invalid!r} is not error or skip")
    # A refused command leaves no run record: the outputs and the checkpoint are checked first.
    out = runs.run_dir()
    output = Path(cfg.output).expanduser() if cfg.output else out / "predictions.csv"
    skipped_path = output.with_name(f"{output.stem}_skipped.csv")
    check_output(output, cfg.overwrite)
    if cfg.on_invalid == "skip":
        check_output(skipped_path, cfg.overwrite)
    existing_checkpoint(cfg.checkpoint)
    runs.claim(cfg, out)
    frame, failures = predict(
        cfg.checkpoint,
        cfg.data.root,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        device=cfg.device,
        tta=cfg.tta,
        refine=cfg.refine,
    )
    if failures and cfg.on_invalid == "error":
        raise DataError(failure_message(failures, len(frame) + len({f.uuid for f in failures})))
    columns = ["uuid", "latitude", "longitude"]
    if frame["radius50_km"].notna().all():
        columns += ["radius50_km", "radius90_km"]
    else:
        print(f"{cfg.checkpoint} holds no calibration of the radii: no radius columns written")
    write_csv_atomic(output, frame[columns], overwrite=cfg.overwrite)
    print(f"wrote {len(frame)} predictions to {output}")
    if failures:
        write_csv_atomic(skipped_path, failure_frame(failures), overwrite=cfg.overwrite)
        print(f"skipped {len({f.uuid for f in failures})} locations, listed in {skipped_path}")
    known = frame["true_latitude"].notna() & frame["true_longitude"].notna()
    if known.any():
        errors = frame.loc[known, "error_km"]
        print(
            f"mean error {errors.mean():.1f} km, median {errors.median():.1f} km "
            f"over the {int(known.sum())} locations with coordinates in data.csv"
        )
    return output


if __name__ == "__main__":
    main()
