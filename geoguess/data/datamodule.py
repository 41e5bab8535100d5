"""Lightning data modules: a dataset on disk (`data=folder`) and the generated one
(`data=synthetic`) share `FolderDataModule`'s validation, splits, train-only fitting and loaders
(docs/data-interface.md: what training relies on; docs/data.md: the user's side)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from geoguess.data import settings as checked
from geoguess.data import stats as stats_mod
from geoguess.data.augment import BatchAugment
from geoguess.data.cache import stats_path
from geoguess.data.dataset import BatchReader, GeoguesserDataset, batch_loader
from geoguess.data.fitted import FittedData, fit_settings
from geoguess.data.io import DataError, as_roots
from geoguess.data.sampler import BlockShuffle, LocationShuffle, should_block_shuffle
from geoguess.data.split import (
    SPLIT_BY,
    SPLITS,
    check_ratios,
    fraction_mask,
    split_by_hash,
    split_spatial,
)
from geoguess.data.targets import TargetSpace
from geoguess.data.validation import ValidationReport, validate_dataset
from geoguess.geo import ClassGrid, Country
from geoguess.runs import global_rank
from geoguess.utils.io import write_csv_atomic

FEW_LOCATIONS = 10  # below this a split's mean error is mostly noise
log = logging.getLogger(__name__)

ON_INVALID = ("error", "skip")
TRAIN_ORDERS = ("location", "block")
# A training batch's augmentation parameters between the two batch-transfer hooks.
AUGMENT_PARAMS = "augment_params"
GridFactory = Callable[..., ClassGrid]


class GeoDataModule(L.LightningDataModule):
    """What every data module shares; subclasses say where the dataset is (`dataset_roots`).

    The `data.*` keys of `conf/data/folder.yaml` (documented in docs/data.md, their defaults
    written there alone) are its arguments; `country`, `grid` (a factory called with the training
    locations), `image_size`, `run_dir` and `seed` come from the rest of the run config. With
    `fitted` (from a checkpoint), nothing is fitted: the run sees its data as the checkpoint's
    model was trained.
    """

    def __init__(
        self,
        *,
        split: list[float] | tuple[float, ...],
        split_by: str,
        spatial_gap_km: float,
        spatial_block_km: float | str | None,
        fraction: float,
        on_invalid: str,
        outside_tolerance_km: float,
        cache: bool,
        cache_dir: str | None,
        augment: bool,
        batch_size: int,
        num_workers: int,
        image_size: int,
        seed: int,
        country: Country | None = None,
        grid: GridFactory | None = None,
        run_dir: str | Path | None = None,
        fitted: FittedData | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.roots: list[Path] = []
        self.ratios = check_ratios(split)
        self.split_by = checked.choice("data.split_by", split_by, SPLIT_BY)
        self.spatial_gap_km = checked.non_negative("data.spatial_gap_km", spatial_gap_km)
        self.spatial_block_km = (
            None
            if spatial_block_km in (None, "auto")
            else checked.non_negative("data.spatial_block_km", spatial_block_km)
        )
        self.fraction = checked.fraction(fraction)
        self.on_invalid = checked.choice("data.on_invalid", on_invalid, ON_INVALID)
        self.outside_tolerance_km = checked.non_negative(
            "data.outside_tolerance_km", outside_tolerance_km
        )
        self.use_cache = bool(cache)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.augment = bool(augment)
        self.augmenter = BatchAugment(seed=seed) if self.augment else None
        self.batch_size = checked.positive_int("data.batch_size", batch_size)
        self.num_workers = checked.non_negative_int("data.num_workers", num_workers)
        self.country = Country.coerce(country)
        if grid is None and fitted is None:
            raise DataError("a data module needs a grid factory (the grid config) or a fit")
        self.grid_factory = grid
        self.image_size = checked.positive_int("image.size", image_size)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.seed = int(seed)
        self.fitted = fitted
        self.progress = progress
        self.report: ValidationReport | None = None
        self.splits: dict[str, pd.DataFrame] = {}
        self.datasets: dict[str, GeoguesserDataset] = {}
        # The training order's sampler (TRAIN_ORDERS), once chosen: see _train_order.
        self.train_order_kind: str | None = None
        self._train_images = True
        self._train_reader: BatchReader | None = None

    # -- Lightning hooks ----------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Validate every row and file, build the image cache and, for a new fit, store the
        training split's image statistics beside it (rank 0, idempotent): the other ranks of a
        distributed run read them in `setup` instead of each computing them again."""
        valid = self._check_valid(self.validate())
        if self.fitted is None:
            self.splits = self.splits or self._split(valid)
            self._image_stats(self.report, self.splits["train"])

    def setup(self, stage: str | None = None) -> None:
        """Splits, train-fitted targets/grid/statistics and datasets; idempotent."""
        if self.datasets:
            return
        report = self.validate()
        valid = self._check_valid(report)
        self.splits = self.splits or self._split(valid)
        if self.fitted is None:
            self.fitted = self._fit(report, self.splits["train"])
        elif self.fitted.image_size != self.image_size:
            raise DataError(
                f"image.size={self.image_size}, but the checkpoint's model was trained at "
                f"{self.fitted.image_size} px"
            )
        self.datasets = {name: self._dataset(name, frame) for name, frame in self.splits.items()}
        if self.run_dir is not None and self._is_global_zero():
            self.fitted.save_once(self.run_dir / "fitted.json")

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", shuffle=True)
        self._train_reader = loader.dataset
        self._train_reader.images = self._train_images
        return loader

    def read_train_images(self, wanted: bool) -> None:
        """Whether training batches carry their images; without them (a model that reads
        cached backbone features by "row") they are not read from the image cache. Takes
        effect from the next epoch's first batch, and only for data read from the cache."""
        self._train_images = bool(wanted)
        if self._train_reader is not None:
            self._train_reader.images = self._train_images

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def state_dict(self) -> dict:
        """Saved by Lightning into checkpoints: what is needed to predict like this run, and
        the training order chosen (a resumed run keeps it whatever its memory)."""
        state = {"fitted": self.fitted.to_dict()} if self.fitted is not None else {}
        if self.train_order_kind is not None:
            state["train_order"] = self.train_order_kind
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restored before the loaders are built (the fitted data came in as `fitted`)."""
        kind = state_dict.get("train_order")
        if kind is not None and kind not in TRAIN_ORDERS:
            raise DataError(
                f"the checkpoint's training order {kind!r} is not one of {', '.join(TRAIN_ORDERS)}"
            )
        self.train_order_kind = kind if kind is not None else self.train_order_kind

    # -- Validation ---------------------------------------------------------------------------

    def validate(self) -> ValidationReport:
        """Validate every row and file (once per data module; the decode pass is cached)."""
        if self.report is None:
            self.roots = self.dataset_roots()
            self.report = validate_dataset(
                self.roots,
                self.country,
                self.outside_tolerance_km,
                image_size=self.image_size if self.use_cache else None,
                cache_root=self.cache_dir,
                workers=None,  # decoding uses every core
                progress=self.progress,
            )
        return self.report

    def dataset_roots(self) -> list[Path]:
        raise NotImplementedError

    def _check_valid(self, report: ValidationReport) -> pd.DataFrame:
        """The valid locations; with problems, the list is written and `on_invalid` decides."""
        if not report.problems:
            return report.valid
        listed = self._write_invalid(report)
        if self.on_invalid == "error":
            raise DataError(report.error_message(listed))
        log.warning(
            "data.on_invalid=skip: leaving out %d of %d locations (%d problems, listed in %s)",
            report.n_invalid_rows,
            report.n_rows,
            len(report.problems),
            listed or "the log",
        )
        if report.valid.empty:
            raise DataError("no valid location is left; see the problems listed above")
        return report.valid

    def _write_invalid(self, report: ValidationReport) -> Path | None:
        if self.run_dir is None or not self._is_global_zero():
            return None
        path = self.run_dir / "invalid_locations.csv"
        if not path.exists():
            write_csv_atomic(path, report.invalid_frame())
        return path

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
            )  # logs its blocks, sizes and dropped locations
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
            elif 0 < len(splits[name]) < FEW_LOCATIONS:
                # Spatial blocks are large: on a small dataset a split can get one or two.
                log.warning(
                    "the %s split holds only %d locations: its error says little (data.split=%s, "
                    "data.split_by=%s; on a small dataset try data.spatial_block_km smaller or "
                    "data.split_by=hash)",
                    name,
                    len(splits[name]),
                    list(self.ratios),
                    self.split_by,
                )
        return splits

    def _fit(self, report: ValidationReport, train: pd.DataFrame) -> FittedData:
        lat, lon = train["latitude"].to_numpy(), train["longitude"].to_numpy()
        grid = self.grid_factory(self.country, train_lat=lat, train_lon=lon)
        mean, std = self._image_stats(report, train)
        return FittedData(
            targets=TargetSpace.fit(lat, lon, self.country.crs),
            grid=grid,
            image_mean=mean,
            image_std=std,
            image_size=self.image_size,
            country=self.country,
            info=self._info(report),
        )

    def _image_stats(self, report: ValidationReport, train: pd.DataFrame):
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
            "fit_settings": fit_settings(self),
            "counts": {name: len(frame) for name, frame in self.splits.items()},
            "invalid": report.n_invalid_rows,
        }

    def loader(self, name: str) -> DataLoader:
        """The split `name` in order, never augmented, on this process alone (for passes over
        the data besides training: the retrieval index, the calibration)."""
        if name not in self.datasets:
            self.setup("fit")
        dataset = self.datasets[name]
        return self._batches(dataset, LocationShuffle(len(dataset), shuffle=False))

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """A training batch's augmentation parameters, drawn on the host from its host indices
        (after the transfer, reading them would wait for the device) and moved with it."""
        if self._augmenting():
            epoch, shape = self.trainer.current_epoch, batch["images"].shape
            batch[AUGMENT_PARAMS] = self.augmenter.prepare(batch["index"], epoch, shape)
        return batch

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Training batches augmented here, on the training device, as whole batches; each
        location's crop and jitter depend on (seed, epoch, location) alone."""
        params = batch.pop(AUGMENT_PARAMS, None)
        if self._augmenting():
            epoch = self.trainer.current_epoch
            batch["images"] = self.augmenter(batch["images"], batch["index"], epoch, params)
        return batch

    def _augmenting(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return self.augmenter is not None and trainer is not None and trainer.training

    def _dataset(self, name: str, frame: pd.DataFrame) -> GeoguesserDataset:
        lat, lon = frame["latitude"].to_numpy(), frame["longitude"].to_numpy()
        return GeoguesserDataset(
            frame,
            self.image_size,
            targets=self.fitted.targets.normalize(lat, lon) if len(frame) else np.zeros((0, 2)),
            class_ids=self.fitted.grid.assign(lat, lon) if len(frame) else np.zeros(0),
            cache=self.report.cache if self.report is not None else None,
            # Training keeps its batch size by borrowing the next location; evaluation must
            # not count a location twice, so it leaves the broken one out.
            on_failure="substitute" if name == "train" else "drop",
        )

    # -- Loaders ------------------------------------------------------------------------------

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        """Whole batches in an order that is a function of (seed, epoch); under DDP each rank
        takes its share (the trainer's own sampler replacement is off: see train.py)."""
        if name not in self.datasets:
            self.setup("fit")
        dataset = self.datasets[name]
        trainer = getattr(self, "trainer", None)
        ranks = {"rank": trainer.global_rank, "world_size": trainer.world_size} if trainer else {}
        if shuffle and self._train_order(dataset) == "block":
            sampler = BlockShuffle(dataset.rows, self.seed, **ranks)
        else:
            sampler = LocationShuffle(len(dataset), self.seed, shuffle=shuffle, **ranks)
        return self._batches(dataset, sampler)

    def _train_order(self, dataset: GeoguesserDataset) -> str:
        """`block` (`BlockShuffle`) when the image cache does not fit in memory, else
        `location`; chosen once per run by rank 0 and kept in checkpoints: the ranks' shares
        partition one order only if all use the same sampler, whatever memory each finds free."""
        if self.train_order_kind is None:
            cache = dataset.cache
            big = cache is not None and should_block_shuffle(cache.data_path.stat().st_size)
            kind = "block" if big else "location"
            strategy = getattr(getattr(self, "trainer", None), "strategy", None)
            if strategy is not None:  # every rank asks for its loader: a collective is safe here
                kind = strategy.broadcast(kind, src=0)
            self.train_order_kind = kind
        return self.train_order_kind

    def _batches(self, dataset: GeoguesserDataset, sampler) -> DataLoader:
        # From the cache, reading whole batches in this process is the fastest (no batch crosses
        # a process boundary); decoding JPEGs (data.cache=false) needs the workers.
        workers = self.num_workers if dataset.cache is None else 0
        return batch_loader(dataset, sampler, self.batch_size, num_workers=workers)

    def _is_global_zero(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer.is_global_zero if trainer is not None else global_rank() == 0


class FolderDataModule(GeoDataModule):
    """A dataset on disk (`data=folder data.root=PATH`, or a list of folders merged):
    `ROOT/data.csv` and `ROOT/images/<uuid>/{0,90,180,270}.jpg`."""

    def __init__(self, root, generator: dict | None = None, **kwargs) -> None:
        # `generator` (data=synthetic's settings) is accepted and unused, so that an experiment
        # written for the generated set also runs with data=folder.
        super().__init__(**kwargs)
        self.roots = as_roots(root)

    def dataset_roots(self) -> list[Path]:
        return self.roots
