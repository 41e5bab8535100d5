"""`GeoguesserDataModule`: validation, splits, train-fitted targets and statistics, loaders.

See docs/data-interface.md for the interface the training code relies on and docs/data.md for
the user's side (format, settings, cache).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from geoguess.data import stats as stats_mod
from geoguess.data.cache import default_cache_root, stats_path
from geoguess.data.dataset import GeoguesserDataset, ViewAugment
from geoguess.data.io import CSV_NAME, IMAGES_DIR, DataError, as_roots, image_paths, is_plain_name
from geoguess.data.split import (
    SPLIT_BY,
    SPLITS,
    check_ratios,
    fraction_mask,
    split_by_hash,
    split_spatial,
)
from geoguess.data.targets import TargetSpace
from geoguess.data.validate import ValidationReport, generate_if_missing, validate_dataset
from geoguess.geo import ClassGrid, Country, build_grid
from geoguess.utils.io import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

ON_INVALID = ("error", "skip")
DEFAULT_GRID_SPACING = 0.5


@dataclass
class FittedData:
    """Everything fitted on the training split, needed to reproduce targets and inputs later."""

    targets: TargetSpace
    grid: ClassGrid
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    image_size: int
    normalize: str = "dataset"
    info: dict = field(default_factory=dict)  # provenance: dataset key, split settings, counts

    def to_dict(self) -> dict:
        """Plain JSON types only (checkpoints load with `weights_only=True`)."""
        data = {
            "targets": self.targets.to_dict(),
            "grid": self.grid.to_dict(),
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "image_size": self.image_size,
            "normalize": self.normalize,
            "info": self.info,
        }
        return json.loads(json.dumps(data, default=_plain))

    @classmethod
    def from_dict(cls, data: dict) -> FittedData:
        return cls(
            targets=TargetSpace.from_dict(data["targets"]),
            grid=ClassGrid.from_dict(data["grid"]),
            image_mean=tuple(data["image_mean"]),
            image_std=tuple(data["image_std"]),
            image_size=int(data["image_size"]),
            normalize=data.get("normalize", "dataset"),
            info=dict(data.get("info", {})),
        )

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> FittedData:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def normalize_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `[..., 3, H, W]` to float32 normalised with `image_mean/std`, on its device."""
        mean = torch.tensor(self.image_mean, device=images.device).view(3, 1, 1)
        std = torch.tensor(self.image_std, device=images.device).view(3, 1, 1)
        return (images.float() / 255.0 - mean) / std


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class GeoguesserDataModule(L.LightningDataModule):
    """The data of one experiment; every argument mirrors a `data.*` key (see docs/data.md)."""

    def __init__(
        self,
        root,
        split=(0.8, 0.1, 0.1),
        split_by: str = "hash",
        spatial_gap_km: float = 10.0,
        spatial_block_km: float | None = None,
        fraction: float = 1.0,
        normalize: str = "dataset",
        on_invalid: str = "error",
        outside_tolerance_km: float = 5.0,
        cache: bool = True,
        cache_dir: str | None = None,
        augment: bool = True,
        batch_size: int = 32,
        num_workers: int = 2,
        synthetic: bool = False,
        num_locations: int = 2000,
        seed: int = 0,
        synthetic_image_size: int = 128,
        country: Country | None = None,
        grid: Callable[..., ClassGrid] | ClassGrid | None = None,
        image_size: int = 224,
        run_dir: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.roots = as_roots(root)
        self.ratios = check_ratios(split)
        self.split_by = _choice("data.split_by", split_by, SPLIT_BY)
        self.spatial_gap_km = _non_negative("data.spatial_gap_km", spatial_gap_km)
        self.spatial_block_km = (
            None
            if spatial_block_km is None
            else _non_negative("data.spatial_block_km", spatial_block_km)
        )
        self.fraction = _fraction(fraction)
        self.normalize = _choice("data.normalize", normalize, stats_mod.NORMALIZE)
        self.on_invalid = _choice("data.on_invalid", on_invalid, ON_INVALID)
        self.outside_tolerance_km = _non_negative("data.outside_tolerance_km", outside_tolerance_km)
        self.use_cache = bool(cache)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.augment = bool(augment)
        self.batch_size = _positive_int("data.batch_size", batch_size)
        self.num_workers = _non_negative_int("data.num_workers", num_workers)
        self.synthetic = bool(synthetic)
        self.synthetic_settings = {
            "num_locations": int(num_locations),
            "seed": int(seed),
            "image_size": int(synthetic_image_size),
        }
        self.country = _as_country(country)
        self.grid_factory = grid
        self.image_size = _positive_int("image.size", image_size)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = progress
        self.report: ValidationReport | None = None
        self.fitted: FittedData | None = None
        self.splits: dict[str, pd.DataFrame] = {}
        self.datasets: dict[str, GeoguesserDataset] = {}

    # -- Lightning hooks ----------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Generate the synthetic set if asked, validate, build the cache (rank 0, idempotent)."""
        report = self.validate()
        if report.problems and self.on_invalid == "error":
            raise DataError(report.error_message())  # before any rank starts setting up

    def setup(self, stage: str | None = None) -> None:
        """Splits, train-fitted targets/grid/statistics and datasets; idempotent."""
        if self.fitted is not None:
            return
        report = self.validate()
        valid = self._apply_on_invalid(report)
        self.splits = self._split(valid)
        train = self.splits["train"]
        targets = TargetSpace.fit(train["latitude"], train["longitude"], self.country.crs)
        grid = self._fit_grid(train)
        mean, std = self._image_stats(report, train)
        self.fitted = FittedData(
            targets, grid, mean, std, self.image_size, self.normalize, self._info(report)
        )
        self.datasets = {name: self._dataset(name, frame) for name, frame in self.splits.items()}
        if self.run_dir is not None and self._is_global_zero():
            text = json.dumps(self.fitted.to_dict(), indent=2) + "\n"
            _write_once(self.run_dir / "fitted.json", text)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def state_dict(self) -> dict:
        """Saved by Lightning into checkpoints: what is needed to predict like this run."""
        return {"fitted": self.fitted.to_dict()} if self.fitted is not None else {}

    # -- Validation ---------------------------------------------------------------------------

    def validate(self) -> ValidationReport:
        """Validate every row and file (once per datamodule; the decode pass is cached on disk)."""
        if self.report is None:
            self._maybe_generate()
            self.report = validate_dataset(
                self.roots,
                self.country,
                self.outside_tolerance_km,
                image_size=self.image_size if self.use_cache else None,
                cache_root=self.cache_root,
                workers=self.num_workers,
                progress=self.progress,
            )
        return self.report

    @property
    def cache_root(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else default_cache_root(self.roots[0])

    def _maybe_generate(self) -> None:
        if self.synthetic:
            settings = self.synthetic_settings
            generate_if_missing(
                self.roots[0],
                self.country,
                settings["num_locations"],
                settings["seed"],
                settings["image_size"],
                self.num_workers,
                self.progress,
            )

    def _apply_on_invalid(self, report: ValidationReport) -> pd.DataFrame:
        if not report.problems:
            return report.valid
        if self.on_invalid == "error":
            raise DataError(report.error_message())
        log.warning(
            "data.on_invalid=skip: leaving out %d of %d locations (%d problems)",
            report.n_invalid_rows,
            report.n_rows,
            len(report.problems),
        )
        if self.run_dir is not None and self._is_global_zero():
            path = self.run_dir / "invalid_locations.csv"
            _write_once(path, report.invalid_frame().to_csv(index=False))
            log.warning("the invalid locations and their reasons are listed in %s", path)
        if report.valid.empty:
            raise DataError("no valid location is left; see the problems listed above")
        return report.valid

    # -- Splits and fitting -------------------------------------------------------------------

    def _split(self, valid: pd.DataFrame) -> dict[str, pd.DataFrame]:
        if self.split_by == "hash":
            labels = split_by_hash(valid["uuid"].tolist(), self.ratios)
        else:
            labels = split_spatial(
                valid["latitude"].to_numpy(),
                valid["longitude"].to_numpy(),
                self.ratios,
                self.spatial_gap_km,
                self.spatial_block_km,
                self.country.crs,
            )
            dropped = int((labels == "dropped").sum())
            if dropped:
                log.info(
                    "spatial split: %d training locations within %g km of a val/test location "
                    "left out",
                    dropped,
                    self.spatial_gap_km,
                )
        keep = fraction_mask(valid["uuid"].tolist(), self.fraction)
        splits = {name: valid[(labels == name) & keep].reset_index(drop=True) for name in SPLITS}
        if splits["train"].empty:
            raise DataError(
                f"the training split is empty ({len(valid)} valid locations, data.split="
                f"{list(self.ratios)}, data.fraction={self.fraction}); use more data or a larger "
                "train share"
            )
        for name in ("val", "test"):
            if splits[name].empty and self.ratios[SPLITS.index(name)] > 0:
                log.warning("the %s split is empty (%d valid locations)", name, len(valid))
        return splits

    def _fit_grid(self, train: pd.DataFrame) -> ClassGrid:
        lat, lon = train["latitude"].to_numpy(), train["longitude"].to_numpy()
        factory = self.grid_factory
        if isinstance(factory, ClassGrid):
            return factory
        if factory is None:
            return build_grid(self.country, DEFAULT_GRID_SPACING, train_lat=lat, train_lon=lon)
        return factory(self.country, train_lat=lat, train_lon=lon)

    def _image_stats(self, report: ValidationReport, train: pd.DataFrame):
        if self.normalize == "imagenet":
            return stats_mod.IMAGENET_MEAN, stats_mod.IMAGENET_STD
        path = stats_path(report.cache_root, report.key, self.image_size, train["uuid"].tolist())
        if report.cache is not None:
            rows = [report.cache.index[u] for u in train["uuid"]]
            array = report.cache.open()
            return stats_mod.cached_stats(path, lambda: stats_mod.stats_from_memmap(array, rows))
        dataset = GeoguesserDataset(train, self.image_size)
        return stats_mod.cached_stats(
            path, lambda: stats_mod.stats_from_loader(dataset.load_views, range(len(dataset)))
        )

    def _info(self, report: ValidationReport) -> dict:
        return {
            "dataset_key": report.key,
            "roots": [str(r) for r in self.roots],
            "split": list(self.ratios),
            "split_by": self.split_by,
            "spatial_gap_km": self.spatial_gap_km,
            "fraction": self.fraction,
            "counts": {name: len(frame) for name, frame in self.splits.items()},
            "invalid": report.n_invalid_rows,
        }

    def _dataset(self, name: str, frame: pd.DataFrame) -> GeoguesserDataset:
        lat, lon = frame["latitude"].to_numpy(), frame["longitude"].to_numpy()
        augment = ViewAugment(self.image_size) if (self.augment and name == "train") else None
        return GeoguesserDataset(
            frame,
            self.image_size,
            targets=self.fitted.targets.normalize(lat, lon) if len(frame) else np.zeros((0, 2)),
            class_ids=self.fitted.grid.assign(lat, lon) if len(frame) else np.zeros(0),
            cache=self.report.cache if self.report is not None else None,
            augment=augment,
            # Training keeps its batch size by borrowing the next location; evaluation must
            # not count a location twice, so it leaves the broken one out.
            on_failure="substitute" if name == "train" else "drop",
        )

    # -- Loaders ------------------------------------------------------------------------------

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        if name not in self.datasets:
            self.setup("fit")
        return make_loader(self.datasets[name], self.batch_size, self.num_workers, shuffle)

    def _is_global_zero(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer is None or trainer.is_global_zero

    # -- Prediction ---------------------------------------------------------------------------

    @classmethod
    def for_prediction(
        cls,
        root,
        fitted: FittedData,
        image_size: int,
        batch_size: int = 32,
        num_workers: int = 0,
        on_invalid: str = "error",
    ) -> PredictionDataModule:
        """A datamodule whose `predict_dataloader` walks every folder in `root/images/`."""
        roots = as_roots(root)
        if len(roots) != 1:
            raise DataError("prediction reads one dataset folder at a time")
        frame = _prediction_frame(roots[0], _choice("on_invalid", on_invalid, ON_INVALID))
        return PredictionDataModule(
            frame,
            fitted,
            _positive_int("image_size", image_size),
            _positive_int("batch_size", batch_size),
            _non_negative_int("num_workers", num_workers),
        )


class PredictionDataModule(L.LightningDataModule):
    """Every location folder of one dataset, decoded on the fly (one pass needs no cache)."""

    def __init__(self, frame, fitted, image_size, batch_size, num_workers) -> None:
        super().__init__()
        self.fitted = fitted
        self.splits = {"predict": frame}
        self.dataset = GeoguesserDataset(frame, image_size, on_failure="drop")
        self.batch_size, self.num_workers = batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        return make_loader(self.dataset, self.batch_size, self.num_workers, shuffle=False)


def make_loader(dataset: GeoguesserDataset, batch_size: int, num_workers: int, shuffle: bool):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=False,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        collate_fn=dataset.collate,
    )


def _prediction_frame(root: Path, on_invalid: str) -> pd.DataFrame:
    """One row per `images/<name>` folder; coordinates from data.csv when it has the uuid."""
    folder = root / IMAGES_DIR
    if not folder.is_dir():
        raise DataError(
            f"{folder} does not exist; prediction reads images/<uuid>/{{0,90,180,270}}.jpg"
        )
    names = sorted(e.name for e in folder.iterdir() if e.is_dir() and is_plain_name(e.name))
    broken = {}
    for name in names:
        missing = [
            p.name for p in image_paths(root, name) if not p.is_file() or not p.stat().st_size
        ]
        if missing:
            broken[name] = missing
    if broken and on_invalid == "error":
        listed = [
            f"  {folder / n}: missing or empty {', '.join(m)}" for n, m in list(broken.items())[:50]
        ]
        raise DataError(
            "\n".join(
                [
                    f"{len(broken)} folder(s) lack views:",
                    *listed,
                    "pass on_invalid=skip to predict without them",
                ]
            )
        )
    for name, missing in broken.items():
        log.warning("%s lacks %s; skipped", folder / name, ", ".join(missing))
    names = [n for n in names if n not in broken]
    if not names:
        raise DataError(f"{folder} holds no location with all four views")
    frame = pd.DataFrame({"uuid": names, "root": str(root)})
    coords = _csv_coordinates(root)
    frame["latitude"] = frame["uuid"].map(coords.get("latitude", {})).astype(float)
    frame["longitude"] = frame["uuid"].map(coords.get("longitude", {})).astype(float)
    return frame


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


def _write_once(path: Path, text: str) -> None:
    """Write `text` atomically; an existing file is kept when identical, else never clobbered
    (a second datamodule in the same run directory must reproduce the first one's data)."""
    if path.exists() and path.read_text() == text:
        return
    write_text_atomic(path, text)


# -- Setting checks ---------------------------------------------------------------------------


def _as_country(country) -> Country:
    """A `Country`; Hydra's `instantiate(cfg.data, country=...)` turns the dataclass it is given
    into a DictConfig of its fields, which is turned back here."""
    if country is None:
        return Country()
    if isinstance(country, Country):
        return country
    from omegaconf import DictConfig, OmegaConf

    fields = OmegaConf.to_container(country) if isinstance(country, DictConfig) else dict(country)
    fields.pop("_target_", None)
    return Country(**fields)


def _choice(key: str, value, allowed) -> str:
    if value not in allowed:
        raise DataError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    return value


def _fraction(value) -> float:
    value = float(value)
    if not (0 < value <= 1):
        raise DataError(f"data.fraction={value} must be in (0, 1]")
    return value


def _non_negative(key: str, value) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise DataError(f"{key}={value} must be a non-negative number")
    return value


def _positive_int(key: str, value) -> int:
    if int(value) != value or int(value) <= 0:
        raise DataError(f"{key}={value!r} must be a positive integer")
    return int(value)


def _non_negative_int(key: str, value) -> int:
    if int(value) != value or int(value) < 0:
        raise DataError(f"{key}={value!r} must be a non-negative integer")
    return int(value)
