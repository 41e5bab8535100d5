"""The loader's read-ahead thread (`num_workers=0`): order, errors, and how it ends."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from geoguess.data import dataset as dataset_mod
from tests.cli import REPO_ROOT, command_env


def test_items_arrive_in_order_and_errors_reach_the_consumer():
    def items():
        yield from range(5)
        raise ValueError("row 5 is broken")

    reader = dataset_mod._ReadAhead(items())
    assert [next(reader) for _ in range(5)] == list(range(5))
    with pytest.raises(ValueError, match="row 5 is broken"):
        next(reader)


def test_dropping_a_reader_stops_its_thread():
    reader = dataset_mod._ReadAhead(iter(range(10**9)))
    next(reader)
    thread = reader._thread
    del reader
    gc.collect()
    thread.join(5)
    assert not thread.is_alive() and thread not in dataset_mod._READERS


def test_readers_still_held_are_stopped_at_exit(monkeypatch):
    # A registry of this test's own: the hook must not stop readers other tests still use.
    monkeypatch.setattr(dataset_mod, "_READERS", {})
    reader = dataset_mod._ReadAhead(iter(range(10**9)))
    next(reader)
    assert list(dataset_mod._READERS) == [reader._thread]
    dataset_mod._stop_readers()
    assert not reader._thread.is_alive() and not dataset_mod._READERS


# A process that ends while its reader is inside torch (the GIL released) must exit with its own
# code. Without the exit hook every run of this script aborted at finalization ("terminate
# called without an active exception", SIGABRT): a training run stopped by Ctrl+C then ended
# with -6 instead of 130.
EXIT_WHILE_READING = """
import sys, torch
torch.set_num_threads(1)
from geoguess.data.dataset import _ReadAhead
def batches():
    a = torch.randn(300, 300)
    while True:
        for _ in range(50):
            a = torch.tanh(a @ a)
        yield a
reader = _ReadAhead(batches())
next(reader)
sys.exit(3)
"""


@pytest.mark.parametrize("attempt", range(3))
def test_a_process_ending_while_its_reader_computes_exits_with_its_own_code(attempt):
    done = subprocess.run(
        [sys.executable, "-c", EXIT_WHILE_READING],
        cwd=REPO_ROOT,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=120,  # the exit hook waits for the item being read, not forever
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert "terminate called" not in done.stderr
