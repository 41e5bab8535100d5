"""Running the project's commands in a subprocess, as a user would; importing its
experiment scripts."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def command_env() -> dict:
    """A command's environment: one torch thread, W&B offline, the checkout importable."""
    return {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO_ROOT),
        "HYDRA_FULL_ERROR": "0",
    }


def run_module(
    module: str, *args: str, cwd: Path = REPO_ROOT, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in a subprocess, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def experiment_script(name: str):
    """`experiments/NAME.py` imported as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
