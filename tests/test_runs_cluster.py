"""Run folders on clusters: which process is rank 0 under each launcher, and a SLURM job that
was preempted or requeued resuming its own folder."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from geoguess import runs

# Every variable a launcher sets that the rank rule could read.
LAUNCHER_VARIABLES = (
    "TORCHELASTIC_RUN_ID",
    "RANK",
    "LOCAL_RANK",
    "GROUP_RANK",
    "NODE_RANK",
    "LOCAL_WORLD_SIZE",
    "WORLD_SIZE",
    "SLURM_NTASKS",
    "SLURM_NTASKS_PER_NODE",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_JOB_NAME",
    "SLURM_RESTART_COUNT",
)


@pytest.fixture
def clean_environment(monkeypatch):
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def lightning_rank(processes_per_node: int) -> int:
    """The rank Lightning's trainer gives this process: its cluster environment chosen in
    Lightning's order (`_choose_and_init_cluster_environment`), and for its own launcher
    node_rank x processes per node + local_rank (what the DDP strategy sets)."""
    from lightning.fabric.plugins.environments import (
        LightningEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    for environment in (TorchElasticEnvironment, SLURMEnvironment):
        if environment.detect():
            return environment().global_rank()
    own = LightningEnvironment()
    return own.node_rank() * processes_per_node + own.local_rank()


# (launcher, its variables, the rank of this process)
LAUNCHERS = [
    ("a single process", {}, 0),
    (
        "torchrun, second node",
        {"TORCHELASTIC_RUN_ID": "abc", "RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1"},
        3,
    ),
    (
        "torchrun inside an srun task",
        {
            "TORCHELASTIC_RUN_ID": "abc",
            "RANK": "1",
            "LOCAL_RANK": "1",
            "SLURM_NTASKS": "1",
            "SLURM_PROCID": "0",
            "SLURM_JOB_NAME": "train",
        },
        1,
    ),
    ("Lightning's launcher, the process it was started as", {"LOCAL_RANK": "0"}, 0),
    (
        "Lightning's launcher, a process it started",
        {"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"},
        1,
    ),
    (
        "sbatch + srun, task 2 of 4",
        {
            "SLURM_NTASKS": "4",
            "SLURM_NTASKS_PER_NODE": "4",
            "SLURM_PROCID": "2",
            "SLURM_LOCALID": "2",
            "SLURM_NODEID": "0",
            "SLURM_JOB_NAME": "train",
        },
        2,
    ),
    (
        "interactive srun --pty bash, a process Lightning started",
        {
            "SLURM_NTASKS": "1",
            "SLURM_PROCID": "0",
            "SLURM_JOB_NAME": "bash",
            "LOCAL_RANK": "1",
            "NODE_RANK": "0",
            "WORLD_SIZE": "2",
        },
        1,
    ),
    (
        "interactive salloc shell (job name interactive), a process Lightning started",
        {
            "SLURM_NTASKS": "1",
            "SLURM_PROCID": "0",
            "SLURM_JOB_NAME": "interactive",
            "LOCAL_RANK": "3",
        },
        3,
    ),
    (
        "interactive shell, the process Lightning was started as",
        {"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_JOB_NAME": "bash", "LOCAL_RANK": "0"},
        0,
    ),
]


@pytest.mark.parametrize(
    "variables,expected", [c[1:] for c in LAUNCHERS], ids=[c[0] for c in LAUNCHERS]
)
def test_global_rank_under_each_launcher_agrees_with_lightning(
    clean_environment, variables, expected
):
    for name, value in variables.items():
        clean_environment.setenv(name, value)
    assert runs.global_rank() == expected
    assert runs.global_rank() == lightning_rank(processes_per_node=4)


def test_an_interactive_slurm_shell_has_one_rank_zero(clean_environment):
    """The old rule read SLURM_PROCID (0 in every process of the shell) first: each of the
    processes Lightning starts there claimed the run folder."""
    clean_environment.setenv("SLURM_NTASKS", "1")
    clean_environment.setenv("SLURM_PROCID", "0")
    clean_environment.setenv("SLURM_JOB_NAME", "bash")
    ranks = []
    for local_rank in range(4):
        clean_environment.setenv("LOCAL_RANK", str(local_rank))
        ranks.append(runs.global_rank())
    assert ranks == [0, 1, 2, 3]


# -- A requeued SLURM job -----------------------------------------------------------------------


def interrupted_run(out):
    """A run folder as an interrupted training session leaves it: its record and last.ckpt."""
    runs.write_record(out, OmegaConf.create({"seed": 1}))
    last = runs.last_checkpoint(out)
    last.parent.mkdir(parents=True)
    last.write_bytes(b"checkpoint")
    return last


def records(out):
    return sorted(p.relative_to(out).as_posix() for p in (out / ".hydra").rglob("config.yaml"))


def test_a_requeued_slurm_job_resumes_from_last_ckpt(clean_environment, tmp_path):
    out = tmp_path / "run"
    last = interrupted_run(out)
    clean_environment.setenv("SLURM_RESTART_COUNT", "1")
    assert runs.claim_for_training(OmegaConf.create({"seed": 1}), out, None) == last
    assert records(out) == [".hydra/config.yaml", ".hydra/resume-1/config.yaml"]
    # Every rank of the restarted job resumes from the same file.
    clean_environment.setenv("TORCHELASTIC_RUN_ID", "x")
    clean_environment.setenv("RANK", "1")
    assert runs.claim_for_training(OmegaConf.create({"seed": 1}), out, None) == last


def test_a_requeued_fine_tuning_job_resumes_its_own_folder(clean_environment, tmp_path):
    """Started from another run's checkpoint: after the restart its own last.ckpt is newer."""
    other = tmp_path / "other.ckpt"
    other.write_bytes(b"weights")
    out = tmp_path / "run"
    last = interrupted_run(out)
    clean_environment.setenv("SLURM_RESTART_COUNT", "2")
    assert runs.claim_for_training(OmegaConf.create({}), out, str(other)) == last


