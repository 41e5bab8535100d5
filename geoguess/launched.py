"""The processes of a distributed run that something other than Lightning started (torchrun,
SLURM's srun): joining their process group before any data work."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig

from geoguess import runs
from geoguess.errors import GeoguessError


def join_launched_ranks(cfg: DictConfig) -> bool:
    """Under torchrun or SLURM (ranks started outside Lightning), join the process group now,
    before any data work, so that rank 0 alone prepares the data; Lightning's DDP strategy then
    uses this group. Returns whether the run is distributed so."""
    environment = next(
        (e() for e in (TorchElasticEnvironment, SLURMEnvironment) if e.detect()), None
    )
    if environment is None or environment.world_size() <= 1:
        return False
    if not str(cfg.trainer.get("strategy", "")).startswith("ddp"):
        raise GeoguessError(
            f"{environment.world_size()} processes were started (torchrun or SLURM) but "
            f"trainer.strategy is {cfg.trainer.get('strategy')!r}: use trainer=ddp"
        )
    if runs.is_multirun() and not isinstance(environment, SLURMEnvironment):
        raise GeoguessError("DDP inside a local -m sweep is not supported; see docs/sweeps.md")
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", environment.main_address)
        os.environ.setdefault("MASTER_PORT", str(environment.main_port))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(environment.local_rank())
        dist.init_process_group(
            backend, rank=environment.global_rank(), world_size=environment.world_size()
        )
    return True


def refuse_ddp_in_local_sweep(cfg: DictConfig) -> None:
    """Lightning would start each job's ranks by re-running the whole `-m` command."""
    if not runs.is_multirun() or not str(cfg.trainer.get("strategy", "")).startswith("ddp"):
        return
    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    if "submitit" not in launcher:
        raise GeoguessError(
            "trainer=ddp inside a local -m sweep: Lightning would start each job's ranks by "
            "re-running the whole sweep. Start the ranks with torchrun (one run at a time), or "
            "sweep on a cluster with hydra/launcher=submitit_slurm (see docs/sweeps.md)"
        )


def wait_for_the_other_ranks() -> None:
    """A barrier of the process group `join_launched_ranks` joined."""
    dist.barrier()
