"""Worker processes for CPU-bound file work (decoding images, rendering the synthetic set)."""

from __future__ import annotations

import multiprocessing
import sys
from multiprocessing.context import BaseContext
from multiprocessing.pool import Pool

from threadpoolctl import threadpool_limits


def pool_context() -> BaseContext:
    """fork where Linux has it, like torch's DataLoader: spawn would re-import the caller's
    __main__ (torch, lightning, timm: seconds per worker), and the workers only run PIL and
    numpy. spawn elsewhere."""
    if sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def worker_pool(processes: int) -> Pool:
    """A `pool_context()` pool whose workers run BLAS and OpenMP on one thread each.

    For workers that run numpy's matrix products (the renderer's noise): a forked numpy whose
    BLAS still starts one thread per core oversubscribes the cores, and 2,000 locations at
    320 px took 2.3x as long on 2 cores. The image-cache pools only decode with PIL: they
    keep `pool_context()` as it is.
    """
    return pool_context().Pool(processes, initializer=_one_thread_each)


def _one_thread_each() -> None:
    threadpool_limits(1)
