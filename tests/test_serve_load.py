"""The `serve` bench section's instruments: locust against a real server counts every answer
and every failure, and the offline reference is `geoguess.predict`'s own rate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from geoguess.errors import GeoguessError
from geoguess.serve.__main__ import set_cpu_thread_wait
from geoguess.serve.loadtest import drive, offline_rate, write_views
from tests.serve_helpers import RUN_NAME, live_server, models_dir, trained_run
from tests.train_helpers import run_cli


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return models_dir(tmp_path_factory.getbasetemp())


@pytest.mark.slow
def test_locust_counts_every_answer_and_every_failure(models, tmp_path, real_sample):
    views = write_views(tmp_path / "views", real_sample)
    with live_server(models, tmp_path) as (url, _):
        answered = drive(url, RUN_NAME, views, clients=3, requests=12, max_seconds=60)
        refused = drive(url, "no-such-model", views, clients=2, requests=5, max_seconds=60)
    assert answered["requests"] == 12 and answered["errors"] == 0
    assert 0 < answered["p50_ms"] <= answered["p95_ms"] <= answered["p99_ms"]
    assert answered["requests_per_s"] > 0
    assert refused["requests"] == 5 and refused["errors"] == 5  # 404s are failures


@pytest.mark.slow
def test_the_offline_reference_is_what_predict_writes(tmp_path, real_sample):
    run = trained_run(tmp_path.parent)
    checkpoint = next((run / "checkpoints").glob("best-*.ckpt"))
    views = write_views(tmp_path / "views", real_sample)
    rate = offline_rate(
        checkpoint, views, tmp_path, batch_size=4, num_workers=0, locations=6, repeats=1
    )
    assert rate > 0
    # The folder it timed is one geoguess.predict reads whole: six copies, six equal answers.
    out = tmp_path / "predictions.csv"
    done = run_cli(
        "predict",
        [f"checkpoint={checkpoint}", f"data.root={tmp_path / 'offline-6'}", f"output={out}"],
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(out)
    assert len(frame) == 6 and frame["latitude"].nunique() == 1


def test_cpu_thread_wait_is_set_before_torch_loads_and_a_bad_value_is_refused(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    set_cpu_thread_wait(None)
    assert "OMP_WAIT_POLICY" not in os.environ
    set_cpu_thread_wait("passive")
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    with pytest.raises(GeoguessError, match="cpu_thread_wait='spin': one of passive, active, null"):
        set_cpu_thread_wait("spin")
    # The serve command's module loads without torch, so the policy it sets is in place when
    # torch (and OpenMP) first load.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, geoguess.serve.__main__; print('torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.stdout.strip() == "False", probe.stderr


@pytest.mark.slow
def test_the_command_refuses_an_unknown_cpu_thread_wait_in_one_line(models, tmp_path):
    done = run_cli(
        "serve", [f"serve.models_dir={models}", "serve.cpu_thread_wait=spin"], cwd=tmp_path
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: serve.cpu_thread_wait='spin': one of passive, active, null"
    )
    assert list(tmp_path.iterdir()) == []
