"""experiments/gpu_acceptance.sh and gpu_bench.sh on a machine without a usable GPU: they refuse
at once, in one line, with a non-zero exit, and leave nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT

SCRIPTS = ["gpu_acceptance", "gpu_bench"]


def run_script(name: str, tmp_path, path: str) -> tuple[subprocess.CompletedProcess, float]:
    out = tmp_path / "out"
    env = {**os.environ, "PATH": path, "PY": sys.executable, "OUT": str(out)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    start = time.monotonic()
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "experiments" / f"{name}.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, time.monotonic() - start


def fake_nvidia_smi(tmp_path) -> str:
    """A folder holding an `nvidia-smi` that lists a GPU torch will not find."""
    folder = tmp_path / "bin"
    folder.mkdir()
    smi = folder / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: Fake GPU (UUID: GPU-0)'\n")
    smi.chmod(0o755)
    return str(folder)


@pytest.mark.parametrize("name", SCRIPTS)
def test_refuses_at_once_without_nvidia_smi(name, tmp_path):
    done, seconds = run_script(name, tmp_path, "/usr/bin:/bin")
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 1
    assert lines == [f"{name}: no usable CUDA GPU: nvidia-smi not found; nothing run"]
    assert seconds < 10
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_refuses_at_once_when_torch_finds_no_gpu(name, tmp_path):
    """nvidia-smi lists a GPU, but torch cannot use one (no device, or a driver too old)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") is None:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a usable GPU")
    done, seconds = run_script(name, tmp_path, f"{fake_nvidia_smi(tmp_path)}:/usr/bin:/bin")
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 1, done
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{name}: no usable CUDA GPU: ")
    assert "nothing run" in lines[0] and "torch" in lines[0]
    assert seconds < 60
    assert not (tmp_path / "out").exists()


def test_acceptance_rows_read_the_logs_and_probe_files(tmp_path):
    from tests.cli import experiment_script

    probes = experiment_script("gpu_probes")
    log = tmp_path / "train.log"
    log.write_text(
        "[2026-12-06 10:00:00,000][geoguess.data][INFO] - data ready\n"
        "[2026-12-06 10:00:01,250][geoguess.models.feature_cache][INFO] - computing backbone "
        "features of 2000 locations once (features-x.npy)\n"
        "a line without a time stamp\n"
        "[2026-12-06 10:00:13,750][geoguess.train][INFO] - next\n"
    )
    assert probes.feature_cache_row(log) == ["| feature cache build | 12.5 s |"]
    compile_log = tmp_path / "compile.log"
    compile_log.write_text("x\nV1206 Recompiling function forward in a.py:1\nRecompiling b\ny\n")
    assert probes.recompiles_row(compile_log)[0].endswith("| 2 |")
    probe = tmp_path / "probe.json"
    probe.write_text(
        '{"epochs": [{"epoch": 1, "images_per_s": 2048.0, "step_ms": 125.0, "steps": 25,'
        ' "host_syncs_per_step": 0.04, "sync_sites": {"module.py:230": 1}}]}'
    )
    assert probes.train_rows("r50", probe) == [
        "| r50, epoch 1 | 2,048 images/s, 125.0 ms/step over 25 steps; host syncs 0.04/step: "
        "module.py:230 (1) |"
    ]
