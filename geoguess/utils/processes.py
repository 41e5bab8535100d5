"""Worker processes for CPU-bound file work (decoding images, rendering the synthetic set)."""

from __future__ import annotations

import multiprocessing
import sys
from multiprocessing.context import BaseContext


def pool_context() -> BaseContext:
    """fork where Linux has it, like torch's DataLoader: spawn would re-import the caller's
    __main__ (torch, lightning, timm: seconds per worker), and the workers only run PIL and
    numpy. spawn elsewhere."""
    if sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")
