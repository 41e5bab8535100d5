"""The results of a run: split sizes in results.json and the summary, the summary in the log."""

from __future__ import annotations

import logging

import pandas as pd

from geoguess import results as results_mod
from geoguess.results import RESULT_KEYS


def _finished(split_sizes):
    frame = pd.DataFrame({"snapped": [False, True]})
    return results_mod.completed(
        val_km=50.0,
        test={"haversine_km": 60.0, "median_km": 40.0, "geoguessr_score": 3000.0},
        frame=frame,
        baseline_km=120.0,
        num_classes=7,
        best_checkpoint=None,
        epochs=3,
        train_seconds=12.0,
        dataset="abc",
        seed=1,
        split_sizes=split_sizes,
    )


def test_results_carry_the_split_sizes(tmp_path):
    results = _finished({"train": 145, "val": 23, "test": 23, "dropped": 9})
    assert tuple(results) == RESULT_KEYS
    assert results["split_sizes"] == {"train": 145, "val": 23, "test": 23}
    assert "locations train / val / test   145 / 23 / 23" in results_mod.summary(tmp_path, results)
    # A failed run has the key, empty.
    assert results_mod.failed(ValueError("x"))["split_sizes"] is None


def test_the_summary_goes_to_the_log_file_once_and_to_stdout(tmp_path, capsys):
    log_path = tmp_path / "train.log"
    handler = logging.FileHandler(log_path)
    console = logging.StreamHandler()  # stands for Hydra's console handler: not written to
    root = logging.getLogger()
    root.addHandler(handler)
    root.addHandler(console)
    try:
        text = results_mod.report(tmp_path, _finished({"train": 8, "val": 1, "test": 1}))
    finally:
        root.removeHandler(handler)
        root.removeHandler(console)
        handler.close()
    captured = capsys.readouterr()
    assert captured.out.count("validation error (best epoch)") == 1
    assert "validation error" not in captured.err
    logged = log_path.read_text()
    assert logged.count("validation error (best epoch)  50.0 km") == 1
    for line in text.splitlines():
        assert line in logged
