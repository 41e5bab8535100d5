"""`results.json` of a training run, the files beside it, and the summary printed at the end."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

from geoguess.errors import GeoguessError
from geoguess.novelty import NOVEL_PERCENTILE, novel_share
from geoguess.runs import RESULTS_FILE
from geoguess.utils.cli import to_log_files
from geoguess.utils.io import write_csv_atomic, write_json_atomic, write_text_atomic

RESULT_KEYS = (
    "status",
    "error",
    "val_haversine_km",
    "test_haversine_km",
    "test_haversine_km_unsnapped",
    "test_snapped_share",
    "test_median_km",
    "test_acc_1km",
    "test_acc_25km",
    "test_acc_100km",
    "test_geoguessr_score",
    "test_coverage50",
    "test_coverage90",
    "test_novel_share",
    "baseline_test_haversine_km",
    "num_classes",
    "best_checkpoint",
    "epochs",
    "train_seconds",
    "dataset",
    "split_sizes",
    "seed",
)
PREDICTION_COLUMNS = [
    "uuid",
    "latitude",
    "longitude",
    "true_latitude",
    "true_longitude",
    "error_km",
    "snapped",
    "error_km_unsnapped",
    "radius50_km",
    "radius90_km",
]


def completed(
    val_km: float | None,
    test: dict,
    frame,
    baseline_km: float | None,
    num_classes: int | None,
    best_checkpoint: str | None,
    epochs: int,
    train_seconds: float,
    dataset: str | None,
    seed: int,
    split_sizes: dict[str, int] | None = None,
) -> dict:
    """The results of a run that finished; `split_sizes` the locations of each split
    (train, val, test) the run used."""
    results = {
        "status": "ok",
        "error": None,
        "val_haversine_km": val_km,
        "test_haversine_km": test.get("haversine_km"),
        "test_haversine_km_unsnapped": test.get("haversine_km_unsnapped", test.get("haversine_km")),
        "test_snapped_share": float(frame["snapped"].mean()) if frame is not None else None,
        "test_median_km": test.get("median_km"),
        "test_acc_1km": test.get("acc_1km"),
        "test_acc_25km": test.get("acc_25km"),
        "test_acc_100km": test.get("acc_100km"),
        "test_geoguessr_score": test.get("geoguessr_score"),
        "test_coverage50": test.get("coverage50"),
        "test_coverage90": test.get("coverage90"),
        "test_novel_share": (
            novel_share(frame["novelty"].to_numpy())
            if frame is not None and "novelty" in frame
            else None
        ),
        "baseline_test_haversine_km": baseline_km,
        "num_classes": num_classes,
        "best_checkpoint": best_checkpoint,
        "epochs": epochs,
        "train_seconds": round(train_seconds, 3),
        "dataset": dataset,
        "split_sizes": (
            {name: int(split_sizes[name]) for name in ("train", "val", "test")}
            if split_sizes is not None
            else None
        ),
        "seed": seed,
    }
    assert tuple(results) == RESULT_KEYS
    return results


def failed(exc: BaseException, seed: int | None = None) -> dict:
    """The results of a run that failed: every key, `status` "failed" and the reason."""
    results = dict.fromkeys(RESULT_KEYS)
    reason = str(exc) if isinstance(exc, GeoguessError) else f"{type(exc).__name__}: {exc}"
    results.update(status="failed", error=reason, seed=seed)
    return results


def write_failure(out: Path, exc: BaseException, seed: int | None = None) -> Path | None:
    """`results.json` saying why the run failed (and the traceback in `error.txt`), unless
    the folder already holds results."""
    path = Path(out) / RESULTS_FILE
    if path.exists():
        return None
    write_text_atomic(Path(out) / "error.txt", "".join(traceback.format_exception(exc)))
    return write_json_atomic(path, failed(exc, seed))


def write_outputs(out: Path, results: dict, frame, country, grid=None) -> list[Path]:
    """predictions_test.csv, test_errors.png, grid.png (classification), then results.json
    (its presence means done); returns the maps written."""
    # pyplot loads here, not at the top: only a finished run draws, and `--help` and a refused
    # run answer without it.
    from geoguess.plots import plot_errors, plot_grid

    maps = []
    if frame is not None and len(frame):
        write_csv_atomic(out / "predictions_test.csv", frame[PREDICTION_COLUMNS])
        plot_errors(country, frame, out / "test_errors.png")
        maps.append(out / "test_errors.png")
    if grid is not None:
        plot_grid(country, grid, out / "grid.png")
        maps.append(out / "grid.png")
    write_json_atomic(out / RESULTS_FILE, results)
    return maps


def read(out: Path) -> dict:
    return json.loads((Path(out) / RESULTS_FILE).read_text())


def report(out: Path, results: dict) -> str:
    """Print the summary and write it into the run's log file (train.log); returns it."""
    text = summary(out, results)
    print(text)
    to_log_files(text, "geoguess.results")
    return text


def summary(out: Path, results: dict) -> str:
    """What a person reads at the end of a run."""

    def km(value):
        return "n/a" if value is None else f"{value:.1f} km"

    def share(value):
        return "n/a" if value is None else f"{100 * value:.1f} %"

    baseline, test = results["baseline_test_haversine_km"], results["test_haversine_km"]
    ratio = ""
    if baseline and test:
        ratio = (
            f" ({baseline / test:.1f}x better than the baseline)"
            if test < baseline
            else f" ({test / baseline:.1f}x the baseline's error: worse than predicting it)"
        )
    lines = [
        f"results ({results['epochs']} epochs, {results['train_seconds']:.0f} s of training):",
        f"  validation error (best epoch)  {km(results['val_haversine_km'])}",
        f"  test error: mean               {km(test)}{ratio}",
        f"              median             {km(results['test_median_km'])}",
        f"  within 1 / 25 / 100 km         {share(results['test_acc_1km'])} / "
        f"{share(results['test_acc_25km'])} / {share(results['test_acc_100km'])}",
        f"  GeoGuessr score (of 5000)      {results['test_geoguessr_score'] or 0:.0f}",
        f"  baseline (train mean location) {km(baseline)}",
    ]
    sizes = results.get("split_sizes")
    if sizes:
        lines.append(
            f"  locations train / val / test   {sizes['train']} / {sizes['val']} / {sizes['test']}"
        )
    if results["test_coverage50"] is not None:
        lines.append(
            f"  truth within radius50 / 90      {share(results['test_coverage50'])} / "
            f"{share(results['test_coverage90'])} (calibrated on validation for 50 / 90 %)"
        )
    if results.get("test_novel_share") is not None:
        lines.append(
            f"  novel test locations           {share(results['test_novel_share'])} beyond the "
            f"training split's {NOVEL_PERCENTILE:.0f}th percentile of distances"
        )
    if results["test_snapped_share"]:
        lines.append(
            f"  snapped onto land              {share(results['test_snapped_share'])} of the "
            f"predictions (mean error without: {km(results['test_haversine_km_unsnapped'])})"
        )
    lines.append(f"wrote {out / RESULTS_FILE}, predictions_test.csv, test_errors.png, checkpoints/")
    return "\n".join(lines)
