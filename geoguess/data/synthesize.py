"""`python -m geoguess.data.synthesize data.root=OUT data.num_locations=N`: the embedded dataset.

Generates the synthetic dataset (`geoguess.data.synthetic`, described in docs/synthetic.md) and
writes a contact sheet of it, `preview.png`, into the run folder.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from geoguess.data.synthetic import SynthesizeError, generate
from geoguess.data.synthetic.generator import as_country
from geoguess.data.synthetic.preview import write_preview
from geoguess.utils.cli import CONFIG_PATH, run_dir, user_errors

__all__ = ["SynthesizeError", "generate", "main"]


# The config folder is relative to this module, one level deeper than the other CLIs.
@hydra.main(version_base="1.3", config_path="../" + CONFIG_PATH, config_name="synthesize")
@user_errors
def main(cfg: DictConfig) -> Path:
    data = cfg.data
    root = data.root
    if not isinstance(root, str):
        raise SynthesizeError(f"data.root must be one folder to generate into, not {list(root)}")
    country = as_country(instantiate(cfg.country))
    start = time.perf_counter()
    out = generate(
        root,
        num_locations=data.num_locations,
        seed=data.seed,
        country=country,
        image_size=data.synthetic_image_size,
        workers=max(1, int(data.get("num_workers", 2))),
        overwrite=bool(cfg.overwrite),
    )
    size = data.synthetic_image_size
    print(
        f"wrote {data.num_locations} synthetic locations ({4 * data.num_locations} images of "
        f"{size}x{size} px) to {out} in {time.perf_counter() - start:.1f} s"
    )
    print(f"wrote {write_preview(out, run_dir() / 'preview.png', country)}")
    return out


if __name__ == "__main__":
    main()
