"""`python -m geoguess.grid grid.spacing=0.5` (or `grid=adaptive`): build the class grid, write
classes.csv and grid.png."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from geoguess import runs
from geoguess.plots import plot_grid
from geoguess.utils.cli import CONFIG_PATH, instantiate, user_errors
from geoguess.utils.io import write_csv_atomic


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="grid")
@user_errors
def main(cfg: DictConfig) -> int:
    out = runs.claim(cfg)
    country = instantiate(cfg.country)
    grid = instantiate(cfg.grid)(country)
    write_csv_atomic(out / "classes.csv", grid.to_frame())
    plot_grid(country, grid, out / "grid.png")
    print(f"{grid.num_classes} classes at {grid.description} over {country.name}")
    print(f"wrote {out / 'classes.csv'} and {out / 'grid.png'}")
    return grid.num_classes


if __name__ == "__main__":
    main()
