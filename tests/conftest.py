"""Shared test settings: offline W&B, one thread per process (the CI box has 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "real-sample"


@pytest.fixture(autouse=True, scope="session")
def _single_thread_torch():
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture
def real_sample() -> Path:
    """The 100 real Croatian locations in ../shared; tests using it skip when it is absent."""
    if not (REAL_SAMPLE / "data.csv").exists():
        pytest.skip(f"real sample not present at {REAL_SAMPLE}")
    return REAL_SAMPLE
