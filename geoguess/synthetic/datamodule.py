"""`SyntheticDataModule` (`data=synthetic`): the generated dataset, made on first use."""

from __future__ import annotations

from pathlib import Path

from geoguess.data.datamodule import GeoDataModule
from geoguess.synthetic.cache import resolve_synthetic


class SyntheticDataModule(GeoDataModule):
    """The generated set; `generator` holds its `num_locations`, `seed` and `image_size`
    (`data.generator.*`). `root` null: the set of these settings in the cache, generated there
    when missing (in `prepare_data`, so under DDP by rank 0 only); a given `root` must hold a
    dataset already."""

    def __init__(self, *, root: str | Path | None, generator: dict, **kwargs):
        super().__init__(**kwargs)
        self.root = root
        self.generator = dict(generator)

    def dataset_roots(self) -> list[Path]:
        root = resolve_synthetic(
            self.root, self.country, self.generator, self.num_workers, self.progress
        )
        return [root]
