"""`python -m geoguess.collect collect.n=300 collect.out=PATH`: collect Street View locations.

The API key and the signing secret are read from the environment inside the code, so they never
enter the Hydra config that is saved into the run directory; an override that looks like one
is refused before Hydra records the command line.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from geoguess import runs
from geoguess.collect.pipeline import collect
from geoguess.collect.settings import CollectSettings
from geoguess.collect.streetview import API_KEY_ENV, SIGNING_SECRET_ENV, Credentials
from geoguess.utils.cli import CONFIG_PATH, instantiate, user_errors
from geoguess.utils.io import write_json_atomic

_SECRET_NAME = re.compile(r"(key|secret|signature)$", re.IGNORECASE)


def refuse_secret_overrides(argv: list[str]) -> None:
    """Exit 2 on a `...key=` / `...secret=` override: Hydra would save it in .hydra/."""
    for arg in argv:
        name = arg.split("=", 1)[0].lstrip("+~").strip()
        if "=" in arg and _SECRET_NAME.search(name.rsplit(".", 1)[-1]):
            print(
                f"error: {name} is not a command-line setting; put the key in {API_KEY_ENV} "
                f"and the signing secret in {SIGNING_SECRET_ENV} (environment variables)",
                file=sys.stderr,
            )
            sys.exit(2)


# This module sits one package deeper than CONFIG_PATH's reference point (geoguess/).
@hydra.main(version_base="1.3", config_path=os.path.join("..", CONFIG_PATH), config_name="collect")
@user_errors
def main(cfg: DictConfig) -> int:
    out = runs.claim(cfg)
    settings = CollectSettings.from_config(OmegaConf.to_container(cfg.collect, resolve=True))
    credentials = Credentials.from_env()
    country = instantiate(cfg.country)
    grid_factory = instantiate(cfg.grid) if settings.balance_with else None
    try:
        summary = asyncio.run(collect(settings, country, credentials, grid_factory))
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue", file=sys.stderr)
        sys.exit(130)
    write_json_atomic(out / "summary.json", summary.to_dict(), overwrite=True)
    print(summary.report())
    return summary.collected


if __name__ == "__main__":
    refuse_secret_overrides(sys.argv[1:])
    main()
