"""Sweeps at scale: the joblib and submitit launchers, the Optuna search and the SLURM config,
run for real with tiny settings or composed (docs/sweeps.md)."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from pathlib import Path

import pytest
import yaml

from geoguess.sweeps.devices import GpuSlot, available_cores, threads_per_job
from geoguess.sweeps.study import mark_failed, sqlite_path
from tests.cli import run_module
from tests.train_helpers import CONF, dataset, fast_experiment, folder_data, run_cli

SEARCHED = {"optimizer.lr", "grid.spacing", "image.size", "head.smoothing_km"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return dataset(tmp_path_factory.getbasetemp(), num_locations=80, image_size=32)


def compose_train(overrides: list[str]):
    """The config of `python -m geoguess.train OVERRIDES`, Hydra's settings included."""
    from hydra import compose, initialize_config_dir

    from geoguess.runs import register_resolvers

    register_resolvers()

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="train"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def job_folders(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def results_of(job: Path) -> dict:
    return json.loads((job / "results.json").read_text())


# -- launchers: composition ---------------------------------------------------------------------


def test_slurm_config_one_task_per_gpu():
    cfg = compose_train(
        ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=8"]
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 8, 8)
    assert (launcher.nodes, launcher.timeout_min, launcher.array_parallelism) == (1, 1440, 16)
    default = compose_train(["hydra/launcher=slurm"]).hydra.launcher
    assert (default.gpus_per_node, default.tasks_per_node, default.partition) == (1, 1, None)


@pytest.mark.parametrize(
    ("choice", "target"),
    [
        ("joblib", "JoblibLauncher"),
        ("submitit_local", "LocalLauncher"),
        ("submitit_slurm", "SlurmLauncher"),
    ],
)
def test_the_plugins_launchers_compose_with_their_keys(choice, target):
    cfg = compose_train([f"hydra/launcher={choice}"])
    assert cfg.hydra.launcher._target_.endswith(target)
    if choice == "submitit_slurm":
        keys = {"partition", "gpus_per_node", "tasks_per_node", "timeout_min", "array_parallelism"}
        assert keys <= set(cfg.hydra.launcher)
    # Jobs go to <sweep>/<job number>/, and every launcher gets the device-sharing callback.
    from omegaconf import OmegaConf

    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.num}"
    assert cfg.hydra.callbacks.joblib_devices._target_ == "geoguess.sweeps.devices.JoblibDevices"


