"""Shared plumbing of the Hydra command-line apps."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

from geoguess.errors import GeoguessError
from geoguess.runs import register_resolvers

CONFIG_PATH = "../conf"  # relative to the module holding the @hydra.main function

register_resolvers()  # before any command composes its config


def user_errors(main: Callable) -> Callable:
    """Print a `GeoguessError` as one clear message and exit with its code (2 unless it says
    otherwise), instead of a traceback."""

    @functools.wraps(main)
    def wrapper(cfg, *args, **kwargs):
        from geoguess.utils.allocator import keep_freed_memory

        keep_freed_memory()  # CPU passes stop page-faulting their activations (allocator.py)
        try:
            check_missing(cfg)
            return main(cfg, *args, **kwargs)
        except GeoguessError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)

    return wrapper


def check_missing(cfg) -> None:
    """Refuse a config with mandatory values (`???`) left unset, naming them."""
    from omegaconf import DictConfig, OmegaConf, open_dict

    if not isinstance(cfg, DictConfig):
        return
    if "hydra" in cfg:  # a config composed with return_hydra_config (tests, the compose API)
        cfg = cfg.copy()
        with open_dict(cfg):
            del cfg["hydra"]
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        examples = {
            "data.root": "data.root=/path/to/dataset",
            "checkpoint": "checkpoint=outputs/train/<time>/checkpoints/last.ckpt",
            "sweeps": "sweeps=outputs/train-multirun/<time>",
        }
        example = examples.get(missing[0], f"{missing[0]}=...")
        raise GeoguessError(f"{', '.join(missing)} must be given, e.g. {example}")


def instantiate(node, *args, **kwargs):
    """`hydra.utils.instantiate`, with the user's error (a `GeoguessError` raised by the target)
    unwrapped from Hydra's `InstantiationException`, so it reads as one clear message."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, *args, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, GeoguessError):
            raise cause from None
        raise


def to_log_files(text: str, logger_name: str) -> None:
    """`text` into the command's log file (Hydra's file handler: train.log, predict.log) and
    no other handler: what is printed on the terminal too, without printing it twice."""
    logger = logging.getLogger(logger_name)
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