def test_without_a_restart_the_interrupted_folder_is_refused(clean_environment, tmp_path):
    out = tmp_path / "run"
    interrupted_run(out)
    before = records(out)
    for count in (None, "0"):
        if count is not None:
            clean_environment.setenv("SLURM_RESTART_COUNT", count)
        with pytest.raises(runs.RunFolderError, match="holds an interrupted run"):
            runs.claim_for_training(OmegaConf.create({}), out, None)
    assert records(out) == before


def test_a_requeued_job_that_had_finished_is_still_refused(clean_environment, tmp_path):
    out = tmp_path / "run"
    interrupted_run(out)
    (out / runs.RESULTS_FILE).write_text('{"status": "ok"}')
    clean_environment.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.raises(runs.RunFolderError, match="a finished run"):
        runs.claim_for_training(OmegaConf.create({}), out, None)
    assert records(out) == [".hydra/config.yaml"]


def test_a_job_restarted_before_its_first_checkpoint_starts_again(clean_environment, tmp_path):
    out = tmp_path / "run"
    runs.write_record(out, OmegaConf.create({"seed": 1}))
    clean_environment.setenv("SLURM_RESTART_COUNT", "1")
    assert runs.claim_for_training(OmegaConf.create({"seed": 1}), out, None) is None
    assert records(out) == [".hydra/config.yaml", ".hydra/resume-1/config.yaml"]


def test_slurm_restart_count_reads_the_variable(clean_environment):
    assert runs.slurm_restart_count() == 0
    clean_environment.setenv("SLURM_RESTART_COUNT", "3")
    assert runs.slurm_restart_count() == 3
    clean_environment.setenv("SLURM_RESTART_COUNT", "garbage")
    assert runs.slurm_restart_count() == 0
