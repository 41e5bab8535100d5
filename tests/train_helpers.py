"""Shared by the training and prediction tests: tiny generated datasets and composed configs."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

from tests.cli import run_module

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# Keep W&B off the network in every test process (and in their subprocesses).
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# The smallest settings that still run every part of a training job.
FAST = [
    "backbone=tiny",
    "logger=none",
    "image.size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.augment=false",
    "scheduler=none",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
]


def fast_experiment(folder: Path, name: str = "ci_fast") -> list[str]:
    """`FAST` as an experiment file under `folder`, and the overrides that select it.

    A sweep's job directories are named after its overrides; a long list of fixed settings on
    the command line would make names longer than the file system allows.
    """
    import yaml

    groups = [o.split("=", 1) for o in FAST if "." not in o.split("=", 1)[0]]
    nested: dict = {}
    for override in FAST:
        key, value = override.split("=", 1)
        if "." not in key:
            continue
        node = nested
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(value)
    lines = ["# @package _global_", "defaults:"]
    lines += [f"  - override /{group}: {option}" for group, option in groups]
    lines.append(yaml.safe_dump(nested, default_flow_style=False, sort_keys=False))
    path = Path(folder) / "experiment" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return [f"experiment={name}", f"hydra.searchpath=[file://{Path(folder).resolve()}]"]


def dataset(base: Path, num_locations: int = 80, image_size: int = 32, seed: int = 0) -> Path:
    """A generated dataset under `base`, made once per settings (kept for the session)."""
    from geoguess.synthetic import generate

    root = Path(base) / f"synthetic-n{num_locations}-s{seed}-{image_size}px"
    if not (root / "data.csv").exists():
        generate(
            root,
            num_locations=num_locations,
            seed=seed,
            image_size=image_size,
            workers=2,
            progress=False,
        )
    return root


def folder_data(root: Path) -> list[str]:
    return ["data=folder", f"data.root={root}"]


@contextmanager
def composed(overrides: list[str], run_dir: Path, config_name: str = "train"):
    """The config of `python -m geoguess.<config_name> OVERRIDES`, with Hydra's runtime set so
    that `run_dir()` and `${hydra:...}` resolve (to `run_dir`)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from geoguess.runs import register_resolvers

    register_resolvers()

    run_dir = Path(run_dir)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name=config_name):
        cfg = compose(
            config_name,
            overrides=[*overrides, f"hydra.run.dir={run_dir}"],
            return_hydra_config=True,
        )
        cfg.hydra.runtime.output_dir = str(run_dir)
        HydraConfig.instance().set_config(cfg)
        try:
            yield cfg
        finally:
            HydraConfig.instance().cfg = None


def run_training(overrides: list[str], run_dir: Path) -> dict:
    """`python -m geoguess.train OVERRIDES hydra.run.dir=RUN_DIR`, in this process; returns
    its results dict."""
    from geoguess.train import run_job

    with composed(overrides, run_dir) as cfg:
        return run_job(cfg)


def run_cli(
    module: str, args: list[str], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python -m geoguess.<module> ARGS` in a subprocess, one torch thread, W&B offline."""
    return run_module(f"geoguess.{module}", *args, cwd=cwd, timeout=timeout)
