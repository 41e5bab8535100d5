"""Concurrent first runs of one dataset build its image cache once: a second builder waits for
the first's lock, then loads what it built."""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
import time
from pathlib import Path

import numpy as np

from geoguess.data import cache as cache_mod
from tests.data_helpers import write_dataset

KEY = "c" * 64
SIZE = 16
TIMEOUT_S = 120


def _builder(frame, cache_root: str, builds: str, start, results) -> None:
    """One run's build: each decoding pass it makes is counted in the file `builds`."""
    write_array = cache_mod.write_array

    def counted(*args, **kwargs):
        with open(builds, "a") as f:
            f.write("build\n")
        time.sleep(1.0)  # the other builder arrives while this one works
        return write_array(*args, **kwargs)

    cache_mod.write_array = counted
    try:
        start.wait(timeout=TIMEOUT_S)
        cache = cache_mod.build_cache(Path(cache_root), KEY, frame, SIZE, 0, progress=False)
        data = np.ascontiguousarray(cache.open())
        results.put((hashlib.sha256(data.tobytes()).hexdigest(), cache.uuids, data.any()))
    except BaseException as exc:  # noqa: BLE001 - handed to the test
        results.put((f"error: {exc!r}", (), False))


def test_two_concurrent_builders_build_once_and_read_the_same_bytes(tmp_path):
    root = tmp_path / "data"
    frame = write_dataset(root, 24, size=24, seed=5)
    frame = frame.assign(root=str(root), latitude_raw="0", longitude_raw="0")
    cache_root, builds = tmp_path / "cache", tmp_path / "builds.txt"
    context = multiprocessing.get_context("fork")  # the builders run no torch
    start, results = context.Barrier(2), context.Queue()
    args = (frame, str(cache_root), str(builds), start, results)
    builders = [context.Process(target=_builder, args=args) for _ in range(2)]
    for process in builders:
        process.start()
    try:
        answers = [results.get(timeout=TIMEOUT_S) for _ in builders]
    finally:
        for process in builders:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    assert not any(str(a[0]).startswith("error") for a in answers), answers
    assert builds.read_text().splitlines() == ["build"]  # one decoding pass, not two
    assert answers[0] == answers[1]
    digest, uuids, nonzero = answers[0]
    assert nonzero and len(uuids) == 24
    # The bytes of a build made alone, in another folder.
    alone = cache_mod.build_cache(tmp_path / "alone", KEY, frame, SIZE, 0, progress=False)
    assert hashlib.sha256(np.ascontiguousarray(alone.open()).tobytes()).hexdigest() == digest
    # No temporary cache left behind; the lock file stays (removing it would race).
    folder = cache_mod.key_dir(cache_root, KEY)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{SIZE}px.npy", f"{SIZE}px.json", f"{SIZE}px.lock", "verdicts.json"]
    )


def test_a_build_lock_held_by_another_process_is_waited_for(tmp_path):
    lock = tmp_path / "x.lock"
    context = multiprocessing.get_context("fork")
    held, release = context.Event(), context.Event()

    def holder():
        with cache_mod.building(lock):
            held.set()
            release.wait(timeout=TIMEOUT_S)

    process = context.Process(target=holder)
    process.start()
    try:
        assert held.wait(timeout=TIMEOUT_S)
        started = time.monotonic()
        releaser = threading.Timer(0.5, release.set)
        releaser.start()
        with cache_mod.building(lock):
            waited = time.monotonic() - started
        assert waited >= 0.4
    finally:
        release.set()
        process.join(timeout=30)
