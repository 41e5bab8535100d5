"""The synthetic world: a generated stand-in for Street View data (docs/synthetic.md).

Public API:

- `generate(root, num_locations, seed, country, image_size, ...)`: write a dataset in the folder
  format; same settings, same bytes.
- `SyntheticDataModule`: the data module of `data=synthetic`, which finds its set in the cache
  (`resolve_synthetic`, `synthetic_root`, `cache_dir`) and generates it there on first use.
- `dataset_key`, `GENERATOR_VERSION`: the name of a generated set; `SynthesizeError`.
- `write_preview`: a contact sheet of a set; `probe_dataset`: its shortcut probes.

Inside, from the map to the pixels: `world` (sea, distance to the sea, elevation), `regions`
(the smooth regional fields and zones), `scene` (what a position decides: horizon, zone weights,
road), `style` (what each zone grows and builds), `render` (the four views of one location),
`generator` (locations, rendering in worker processes, the folder), `cache` and `datamodule`.
`python -m geoguess.synthesize` is the command; this package holds no Hydra code.

Exports are resolved lazily: the data module pulls in torch and Lightning, the generator shapely
and the renderer, and neither should load for a look at the cache.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "GENERATOR_VERSION": "geoguess.synthetic.version",
    "SynthesizeError": "geoguess.synthetic.errors",
    "SyntheticDataModule": "geoguess.synthetic.datamodule",
    "cache_dir": "geoguess.synthetic.cache",
    "dataset_key": "geoguess.synthetic.version",
    "generate": "geoguess.synthetic.generator",
    "probe_dataset": "geoguess.synthetic.probe",
    "resolve_synthetic": "geoguess.synthetic.cache",
    "synthetic_root": "geoguess.synthetic.cache",
    "write_preview": "geoguess.synthetic.preview",
}

__all__ = [
    "GENERATOR_VERSION",
    "SynthesizeError",
    "SyntheticDataModule",
    "cache_dir",
    "dataset_key",
    "generate",
    "probe_dataset",
    "resolve_synthetic",
    "synthetic_root",
    "write_preview",
]

if TYPE_CHECKING:
    from geoguess.synthetic.cache import cache_dir, resolve_synthetic, synthetic_root
    from geoguess.synthetic.datamodule import SyntheticDataModule
    from geoguess.synthetic.errors import SynthesizeError
    from geoguess.synthetic.generator import generate
    from geoguess.synthetic.preview import write_preview
    from geoguess.synthetic.probe import probe_dataset
    from geoguess.synthetic.version import GENERATOR_VERSION, dataset_key


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
