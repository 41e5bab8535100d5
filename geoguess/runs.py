"""Run folders: every command writes into its own directory, and never over another run's.

Hydra's record of a run (`.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml`) is written
here, not by Hydra (`hydra.output_subdir` is null in `conf/run_dir.yaml`): Hydra would write
it before the command could look at the folder, so a command refused in a finished run's
folder would still replace that run's record. Here a refused command changes nothing, and a
resumed training run keeps the original record and adds its own beside it
(`.hydra/resume-<k>/`). In a sweep, each job folder also gets `job.txt`: its overrides on one
line, since folder names carry only the job number (paths with `=` or `,` would not paste
back into a Hydra command line).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import warnings
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf

from geoguess.errors import GeoguessError
from geoguess.utils.io import write_text_atomic

RECORD_DIR = ".hydra"
JOB_FILE = "job.txt"
RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"

log = logging.getLogger(__name__)


class RunFolderError(GeoguessError):
    """A run folder that this command must not write into."""


@contextmanager
def refusing_resume(resume: Path | None):
    """A user error raised inside while resuming is marked as a refused resume (same error,
    same message): the checkpoint does not fit the command or cannot be read."""
    try:
        yield
    except GeoguessError as exc:
        if resume is not None:
            exc.refused_resume = True
        raise


def is_refused_resume(exc: BaseException) -> bool:
    return bool(getattr(exc, "refused_resume", False))


def drop_resume_record(out: Path) -> None:
    """Remove the newest `.hydra/resume-<k>/` record, written by this refused resume."""
    records = sorted(
        (Path(out) / RECORD_DIR).glob("resume-*"), key=lambda p: int(p.name.split("-")[1])
    )
    if records and global_rank() == 0:
        shutil.rmtree(records[-1])


def global_rank() -> int:
    """This process's rank among the training processes (0 when there is only one).

    The rule by which Lightning chooses its cluster environment (`TorchElasticEnvironment`,
    then `SLURMEnvironment`, then its own launcher's), so that this agrees with the trainer's
    `global_rank`: torchrun's `RANK`; else `SLURM_PROCID` when SLURM started the tasks
    (`SLURMEnvironment.detect()`: `srun`, not an interactive `salloc` or `srun --pty bash` shell,
    whose job name is bash or interactive, where every process reads `SLURM_PROCID=0`); else the
    `NODE_RANK` and `LOCAL_RANK` that Lightning's launcher gives the processes it starts (on
    nodes past the first, exact with `LOCAL_WORLD_SIZE`, otherwise at least never 0).
    """
    if os.environ.get("TORCHELASTIC_RUN_ID") is not None:  # torch's is_torchelastic_launched
        return int(os.environ["RANK"])
    if "SLURM_NTASKS" in os.environ and _slurm_started_tasks():
        return int(os.environ["SLURM_PROCID"])
    if os.environ.get("LOCAL_RANK") is not None:
        node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        return node * local_size + int(os.environ["LOCAL_RANK"])
    return 0


def _slurm_started_tasks() -> bool:
    # Lightning loads here, not at the top: only a SLURM allocation needs it, and every command
    # imports this module.
    from lightning.fabric.plugins.environments import SLURMEnvironment

    with warnings.catch_warnings():  # "srun is available but not used": Lightning says it too
        warnings.simplefilter("ignore")
        return SLURMEnvironment.detect()


def run_stamp(pattern: str) -> str:
    """`${now:pattern}` for run folder names, except that every process started by one
    torchrun shares its folder: there the time is the launching agent's start time, the same
    for all of them."""
    started = _torchrun_agent_started() if os.environ.get("TORCHELASTIC_RUN_ID") else None
    moment = datetime.fromtimestamp(started) if started is not None else datetime.now()
    return moment.strftime(pattern)


def _torchrun_agent_started() -> float | None:
    """Unix time at which this process's parent (torchrun's agent) started (Linux /proc)."""
    try:
        stat = Path(f"/proc/{os.getppid()}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: start time since boot
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def register_resolvers() -> None:
    """`${run_stamp:PATTERN}`, used by `conf/run_dir.yaml` (idempotent)."""
    if not OmegaConf.has_resolver("run_stamp"):
        OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True)


def run_dir() -> Path:
    """The current Hydra run (or multirun job) directory; Hydra 1.3 does not chdir into it."""
    return Path(HydraConfig.get().runtime.output_dir)


def task_overrides() -> list[str]:
    """The overrides of this run or sweep job, as typed."""
    return list(HydraConfig.get().overrides.task)


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def last_checkpoint(out: Path) -> Path:
    return Path(out) / CHECKPOINT_DIR / LAST_CHECKPOINT


def holds_a_run(out: Path) -> bool:
    """Whether `out` already holds a record, checkpoints or results of a run."""
    out = Path(out)
    checkpoints = out / CHECKPOINT_DIR
    return (
        (out / RECORD_DIR / "config.yaml").exists()
        or (out / RESULTS_FILE).exists()
        or (checkpoints.is_dir() and any(checkpoints.iterdir()))
    )


def claim(cfg, out: Path | None = None) -> Path:
    """Take `out` (default: the Hydra run folder) for a new run and write its record.

    Refuses, changing nothing, a folder that already holds a run.
    """
    out = Path(out) if out is not None else run_dir()
    if holds_a_run(out):
        raise RunFolderError(
            f"{out} already holds a run; choose another folder (hydra.run.dir=...) or leave "
            "hydra.run.dir out for a new one"
        )
    write_record(out, cfg)
    return out


def claim_for_training(cfg, out: Path, ckpt_path: str | None) -> Path | None:
    """Take `out` for a training run; returns the checkpoint to resume from, if any.

    `ckpt_path=last` resumes the interrupted run of `out` itself; a path to a `.ckpt` starts
    a new run in a fresh folder from that checkpoint. A job that SLURM restarted
    (`SLURM_RESTART_COUNT` > 0: preempted, or requeued by submitit at its time limit, with the
    same overrides) resumes its folder's `last.ckpt` as `ckpt_path=last` would. Nothing in `out`
    is changed when refused. Only rank 0 of a distributed run claims the folder; the other ranks
    join it.
    """
    out = Path(out)
    restart = slurm_restart_count()
    if restart and ckpt_path != "last":
        if last_checkpoint(out).is_file():
            # Preempted or requeued at its time limit (submitit resubmits the same overrides):
            # continue the interrupted session instead of refusing its folder.
            log.info("SLURM restarted this job (%d): resuming from %s", restart, out)
            ckpt_path = "last"
        elif global_rank() == 0 and _read_results(out) is None and holds_a_run(out):
            # Stopped before its first checkpoint: start it again in its own folder.
            write_record(out, cfg, resume=True)
            return Path(ckpt_path).expanduser() if ckpt_path is not None else None
    if global_rank() != 0:
        resume = last_checkpoint(out) if ckpt_path == "last" else ckpt_path
        return Path(resume).expanduser() if resume is not None else None
    results = _read_results(out)
    if results is not None:
        status = results.get("status", "ok")
        what = "a finished run" if status == "ok" else f"a failed run ({results.get('error')})"
        raise RunFolderError(
            f"{out} holds {what} (results.json); start a new run elsewhere (leave "
            "hydra.run.dir out)"
        )
    if ckpt_path == "last":
        last = last_checkpoint(out)
        if not last.is_file() and (out / RECORD_DIR / "config.yaml").exists():
            # Stopped before its first epoch ended (the first last.ckpt): start it again here.
            log.info("%s has no checkpoint yet: starting its run again", out)
            write_record(out, cfg, resume=True)
            return None
        if not last.is_file():
            raise RunFolderError(
                f"ckpt_path=last: there is no {last}; to resume an interrupted run, pass its "
                "folder as hydra.run.dir=outputs/train/<time> (or give ckpt_path=/path/to.ckpt)"
            )
        write_record(out, cfg, resume=True)
        return last
    if holds_a_run(out):
        raise RunFolderError(
            f"{out} holds an interrupted run; resume it with hydra.run.dir={out} "
            "ckpt_path=last, or start a new run elsewhere (leave hydra.run.dir out)"
        )
    if ckpt_path is not None and not Path(ckpt_path).expanduser().is_file():
        raise RunFolderError(f"ckpt_path={ckpt_path} does not exist")
    write_record(out, cfg)
    return Path(ckpt_path).expanduser() if ckpt_path is not None else None


def slurm_restart_count() -> int:
    """How many times SLURM has restarted this job (`SLURM_RESTART_COUNT`; 0 outside SLURM)."""
    try:
        return max(0, int(os.environ.get("SLURM_RESTART_COUNT", 0)))
    except ValueError:
        return 0


def write_record(out: Path, cfg, resume: bool = False) -> Path:
    """`.hydra/{config,hydra,overrides}.yaml` (or `.hydra/resume-<k>/` for a resume), and
    `job.txt` in a sweep job's folder."""
    out = Path(out)
    folder = out / RECORD_DIR
    if resume:
        k = 1
        while (folder / f"resume-{k}").exists():
            k += 1
        folder = folder / f"resume-{k}"
    task = OmegaConf.to_container(cfg, resolve=False)
    task.pop("hydra", None)
    overrides = task_overrides() if HydraConfig.initialized() else []
    write_text_atomic(folder / "config.yaml", OmegaConf.to_yaml(task))
    if HydraConfig.initialized():
        hydra = OmegaConf.create({"hydra": HydraConfig.get()})
        write_text_atomic(folder / "hydra.yaml", OmegaConf.to_yaml(hydra))
    write_text_atomic(folder / "overrides.yaml", OmegaConf.to_yaml(overrides))
    if is_multirun() and not (out / JOB_FILE).exists():
        write_text_atomic(out / JOB_FILE, " ".join(overrides) + "\n")
    return folder


def _read_results(out: Path) -> dict | None:
    path = Path(out) / RESULTS_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {"status": "unreadable", "error": f"{path} is not valid JSON"}


def failed_jobs(sweep_dir: Path) -> list[tuple[Path, str]]:
    """(job folder, reason) of every job under `sweep_dir` whose results.json says it failed."""
    failed = []
    for path in sorted(Path(sweep_dir).glob(f"**/{RESULTS_FILE}")):
        results = _read_results(path.parent) or {}
        if results.get("status", "ok") != "ok":
            failed.append((path.parent, str(results.get("error"))))
    return failed


class ExitNonZeroOnFailedJobs(Callback):
    """A sweep goes on past a failed job (its folder says why); at its end, exit 1 if any did.

    Registered in `conf/run_dir.yaml` as a Hydra callback, so it runs in the process that
    launched the sweep, whichever launcher ran the jobs.
    """

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        failed = failed_jobs(sweep_dir)
        if not failed:
            return
        print(f"error: {len(failed)} job(s) of the sweep {sweep_dir} failed:", file=sys.stderr)
        for folder, reason in failed:
            print(f"  {folder}: {reason}", file=sys.stderr)
        sys.exit(1)