def test_a_slurm_sweep_submits_one_job_array_with_the_keys_set(tmp_path, monkeypatch):
    """The real CLI, plugin and submitit down to `sbatch`, which is faked: it keeps the script
    and refuses it, so the multirun ends there."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    capture = tmp_path / "sbatch.sh"
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" {capture}\necho "sbatch: error: a test cluster" >&2\nexit 1\n'
    )
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    done = run_module(
        "geoguess.train",
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.gpus_per_node=8",
        "hydra.launcher.timeout_min=90",
        "hydra.launcher.array_parallelism=1",
        "trainer=ddp",
        "grid.spacing=0.3,0.5",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )

    assert done.returncode != 0  # nothing ran: the fake sbatch refused the job
    script = capture.read_text()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --ntasks-per-node=8",  # one task (DDP rank) per GPU, started by srun
        "#SBATCH --nodes=1",
        "#SBATCH --time=90",
        "#SBATCH --array=0-1%1",  # both jobs in one array, one at a time
    ):
        assert line in script.splitlines(), script
    assert re.search(r"^srun .*submitit\.core\._submit", script, re.M), script


def test_optuna_search_config():
    cfg = compose_train(["hparams_search=optuna", "hydra.sweeper.study_name=lr-study"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "minimize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert set(sweeper.params) == SEARCHED
    assert sweeper.params["image.size"] == "choice(64, 112, 224)"
    # The study's SQLite file sits beside its runs' sweep folders, named after the study.
    assert sweeper.storage == "sqlite:///outputs/train-optuna/lr-study/study.db"
    assert cfg.hydra.sweep.dir.startswith("outputs/train-optuna/lr-study/")
    assert sweeper.max_failure_rate == 1.0
    callbacks = {node._target_ for node in cfg.hydra.callbacks.values()}
    assert "geoguess.sweeps.study.FailedTrials" in callbacks
    shared = compose_train(["hparams_search=optuna", "hydra.sweeper.storage=postgresql://h/db"])
    assert shared.hydra.sweeper.storage == "postgresql://h/db"


# -- the recipes of docs/sweeps.md --------------------------------------------------------------


def doc_commands() -> list[list[str]]:
    """The arguments of every `geoguess.train` command (python -m, torchrun) of docs/sweeps.md."""
    import shlex

    text = (CONF.parent / "docs" / "sweeps.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "geoguess.train" in words:
                commands.append(words[words.index("geoguess.train") + 1 :])
    return commands


def first_of_each_sweep(args: list[str]) -> list[str]:
    """`grid.spacing=0.3,0.5` -> `grid.spacing=0.3`: one job of the sweep, to compose."""
    composed = []
    for arg in args:
        if arg == "-m":
            continue
        key, sep, value = arg.partition("=")
        if sep and "," in value and not re.search(r"[\[(]", value):
            value = value.split(",")[0]
        composed.append(f"{key}={value}" if sep else arg)
    return composed


def test_every_recipe_of_the_manual_composes():
    commands = doc_commands()
    assert len(commands) >= 10, commands
    launchers = set()
    for args in commands:
        cfg = compose_train(first_of_each_sweep(args))
        launchers.add(cfg.hydra.launcher._target_.rsplit(".", 1)[-1])
        if "trainer=ddp" in args:
            assert "ddp" in str(cfg.trainer.strategy).lower()
        if "hparams_search=optuna" in args:
            assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
        if any(a.startswith("hydra/launcher=slurm") for a in args):
            assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node
    assert {"JoblibLauncher", "LocalLauncher", "SlurmLauncher"} <= launchers


# -- joblib: devices shared between parallel jobs -----------------------------------------------


def test_gpu_slots_are_exclusive_and_sticky(tmp_path):
    first, second, third = GpuSlot(), GpuSlot(), GpuSlot()
    assert first.claim(tmp_path, 2) == 0
    assert second.claim(tmp_path, 2) == 1
    assert third.claim(tmp_path, 2, max_wait_s=0) is None  # both GPUs busy
    first.release()
    assert third.claim(tmp_path, 2, max_wait_s=0) == 0
    # `first` initialised CUDA on GPU 0: it waits for that one, not for any free one.
    second.release()
    assert first.claim(tmp_path, 2, max_wait_s=0) is None
    third.release()
    assert first.claim(tmp_path, 2, max_wait_s=0) == 0


@pytest.mark.parametrize(
    ("gpus", "trainer", "visible", "at_once"),
    [
        ("[7]", "trainer=gpu", "7", 1),  # 2 workers, 1 GPU: one job at a time
        ("auto", "trainer=cpu", None, 2),  # CPU jobs: the cores shared by the 2 workers
    ],
)
def test_a_joblib_job_sees_its_gpu_and_its_share_of_the_cores(
    gpus, trainer, visible, at_once, monkeypatch
):
    import torch
    from hydra.utils import instantiate
    from omegaconf import open_dict

    cfg = compose_train(
        [
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"hydra.callbacks.joblib_devices.gpus={gpus}",
            trainer,
        ]
    )
    with open_dict(cfg):
        cfg.hydra.job.num = 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    callback = instantiate(cfg.hydra.callbacks.joblib_devices)
    threads_before = torch.get_num_threads()
    try:
        callback.on_multirun_start(cfg)
        callback.on_job_start(cfg, task_function=None)
        assert os.environ.get("CUDA_VISIBLE_DEVICES") == visible
        expected = max(1, available_cores() // at_once)
        assert threads_per_job(available_cores(), at_once) == expected
        assert torch.get_num_threads() == expected
        assert os.environ["OMP_NUM_THREADS"] == str(expected)
    finally:
        callback.on_job_end(cfg, job_return=None)
        callback.on_multirun_end(cfg)
        torch.set_num_threads(threads_before)


@pytest.mark.slow
def test_joblib_multirun_runs_two_jobs_in_parallel_workers_then_the_report(data_root, tmp_path):
    sweep = tmp_path / "sweep"
    done = run_cli(
        "train",
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            # No GPU here: two named ones are handed out all the same (training stays on CPU).
            "hydra.callbacks.joblib_devices.gpus=[3,5]",
            "seed=1,2",
            *fast_experiment(tmp_path / "conf"),
            *folder_data(data_root),
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = job_folders(sweep)
    assert [job.name for job in jobs] == ["0", "1"]
    lines = [
        re.search(r"job (\d) on GPU (\d) \(CUDA_VISIBLE_DEVICES\), (\d+) torch thread", line)
        for job in jobs
        for line in (job / "train.log").read_text().splitlines()
    ]
    found = sorted(match.groups() for match in lines if match)
    threads = str(threads_per_job(available_cores(), 2))
    assert [(num, t) for num, _, t in found] == [("0", threads), ("1", threads)]
    assert sorted(gpu for _, gpu, _ in found) == ["3", "5"]  # each job its own GPU
    # The worker processes ran the jobs, not the sweep's own process.
    assert "Joblib.Parallel(n_jobs=2" in done.stdout + done.stderr

    from geoguess.report import write_report
    from geoguess.sweeps.markdown import markdown
    from geoguess.sweeps.summary import build_report

    report = build_report([sweep])
    vals = [results_of(job)["val_haversine_km"] for job in jobs]
    # The two jobs differ only by seed: one row, their mean ± std, n = 2.
    row = f"| 2 | {statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f} |"
    assert row in re.sub(r" +", " ", markdown(report)), markdown(report)
    write_report(report, tmp_path / "report")
    assert (tmp_path / "report" / "report.png").stat().st_size > 10_000


def test_parallel_jobs_on_a_fresh_cache_share_the_set_the_first_one_generated(
    tmp_path, monkeypatch
):
    """Two joblib jobs of `data=synthetic` on an empty cache both generate the set; the one
    that finishes second must use the first one's set, not fail on the rename."""
    import shutil

    from geoguess.geo import Country
    from geoguess.synthetic import cache as synthetic_cache
    from geoguess.synthetic import generator

    monkeypatch.setenv(synthetic_cache.CACHE_ENV, str(tmp_path / "cache"))
    settings = {"num_locations": 3, "seed": 0, "image_size": 16}
    root = synthetic_cache.synthetic_root(Country(), 3, 0, 16)
    real_write_csv = generator._write_csv

    def write_csv_then_lose_the_race(path, *args):
        real_write_csv(path, *args)
        shutil.copytree(path.parent, root)  # the other job's identical set lands first

    monkeypatch.setattr(generator, "_write_csv", write_csv_then_lose_the_race)
    got = synthetic_cache.resolve_synthetic(None, Country(), settings, workers=1, progress=False)
    assert got == root
    assert len((root / "data.csv").read_text().splitlines()) == 1 + 3
    assert [p.name for p in root.parent.iterdir()] == [root.name]  # no partial folder left

    # A folder that appeared without a dataset in it is still an error.
    shutil.rmtree(root)
    monkeypatch.setattr(
        generator, "_write_csv", lambda path, *args: (root / "stray").mkdir(parents=True)
    )
    with pytest.raises(generator.SynthesizeError, match="appeared while generating"):
        synthetic_cache.resolve_synthetic(None, Country(), settings, workers=1, progress=False)


