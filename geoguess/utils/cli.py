"""Shared plumbing of the Hydra command-line apps."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from geoguess.errors import GeoguessError
from geoguess.runs import CHECKPOINT_DIR, global_rank, register_resolvers
from geoguess.utils.allocator import keep_freed_memory

CONFIG_PATH = "../conf"  # relative to the module holding the @hydra.main function

register_resolvers()  # before any command composes its config

# The folders this process's single run created, its run folder first, then each parent it
# had to make (RunFolderGuard): what a refused command removes again.
_created_folders: list[Path] = []


class RunFolderGuard(Callback):
    """Makes a single run's folder before Hydra does, so that a folder that cannot be made
    is one plain line (not Hydra's traceback), and remembers what it made, so that a command
    refused with a user error leaves no folder behind (`user_errors`).

    Registered in `conf/run_dir.yaml` as a Hydra callback; sweeps keep every job's folder
    (a failed job's `results.json` is the sweep's record of it).
    """

    def on_run_start(self, config, **kwargs) -> None:
        HydraConfig.instance().set_config(config)  # the folder's `${hydra:job.name}` needs it
        out = Path(os.path.abspath(str(config.hydra.run.dir)))  # as Hydra will make it
        _created_folders[:] = make_run_folder(out)


def make_run_folder(out: Path) -> list[Path]:
    """Create `out` (and its parents); the folders created, deepest first. A folder that
    cannot be made or written into exits with one line saying which and why."""
    missing = [folder for folder in (out, *out.parents) if not folder.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        for folder in missing:  # the parents made before the failure
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        print(
            f"error: cannot write the run folder {out}: {exc.strerror or exc}; choose another "
            "with hydra.run.dir=PATH",
            file=sys.stderr,
        )
        sys.exit(2)
    return missing


def remove_refused_run_folder(exc: GeoguessError) -> None:
    """Remove the run folder (and the parents) this command made, now that it was refused,
    unless it holds what the user needs: a checkpoint, or a file the message names."""
    if not _created_folders or global_rank() != 0:
        return
    out = _created_folders[0]
    checkpoints = out / CHECKPOINT_DIR
    if (checkpoints.is_dir() and any(checkpoints.iterdir())) or str(out) in str(exc):
        return
    root = logging.getLogger()
    for handler in list(root.handlers):  # the command's log file, opened by Hydra
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(
            out
        ):
            root.removeHandler(handler)
            handler.close()
    shutil.rmtree(out, ignore_errors=True)
    for folder in _created_folders[1:]:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    _created_folders.clear()


def user_errors(main: Callable) -> Callable:
    """Print a `GeoguessError` as one clear message and exit with its code (2 unless it says
    otherwise), instead of a traceback."""

    @functools.wraps(main)
    def wrapper(cfg, *args, **kwargs):
        keep_freed_memory()  # CPU passes stop page-faulting their activations (allocator.py)
        try:
            check_missing(cfg)
            return main(cfg, *args, **kwargs)
        except GeoguessError as exc:
            print(f"error: {exc}", file=sys.stderr)
            if exc.exit_code == GeoguessError.exit_code:  # refused, not interrupted (130)
                remove_refused_run_folder(exc)
            sys.exit(exc.exit_code)
        finally:  # the folder is this command's to remove only while it runs
            _created_folders.clear()

    return wrapper


def check_missing(cfg) -> None:
    """Refuse a config with mandatory values (`???`) left unset, naming them."""
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
