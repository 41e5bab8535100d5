"""Shared plumbing of the Hydra command-line apps."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

from geoguess.errors import GeoguessError

CONFIG_PATH = "../conf"  # relative to the module holding the @hydra.main function


def run_dir() -> Path:
    """The current Hydra run (or multirun job) directory; Hydra 1.3 does not chdir into it."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def user_errors(main: Callable) -> Callable:
    """Print a `GeoguessError` as one clear message and exit 2, instead of a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except GeoguessError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)

    return wrapper