# -- submitit -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_submitit_local_multirun_runs_two_jobs(data_root, tmp_path):
    sweep = tmp_path / "sweep"
    done = run_cli(
        "train",
        [
            "-m",
            "hydra/launcher=submitit_local",
            "grid.spacing=0.5,0.8",
            *fast_experiment(tmp_path / "conf"),
            *folder_data(data_root),
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = job_folders(sweep)
    assert [job.name for job in jobs] == ["0", "1"]
    spacings = [yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) for job in jobs]
    assert ["grid.spacing=0.5" in o for o in spacings] == [True, False]
    results = [results_of(job) for job in jobs]
    assert results[0]["num_classes"] > results[1]["num_classes"]  # the finer grid
    # Each job ran in its own submitit process, logged under .submitit/<job id>/.
    logs = list((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2, logs


# -- Optuna -------------------------------------------------------------------------------------


def test_sqlite_path():
    assert sqlite_path("sqlite:///outputs/s/study.db") == Path("outputs/s/study.db")
    assert sqlite_path("sqlite:////abs/study.db") == Path("/abs/study.db")
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("postgresql://h/db") is None
    assert sqlite_path(None) is None


def test_a_job_without_a_finite_value_becomes_a_failed_job(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus

    (tmp_path / "results.json").write_text(json.dumps({"status": "failed", "error": "NaN loss"}))
    for value in (float("nan"), None, math.inf):
        job = JobReturn(status=JobStatus.COMPLETED, _return_value=value)
        assert mark_failed(job, tmp_path)
        assert job.status == JobStatus.FAILED
        with pytest.raises(Exception, match="NaN loss"):
            _ = job.return_value
    ok = JobReturn(status=JobStatus.COMPLETED, _return_value=61.5)
    assert not mark_failed(ok, tmp_path)
    assert ok.return_value == 61.5


def test_the_optuna_sweeper_records_a_nan_job_as_failed_and_goes_on(tmp_path):
    """hydra-optuna-sweeper with a task returning NaN on odd jobs, and the shipped callback."""
    (tmp_path / "toy.yaml").write_text(
        yaml.safe_dump(
            {
                "defaults": [{"override hydra/sweeper": "optuna"}, "_self_"],
                "x": 0.0,
                "hydra": {
                    "sweeper": {"n_trials": 4, "max_failure_rate": 1.0},
                    "callbacks": {"f": {"_target_": "geoguess.sweeps.study.FailedTrials"}},
                },
            }
        )
    )
    database = tmp_path / "db" / "toy.db"  # its folder is created by the callback
    done = run_module(
        "tests.sweep_toy",
        "--config-dir",
        str(tmp_path),
        "--config-name",
        "toy",
        "-m",
        "x=interval(0, 100)",
        f"hydra.sweeper.storage=sqlite:///{database}",
        "hydra.sweeper.study_name=toy",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    import optuna

    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{database}")
    states = [trial.state.name for trial in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "FAIL"]
    assert "Failed experiment: loss is NaN at epoch 2" in done.stdout + done.stderr
    values = [t.value for t in study.trials if t.state.name == "COMPLETE"]
    assert study.best_value == min(values)


@pytest.mark.slow
def test_optuna_study_of_3_trials_resumes_to_5(data_root, tmp_path):
    def search(trials: int):
        args = [
            "-m",
            "hparams_search=optuna",
            "hydra.sweeper.study_name=ci",
            f"hydra.sweeper.n_trials={trials}",
            *fast_experiment(tmp_path / "conf"),
            *folder_data(data_root),
            "image.size=32",  # fixed: taken out of the search space
        ]
        done = run_cli("train", args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]

    search(3)
    search(2)  # the same study name: continues the study

    import optuna

    study_dir = tmp_path / "outputs" / "train-optuna" / "ci"
    study = optuna.load_study(study_name="ci", storage=f"sqlite:///{study_dir / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    runs = sorted(p for p in study_dir.iterdir() if p.is_dir())
    jobs = [job for run in runs for job in job_folders(run)]
    assert [len(job_folders(run)) for run in runs] == [3, 2]
    for trial, job in zip(study.trials, jobs, strict=True):
        assert set(trial.params) == SEARCHED - {"image.size"}
        assert 1e-4 <= trial.params["optimizer.lr"] <= 3e-2
        assert trial.params["grid.spacing"] in (0.21, 0.3, 0.5, 0.8)
        assert 5 <= trial.params["head.smoothing_km"] <= 100
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert f"grid.spacing={trial.params['grid.spacing']}" in overrides
        # The value minimised is the job's best validation error.
        assert trial.value == pytest.approx(results_of(job)["val_haversine_km"])
