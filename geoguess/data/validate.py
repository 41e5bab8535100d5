"""Validation of a dataset before any training, and the command that runs it for users:

    python -m geoguess.data.validate data=folder data.root=PATH

prints a summary (locations, valid ones, each problem with file, row and reason) and exits 1
when anything is invalid. The decode pass that proves every image readable is the one that
builds the image cache (`data.cache=true`), so validating first also prepares training.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig

from geoguess.data import cache as cache_mod
from geoguess.data.io import (
    CSV_NAME,
    DataError,
    as_roots,
    folders_without_row,
    image_paths,
    is_plain_name,
    read_locations,
)
from geoguess.utils.cli import CONFIG_PATH, run_dir, user_errors
from geoguess.utils.io import write_csv_atomic

log = logging.getLogger(__name__)

MAX_LISTED = 50
ROW_NOTE = "row N is the N-th data row of the CSV, after its header"
SKIP_HINT = "pass data.on_invalid=skip to train without these locations"


@dataclass(frozen=True)
class Problem:
    """One reason why one location cannot be used."""

    uuid: str
    file: str
    row: int | None  # 1-based data row of `csv` (the header is not counted)
    csv: str
    reason: str

    def describe(self) -> str:
        where = f"{self.csv} row {self.row}" if self.row is not None else self.csv
        if self.file == self.csv:
            return f"{where} (uuid {self.uuid!r}): {self.reason}"
        return f"{self.file} ({where}): {self.reason}"


@dataclass
class ValidationReport:
    """Outcome of validating every row and file once."""

    roots: list[Path]
    n_rows: int
    valid: pd.DataFrame  # rows without any problem, in CSV order
    problems: list[Problem]
    folders_without_row: int
    key: str = ""
    cache: cache_mod.ImageCache | None = field(default=None, repr=False)
    cache_root: Path | None = None

    @property
    def n_invalid_rows(self) -> int:
        return self.n_rows - len(self.valid)

    def summary(self) -> str:
        roots = ", ".join(str(r) for r in self.roots)
        lines = [
            f"dataset: {roots}",
            f"locations: {self.n_rows} rows, {len(self.valid)} valid, "
            f"{self.n_invalid_rows} invalid",
            f"folders in images/ without a row (ignored): {self.folders_without_row}",
        ]
        if self.cache is not None:
            lines.append(f"image cache: {self.cache.data_path} ({self.cache.image_size} px)")
        elif self.cache_root is not None:
            lines.append(
                f"decode verdicts cached in {cache_mod.key_dir(self.cache_root, self.key)}"
            )
        if self.problems:
            lines.append(f"problems ({len(self.problems)}; {ROW_NOTE}):")
            lines += [f"  {p.describe()}" for p in self.problems]
        else:
            lines.append("no problems found")
        return "\n".join(lines)

    def error_message(self) -> str:
        listed = [f"  {p.describe()}" for p in self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            listed.append(f"  ... and {len(self.problems) - MAX_LISTED} more problems")
        return "\n".join(
            [
                f"{len(self.problems)} problem(s) make {self.n_invalid_rows} of {self.n_rows} "
                f"locations unusable ({ROW_NOTE}):",
                *listed,
                f"Fix the data, or {SKIP_HINT} "
                "(they are listed in invalid_locations.csv in the run directory).",
            ]
        )

    def invalid_frame(self) -> pd.DataFrame:
        """The `invalid_locations.csv` table: one row per problem."""
        columns = ["uuid", "reason", "file", "csv", "row"]
        return pd.DataFrame(
            [{c: getattr(p, c) for c in columns} for p in self.problems], columns=columns
        )


# ---------------------------------------------------------------------------------------------
# Checks of rows and files (cheap: no decoding)


def check_rows(frame: pd.DataFrame, country, outside_tolerance_km: float) -> list[Problem]:
    """uuids that are empty, not plain folder names or duplicated; bad or foreign coordinates."""
    problems = []
    for i in np.flatnonzero(~frame["uuid"].map(is_plain_name).to_numpy()):
        reason = (
            "uuid is empty"
            if frame["uuid"].iat[i] == ""
            else "uuid is not a plain folder name (no '/', '\\', '..' or absolute paths)"
        )
        problems.append(_row_problem(frame, i, reason))
    problems += _duplicates(frame)
    problems += _coordinate_problems(frame, country, outside_tolerance_km)
    return problems


def _row_problem(frame: pd.DataFrame, i: int, reason: str, file: str | None = None) -> Problem:
    row = frame.iloc[i]
    return Problem(row["uuid"], file or row["csv"], int(row["row"]), row["csv"], reason)


def _duplicates(frame: pd.DataFrame) -> list[Problem]:
    # Every copy is a problem: nothing tells which copy's coordinates or images are right.
    problems = []
    dup = frame["uuid"].duplicated(keep=False) & (frame["uuid"] != "")
    for _uuid, group in frame[dup].groupby("uuid", sort=False):
        places = [f"{c} row {r}" for c, r in zip(group["csv"], group["row"], strict=True)]
        for i in group.index:
            others = [p for j, p in zip(group.index, places, strict=True) if j != i]
            problems.append(_row_problem(frame, i, f"duplicate uuid (also {', '.join(others)})"))
    return problems


def _coordinate_problems(frame: pd.DataFrame, country, tolerance_km: float) -> list[Problem]:
    problems = []
    ok = np.ones(len(frame), dtype=bool)
    for name, limit in (("latitude", 90.0), ("longitude", 180.0)):
        values = frame[name].to_numpy(dtype=np.float64)
        for i in np.flatnonzero(~np.isfinite(values)):
            raw = frame[f"{name}_raw"].iat[i]
            problems.append(_row_problem(frame, i, f"{name} {raw!r} is not a number"))
        for i in np.flatnonzero(np.isfinite(values) & (np.abs(values) > limit)):
            raw = frame[f"{name}_raw"].iat[i]
            problems.append(
                _row_problem(frame, i, f"{name} {raw} is outside [-{limit:g}, {limit:g}]")
            )
        ok &= np.isfinite(values) & (np.abs(values) <= limit)
    if country is None or not ok.any():
        return problems
    lat, lon = frame["latitude"].to_numpy()[ok], frame["longitude"].to_numpy()[ok]
    outside = np.zeros(len(lat))
    abroad = ~country.contains(lat, lon)
    if abroad.any():
        outside[abroad] = country.distance_outside_km(lat[abroad], lon[abroad])
    for k in np.flatnonzero(outside > tolerance_km):
        i = np.flatnonzero(ok)[k]
        reason = (
            f"location ({lat[k]:.5f}, {lon[k]:.5f}) lies {outside[k]:.1f} km outside "
            f"{country.name} (data.outside_tolerance_km={tolerance_km:g})"
        )
        problems.append(_row_problem(frame, i, reason))
    return problems


def check_files(frame: pd.DataFrame, sizes: np.ndarray) -> list[Problem]:
    """Missing and zero-byte views (from `cache.file_stats`); decoding is checked later."""
    problems = []
    for i, j in zip(*np.nonzero(sizes <= 0), strict=True):
        path = image_paths(frame["root"].iat[i], frame["uuid"].iat[i])[j]
        reason = "missing file" if sizes[i, j] < 0 else "empty file (0 bytes)"
        problems.append(_row_problem(frame, i, reason, file=str(path)))
    return problems


def decode_problems(frame: pd.DataFrame, failed: dict[str, str]) -> list[Problem]:
    if not failed:
        return []
    problems = []
    for i, (root, uuid) in enumerate(zip(frame["root"], frame["uuid"], strict=True)):
        for path in image_paths(root, uuid):
            reason = failed.get(cache_mod.view_key(path))
            if reason is not None:
                problems.append(_row_problem(frame, i, reason, file=str(path)))
    return problems


# ---------------------------------------------------------------------------------------------
# The whole validation


def validate_dataset(
    roots: list[Path],
    country,
    outside_tolerance_km: float = 5.0,
    image_size: int | None = None,
    cache_root: Path | None = None,
    workers: int = 2,
    progress: bool = True,
) -> ValidationReport:
    """Check every row and every referenced file once; never raises for invalid locations.

    With `image_size`, the decode pass builds (or reuses) the image cache at that size;
    without, it only verifies. Either way its verdicts are kept under the dataset key in
    `cache_root` (default: beside the first root), so a second validation decodes nothing.
    """
    frame = read_locations(roots)
    problems = check_rows(frame, country, outside_tolerance_km)
    plain = frame["uuid"].map(is_plain_name).to_numpy()
    unique = ~frame["uuid"].duplicated(keep=False).to_numpy()
    sizes, mtimes = cache_mod.file_stats(frame, plain)
    problems += check_files(frame[plain].reset_index(drop=True), sizes[plain])
    # Decode every location whose four files exist, even if its coordinates are bad, so that
    # one run lists every problem.
    decodable = plain & unique & (sizes > 0).all(axis=1)
    candidates = frame[decodable].reset_index(drop=True)
    key = cache_mod.dataset_key(candidates, sizes[decodable], mtimes[decodable])
    cache_root = Path(cache_root) if cache_root else cache_mod.default_cache_root(roots[0])
    image_cache, failed = _decode_pass(candidates, key, cache_root, image_size, workers, progress)
    problems += decode_problems(candidates, failed)
    bad_rows = {(p.csv, p.row) for p in problems}
    is_valid = [(c, r) not in bad_rows for c, r in zip(frame["csv"], frame["row"], strict=True)]
    valid = frame[np.asarray(is_valid, dtype=bool)].reset_index(drop=True)
    uuids_by_root = defaultdict(list)
    for root, uuid in zip(frame["root"], frame["uuid"], strict=True):
        uuids_by_root[root].append(uuid)
    problems.sort(key=lambda p: (p.csv, p.row or 0, p.file))
    return ValidationReport(
        roots=list(roots),
        n_rows=len(frame),
        valid=valid[["uuid", "latitude", "longitude", "root", "csv", "row"]],
        problems=problems,
        folders_without_row=folders_without_row(roots, uuids_by_root),
        key=key,
        cache=image_cache,
        cache_root=cache_root,
    )


def _decode_pass(candidates, key, cache_root, image_size, workers, progress):
    if image_size is not None:
        image_cache = cache_mod.ImageCache.load(cache_root, key, image_size)
        if image_cache is None:
            image_cache = _build(candidates, key, cache_root, image_size, workers, progress)
        return image_cache, image_cache.failed
    failed = cache_mod.load_verdicts(cache_root, key)
    if failed is None:
        log.info("decoding %d locations to verify their images", len(candidates))
        failed = cache_mod.verify_all(candidates, workers, progress)
        try:
            cache_mod.save_verdicts(cache_root, key, failed)
        except OSError as exc:  # only costs decoding again next time
            log.warning("could not keep the image verdicts in %s: %s", cache_root, exc)
    return None, failed


def _build(candidates, key, cache_root, image_size, workers, progress) -> cache_mod.ImageCache:
    log.info("building the image cache for %d locations in %s", len(candidates), cache_root)
    start = time.perf_counter()
    try:
        image_cache = cache_mod.build_cache(
            cache_root, key, candidates, image_size, workers, progress
        )
    except OSError as exc:
        need = len(candidates) * 12 * image_size**2 / 1e9
        raise DataError(
            f"cannot write the image cache ({need:.1f} GB) in {cache_root}: {exc}; set "
            "data.cache_dir to a writable folder with room, or data.cache=false"
        ) from exc
    log.info(
        "image cache built in %.1f s (%d locations at %d px)",
        time.perf_counter() - start,
        len(candidates),
        image_size,
    )
    return image_cache


# ---------------------------------------------------------------------------------------------
# The command


# The config folder is relative to this module, one level deeper than the other CLIs.
@hydra.main(version_base="1.3", config_path="../" + CONFIG_PATH, config_name="validate")
@user_errors
def main(cfg: DictConfig) -> int:
    # Built from the `data` keys rather than the datamodule, so the command never imports torch.
    country = instantiate(cfg.country)
    data = cfg.data
    roots = as_roots(data.root)
    if data.get("synthetic", False):
        generate_if_missing(
            roots[0],
            country,
            data.num_locations,
            data.seed,
            data.synthetic_image_size,
            data.num_workers,
        )
    report = validate_dataset(
        roots,
        country,
        float(data.outside_tolerance_km),
        image_size=int(cfg.image.size) if data.cache else None,
        cache_root=Path(data.cache_dir).expanduser() if data.cache_dir else None,
        workers=int(data.num_workers),
    )
    print(report.summary())
    if not report.problems:
        return 0
    out = write_csv_atomic(run_dir() / "invalid_locations.csv", report.invalid_frame())
    print(f"wrote {out}")
    print(f"error: {report.n_invalid_rows} invalid location(s); {SKIP_HINT}", file=sys.stderr)
    sys.exit(1)


def generate_if_missing(
    root: Path,
    country,
    num_locations: int,
    seed: int,
    image_size: int,
    workers: int,
    progress: bool = True,
) -> None:
    """Generate the synthetic dataset into `root` unless it already holds a data.csv."""
    if (Path(root) / CSV_NAME).exists():
        return
    from geoguess.data.synthetic import generate  # only needed the first time

    log.info("generating a synthetic dataset of %d locations in %s", num_locations, root)
    generate(
        root,
        num_locations=int(num_locations),
        seed=int(seed),
        country=country,
        image_size=int(image_size),
        workers=max(1, int(workers)),
        progress=progress,
    )


if __name__ == "__main__":
    main()
