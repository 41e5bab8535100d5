"""Timing and memory helpers shared by the sections: rates, CPU time, measured subprocesses,
page-cache eviction, I/O accounting.

Imports only the standard library: `in_subprocess` children import this module, and their
memory figures must count only the measured work.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path


def median_rate(count: Callable[[], float], repeats: int) -> float:
    """Median over `repeats` of `count()`, a rate in units per second."""
    return float(statistics.median(count() for _ in range(max(1, repeats))))


def seconds(function: Callable) -> float:
    """Wall-clock seconds of one call of `function`."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def in_subprocess(function: Callable[..., dict], **kwargs) -> dict:
    """Run the module-level `function(**kwargs)` in a fresh interpreter.

    Returns its result dict plus `peak_rss_mb` (that process's high-water resident set, which
    counts the pages of a memory-mapped file it read), `peak_anon_mb` (its largest anonymous
    memory, sampled every 10 ms: what it allocated) and `peak_children_rss_mb` (its largest
    child, e.g. a decode worker), so memory figures contain nothing of this process.
    """
    code = (
        "import json, sys; from geoguess.bench import timing; "
        "timing.child(json.loads(sys.stdin.read()))"
    )
    request = json.dumps(
        {"module": function.__module__, "function": function.__qualname__, "kwargs": kwargs}
    )
    here = str(Path(__file__).resolve().parents[2])  # this checkout's geoguess, not another
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path)
    done = subprocess.run(
        [sys.executable, "-c", code], input=request, capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        name = function.__qualname__
        raise RuntimeError(f"benchmark {name} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(request: dict) -> None:
    """The subprocess side of `in_subprocess`: run the function, print its result as JSON."""
    function = getattr(importlib.import_module(request["module"]), request["function"])
    peak_anon = [status_kb("RssAnon")]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak_anon[0] = max(peak_anon[0], status_kb("RssAnon"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result = function(**request["kwargs"])
    done.set()
    sampler.join()
    peak_anon[0] = max(peak_anon[0], status_kb("RssAnon"))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so it would count the RSS of
    # the benchmark process that forked this one.
    self_kb = status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result.update(
        peak_rss_mb=self_kb / 1024,
        peak_anon_mb=peak_anon[0] / 1024,
        peak_children_rss_mb=children_kb / 1024,
    )
    print(json.dumps(result))


def status_kb(field: str) -> int:
    """A `kB` field of /proc/self/status (0 where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pids: Sequence[int] = ()) -> float:
    """CPU time (user + system) of this process, its reaped children and the live `pids`.

    Rates on a shared machine depend on what the neighbours do; CPU time per item does much
    less, so the bench reports both.
    """
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def cpu_ms(runs: list[dict]) -> float:
    """Median CPU milliseconds per location of `runs` ({cpu_seconds, locations} each)."""
    return float(statistics.median(1000 * r["cpu_seconds"] / r["locations"] for r in runs))


def location_rate(run: dict) -> float:
    """Locations per second of a run ({seconds, locations})."""
    return run["locations"] / run["seconds"]


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def evict(path: Path) -> None:
    """Drop `path`'s pages from the page cache (written back first), for cold reads."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def process_read_bytes() -> int:
    """Bytes this process has caused to be read from storage (`read_bytes` of /proc/self/io:
    page faults, their read-around and read-ahead included); 0 where the kernel does not say."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


def sync(device) -> None:
    """Wait for the device's queued work, so that a clock read after it means something."""
    if device.type == "cuda":
        import torch  # here, not at the top: the measured subprocesses import this module

        torch.cuda.synchronize(device)


@contextlib.contextmanager
def quiet(*loggers: str):
    """Lightning's start-up lines (GPU available, tips) would bury the table."""
    levels = {name: logging.getLogger(name).level for name in loggers}
    try:
        for name in loggers:
            logging.getLogger(name).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
