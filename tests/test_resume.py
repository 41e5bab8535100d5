"""Resume where it is hard: a real training process with dropout and augmentation, killed in its
third epoch and resumed with `ckpt_path=last`, ends bit for bit where the run left alone ends;
each epoch trains in its sampler's order; the epoch-stepped schedulers take every step."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from geoguess.data.sampler import LocationShuffle
from tests.batch_recorder import recorder_override
from tests.cli import command_env, run_module
from tests.train_helpers import dataset, folder_data, run_training

EPOCHS = 5
BATCH = 8
SEED = 42  # conf/train.yaml's, which the runs below keep

HARD = [
    "backbone=tiny",
    "logger=csv",
    "image.size=32",
    f"data.batch_size={BATCH}",
    "data.num_workers=0",
    "data.split_by=hash",
    f"trainer.max_epochs={EPOCHS}",
    "trainer.num_sanity_val_steps=0",
    "model.dropout=0.25",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return dataset(tmp_path_factory.getbasetemp(), num_locations=80, image_size=32)


def last_checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


def epoch_losses(run: Path) -> dict[int, float]:
    """`train/loss_epoch` per epoch from every CSV logger session (a later session's win)."""
    losses = {}
    for metrics in sorted((run / "csv").glob("version_*/metrics.csv")):
        frame = pd.read_csv(metrics)
        rows = frame.dropna(subset=["train/loss_epoch"])
        losses.update(zip(rows["epoch"].astype(int), rows["train/loss_epoch"], strict=True))
    return losses


def learning_rates(run: Path) -> list[float]:
    """The learning rate of each epoch as `LearningRateMonitor` logged it."""
    frame = pd.read_csv(next((run / "csv").glob("version_*/metrics.csv")))
    column = next(c for c in frame.columns if c.startswith("lr-"))
    return frame[column].dropna().tolist()


def sampler_batches(n: int, epoch: int) -> list[list[int]]:
    """Epoch `epoch`'s batches as the training sampler defines them, computed here."""
    order = LocationShuffle(n, seed=SEED).order(epoch).tolist()
    return [order[start : start + BATCH] for start in range(0, n, BATCH)]


def recorded_batches(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_sampler_order(records: list[dict]) -> None:
    """Every recorded batch is its epoch's batch of the sampler's order, at its place."""
    assert records and {r["order"] for r in records} == {"location"}
    n = records[0]["n"]
    for record in records:
        expected = sampler_batches(n, record["epoch"])[record["batch"]]
        assert record["index"] == expected, f"epoch {record['epoch']} batch {record['batch']}"


def complete_epochs(records: list[dict], n: int) -> list[int]:
    batches = -(-n // BATCH)
    epochs = sorted({r["epoch"] for r in records})
    return [
        e
        for e in epochs
        if sorted(r["batch"] for r in records if r["epoch"] == e) == list(range(batches))
    ]


def train_cli(args: list[str], out: Path, timeout: float = 300) -> None:
    result = run_module(
        "geoguess.train", *args, f"hydra.run.dir={out}", cwd=out.parent, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]


def kill_in_epoch(args: list[str], out: Path, epoch: int, batch: int) -> None:
    """`python -m geoguess.train ARGS` killed (SIGKILL) as epoch `epoch`'s batch `batch` starts."""
    marker = out.parent / "marker"
    waiter = (
        f"+callbacks.stop={{_target_: tests.stop_callback.WaitToBeKilled, epoch: {epoch}, "
        f"batch: {batch}, marker: {marker}}}"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "geoguess.train", *args, waiter, f"hydra.run.dir={out}"],
        cwd=out.parent,
        env=command_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_a_run_killed_in_its_third_epoch_resumes_bit_for_bit(data_root, tmp_path):
    """The issue's hard case, small: dropout on, augmentation on, the smoke run's one-cycle
    schedule (stepped every batch); killed after epoch 2's first batches (epoch index 2)."""
    args = [*HARD, *folder_data(data_root), "scheduler=onecycle"]
    (tmp_path / "whole").mkdir()
    (tmp_path / "killed").mkdir()
    whole, killed = tmp_path / "whole" / "run", tmp_path / "killed" / "run"
    whole_log, killed_log = tmp_path / "whole.jsonl", tmp_path / "killed.jsonl"

    train_cli([*args, recorder_override(whole_log)], whole)
    kill_in_epoch([*args, recorder_override(killed_log)], killed, epoch=2, batch=3)
    assert not (killed / "results.json").exists()
    assert last_checkpoint(killed)["epoch"] == 1  # the end of the second epoch
    before_resume = len(recorded_batches(killed_log))
    train_cli([*args, recorder_override(killed_log), "ckpt_path=last"], killed)

    reference, resumed = last_checkpoint(whole), last_checkpoint(killed)
    assert reference["epoch"] == resumed["epoch"] == EPOCHS - 1
    assert_same_weights(reference["state_dict"], resumed["state_dict"])
    assert reference["lr_schedulers"] == resumed["lr_schedulers"]
    # Every epoch's training loss, bit for bit; the first two from the killed session's log.
    losses = epoch_losses(whole)
    assert sorted(losses) == list(range(EPOCHS))
    assert epoch_losses(killed) == losses

    whole_records, killed_records = recorded_batches(whole_log), recorded_batches(killed_log)
    assert_sampler_order(whole_records)
    assert_sampler_order(killed_records)
    n = whole_records[0]["n"]
    assert complete_epochs(whole_records, n) == list(range(EPOCHS))
    # The killed session stopped as epoch 2's batch 3 began; the resumed one ran epoch 2 whole.
    first, second = killed_records[:before_resume], killed_records[before_resume:]
    assert complete_epochs(first, n) == [0, 1]
    assert [(r["epoch"], r["batch"]) for r in first][-4:] == [(2, 0), (2, 1), (2, 2), (2, 3)]
    assert complete_epochs(second, n) == [2, 3, 4] == sorted({r["epoch"] for r in second})
    # The orders really differ from epoch to epoch (else the check above would be weak).
    assert len({tuple(np.concatenate(sampler_batches(n, e))) for e in range(EPOCHS)}) == EPOCHS


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["plateau", "cosine"])
def test_a_resumed_run_takes_every_epoch_scheduler_step(scheduler, data_root, tmp_path):
    """Lightning saves the epoch-end checkpoint before it steps a plateau scheduler and does
    not take that step on resume; the run's `PlateauStepOnResume` does. The cosine schedule is
    stepped before the save (nothing to catch up). Interrupted in process in epoch 2."""
    from geoguess.errors import GeoguessError
    from tests.stop_callback import raise_keyboard_interrupt_at

    args = [
        *HARD,
        *folder_data(data_root),
        f"scheduler={scheduler}",
        "trainer.max_epochs=4",
        *(["scheduler.patience=0"] if scheduler == "plateau" else []),
    ]
    run_training(args, tmp_path / "whole")
    with pytest.raises(GeoguessError, match="interrupted; resume with"):
        run_training([*args, raise_keyboard_interrupt_at(epoch=2, batch=1)], tmp_path / "cut")
    run_training([*args, "ckpt_path=last"], tmp_path / "cut")

    reference, resumed = last_checkpoint(tmp_path / "whole"), last_checkpoint(tmp_path / "cut")
    assert reference["lr_schedulers"] == resumed["lr_schedulers"]
    assert_same_weights(reference["state_dict"], resumed["state_dict"])
    assert epoch_losses(tmp_path / "cut") == epoch_losses(tmp_path / "whole")
    # The schedule did move (on plateau: at least one cut), so that the comparison means something.
    assert len(set(learning_rates(tmp_path / "whole"))) > 1


@pytest.mark.slow
def test_a_run_stopped_in_its_first_epoch_starts_again_in_its_folder(data_root, tmp_path):
    """Before the first epoch's end there is no last.ckpt: `ckpt_path=last` runs it anew there
    (and, every epoch's randomness being the seed's, to the same weights)."""
    from geoguess.errors import GeoguessError
    from tests.stop_callback import raise_keyboard_interrupt_at

    args = [*HARD, *folder_data(data_root), "scheduler=cosine", "trainer.max_epochs=2"]
    run_training(args, tmp_path / "whole")
    with pytest.raises(GeoguessError, match="interrupted; resume with"):
        run_training([*args, raise_keyboard_interrupt_at(epoch=0, batch=2)], tmp_path / "cut")
    assert not (tmp_path / "cut" / "checkpoints" / "last.ckpt").exists()
    results = run_training([*args, "ckpt_path=last"], tmp_path / "cut")
    assert results["status"] == "ok" and (tmp_path / "cut" / ".hydra" / "resume-1").is_dir()
    assert_same_weights(
        last_checkpoint(tmp_path / "whole")["state_dict"],
        last_checkpoint(tmp_path / "cut")["state_dict"],
    )
