"""Keep freed memory in the process instead of handing it back to the kernel at once.

glibc's malloc serves large blocks (above a threshold that only grows to 32 MiB) with their own
`mmap` and unmaps them when freed, and trims the heap's top when more than 128 KiB are free. A
CPU forward or backward pass allocates activations of tens of MiB and frees them every step, so
each step maps fresh pages and pays one page fault per 4 KiB page: half the time of an
EfficientNet-Lite0 forward at 112 px on 2 cores went to the kernel. Raising both thresholds
(what `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` would do from the environment)
lets the heap keep and reuse those pages: that forward ran about 2.7x faster, and the bench's
frozen-Lite0 epoch without the feature cache took 16.4 s instead of 57.4 s
(docs/performance.md). The cost is that memory freed after a peak stays with the process until
it exits, which the training and prediction commands do not mind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30
ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB; True when they are now in effect.

    Does nothing (False) off Linux/glibc, when the user already tuned malloc through the
    environment, or when `GEOGUESS_KEEP_FREED_MEMORY=0`. Idempotent.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get("GEOGUESS_KEEP_FREED_MEMORY") == "0":
        return False
    if any(name in os.environ for name in ENVIRONMENT):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)
    )
    return _applied
