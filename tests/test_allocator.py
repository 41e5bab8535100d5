"""The allocator setting that stops CPU steps from page-faulting their activations afresh."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Five forward passes of a small CNN after three warm-up ones: their activations (51 MB each,
# above the 32 MiB that glibc's adaptive mmap threshold can reach) are freed and allocated
# again every pass. Prints whether the setting applied and the minor
# page faults of the five passes.
PROBE = """
import resource, torch
from geoguess.utils.allocator import keep_freed_memory
applied = keep_freed_memory()
torch.set_num_threads(1)
conv = torch.nn.Sequential(
    torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, padding=1)
)
x = torch.rand(32, 3, 112, 112)
with torch.no_grad():
    for _ in range(3):
        conv(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        conv(x)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def probe(**env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    clean.pop("GEOGUESS_KEEP_FREED_MEMORY", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    applied, faults = done.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    kept, kept_faults = probe()
    default, default_faults = probe(GEOGUESS_KEEP_FREED_MEMORY="0")
    assert kept and not default
    activation_pages = 32 * 32 * 112 * 112 * 4 // 4096
    assert default_faults > 5 * activation_pages  # unmapped when freed, faulted in again
    # Kept by the heap and reused: none faulted in alone, at most two heap growths while the
    # passes settle when other processes load the machine (one activation each, seen in CI);
    # without the setting every pass faults every activation in again (about 30x the pages).
    assert kept_faults <= activation_pages * 2.2 < default_faults / 10


def test_a_user_tuned_malloc_is_left_alone():
    applied, _ = probe(MALLOC_TRIM_THRESHOLD_="1000000")
    assert not applied
