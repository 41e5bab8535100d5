"""`python -m geoguess.synthesize data.root=OUT data.generator.num_locations=N`: the embedded
dataset.

Generates the synthetic dataset (`geoguess.synthetic`, described in docs/synthetic.md) and
writes a contact sheet of it, `preview.png`, into the run folder.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from geoguess import runs
from geoguess.geo import Country
from geoguess.synthetic.errors import SynthesizeError
from geoguess.synthetic.generator import generate
from geoguess.synthetic.preview import write_preview
from geoguess.utils.cli import CONFIG_PATH, instantiate, user_errors

__all__ = ["main"]


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="synthesize")
@user_errors
def main(cfg: DictConfig) -> Path:
    runs.claim(cfg)
    root = cfg.data.root
    if root is None:
        raise SynthesizeError("give the folder to generate into: data.root=PATH")
    if not isinstance(root, str):
        raise SynthesizeError(f"data.root must be one folder to generate into, not {list(root)}")
    country = Country.coerce(instantiate(cfg.country))
    generator = cfg.data.generator
    start = time.perf_counter()
    out = generate(
        root,
        num_locations=generator.num_locations,
        seed=generator.seed,
        country=country,
        image_size=generator.image_size,
        workers=max(1, int(cfg.data.num_workers)),
        overwrite=bool(cfg.overwrite),
    )
    size, count = generator.image_size, generator.num_locations
    print(
        f"wrote {count} synthetic locations ({4 * count} images of {size}x{size} px) to {out} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    print(f"wrote {write_preview(out, runs.run_dir() / 'preview.png', country)}")
    return out


if __name__ == "__main__":
    main()
