"""`hydra/launcher=joblib`: the parallel jobs of a sweep share the machine's cores and GPUs.

Hydra's joblib launcher runs the jobs in a pool of `hydra.launcher.n_jobs` worker processes
(-1: one per core) and leaves devices alone: every job would see every GPU (and train on the
first one), and each would start as many torch threads as there are cores. `JoblibDevices`, a
Hydra callback (`hydra.callbacks.joblib_devices` in conf/run_dir.yaml), gives each job

- with GPUs, a GPU of its own: `CUDA_VISIBLE_DEVICES` names one device, and at most one job runs
  on each GPU; a worker waits for a free GPU when there are more workers than GPUs. A worker keeps
  its GPU for the next jobs it runs, as CUDA cannot change device in a process once initialised;
- its share of the cores: `torch.set_num_threads` (and `OMP_NUM_THREADS` for its subprocesses)
  set to the cores divided by the number of jobs that run at once.

It does nothing under other launchers and in single runs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from joblib import effective_n_jobs
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)

AUTO = "auto"


def uses_joblib(config: DictConfig) -> bool:
    target = OmegaConf.select(config, "hydra.launcher._target_", default="") or ""
    return str(target).endswith("JoblibLauncher")


def available_cores() -> int:
    """The cores this process may run on (a cgroup or `taskset` may allow fewer than exist)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as `CUDA_VISIBLE_DEVICES` entries (indices or UUIDs).

    Counting them initialises CUDA's driver in this process: call it in the sweep's parent
    process, never in a worker before its `CUDA_VISIBLE_DEVICES` is set.
    """
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return _listed_gpus(listed)
    # torch loads here, not at the top: only counting the GPUs needs it, and only when
    # CUDA_VISIBLE_DEVICES does not list them (optional: without torch, no GPU).
    try:
        import torch
    except ImportError:
        return []
    return [str(index) for index in range(torch.cuda.device_count())]


def threads_per_job(cores: int, jobs_at_once: int) -> int:
    return max(1, cores // max(1, jobs_at_once))


class GpuSlot:
    """One of `count` GPU slots held by this process, through an exclusive lock file each.

    The lock is released when the process ends, even when it is killed. A process takes the same
    slot again after releasing it: its CUDA context (if any) is bound to that GPU.
    """

    def __init__(self) -> None:
        self.slot: int | None = None
        self.preferred: int | None = None
        self._handle = None

    def claim(
        self, folder: str | Path, count: int, poll_s: float = 1.0, max_wait_s: float | None = None
    ) -> int | None:
        """The slot claimed (waiting while all are taken), or None after `max_wait_s`."""
        if self.slot is not None:
            return self.slot
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        candidates = [self.preferred] if self.preferred is not None else list(range(count))
        start = time.monotonic()
        announced = False
        while True:
            for slot in candidates:
                handle = open(folder / f"gpu-{slot}.lock", "a")  # noqa: SIM115 - held until release
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                self._handle, self.slot, self.preferred = handle, slot, slot
                return slot
            if max_wait_s is not None and time.monotonic() - start >= max_wait_s:
                return None
            if not announced:
                log.info("every GPU is busy; waiting for one to be free")
                announced = True
            time.sleep(poll_s)

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file releases its lock
        self._handle, self.slot = None, None


# The slot of this worker process (a callback object is unpickled afresh for every job).
_WORKER_SLOT = GpuSlot()


class JoblibDevices(Callback):
    """Hydra callback: cores and GPUs shared between the joblib launcher's parallel jobs.

    gpus: `auto` (the GPUs the sweep's process sees; none when the job's `trainer.accelerator`
        is `cpu`), a list of `CUDA_VISIBLE_DEVICES` entries (`[0,1]`), or 0 / [] for none.
    threads_per_job: `auto` (the cores divided by the jobs running at once) or a number.
    Their defaults are conf/run_dir.yaml's.
    """

    def __init__(self, gpus: Any, threads_per_job: Any) -> None:
        self.gpus = gpus
        self.threads_per_job = threads_per_job
        self._machine_gpus: list[str] | None = None
        self._slots_dir: str | None = None

    # -- in the sweep's process ----------------------------------------------------------------

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not uses_joblib(config):
            return
        # Set here, before the workers exist, and carried to them with this (pickled) object.
        self._machine_gpus = visible_gpus() if self.gpus == AUTO else None
        self._slots_dir = tempfile.mkdtemp(prefix="geoguess-gpu-slots-")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._slots_dir is not None:
            shutil.rmtree(self._slots_dir, ignore_errors=True)

    # -- in a worker, around each job ---------------------------------------------------------

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not uses_joblib(config):
            return
        gpus = self.job_gpus(config)
        workers = _effective_n_jobs(config.hydra.launcher.n_jobs)
        at_once = min(workers, len(gpus)) if gpus else workers
        cores = available_cores()
        threads = (
            threads_per_job(cores, at_once)
            if self.threads_per_job == AUTO
            else int(self.threads_per_job)
        )
        where = "CPU"
        if gpus:
            folder = self._slots_dir or Path(config.hydra.sweep.dir) / ".gpu-slots"
            slot = _WORKER_SLOT.claim(folder, len(gpus))
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot]
            where = f"GPU {gpus[slot]} (CUDA_VISIBLE_DEVICES)"
        os.environ["OMP_NUM_THREADS"] = str(threads)
        # torch loads here, not at the top: the sweep's parent process imports this callback too.
        import torch

        torch.set_num_threads(threads)
        log.info(
            "job %s on %s, %d torch thread(s): %d job(s) at once on %d core(s)",
            config.hydra.job.num,
            where,
            threads,
            at_once,
            cores,
        )

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if uses_joblib(config):
            _WORKER_SLOT.release()

    def job_gpus(self, config: DictConfig) -> list[str]:
        if self.gpus == AUTO:
            if OmegaConf.select(config, "trainer.accelerator", default=None) == "cpu":
                return []
            if self._machine_gpus is not None:
                return self._machine_gpus
            return _listed_gpus(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        if not self.gpus:
            return []
        if isinstance(self.gpus, Sequence | ListConfig) and not isinstance(self.gpus, str):
            return [str(gpu) for gpu in self.gpus]
        return _listed_gpus(str(self.gpus))


def _listed_gpus(listed: str) -> list[str]:
    return [entry.strip() for entry in listed.split(",") if entry.strip() not in ("", "-1")]


def _effective_n_jobs(n_jobs: int | None) -> int:
    """joblib's reading of n_jobs (-1: every core, -2: all but one, ...)."""
    return max(1, effective_n_jobs(n_jobs if n_jobs is not None else 1))
