"""A callback the resume tests add to a real training run (`+callbacks.record=...`): it appends
each training batch's dataset indices to a JSON-lines file as the batch starts, so that a
killed run's batches are on record too."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class BatchRecorder(Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        line = {
            "epoch": trainer.current_epoch,
            "batch": batch_idx,
            "index": batch["index"].tolist(),
            "order": trainer.datamodule.train_order_kind,
            "n": len(trainer.datamodule.datasets["train"]),
        }
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")


def recorder_override(path: Path) -> str:
    return f"+callbacks.record={{_target_: tests.batch_recorder.BatchRecorder, path: {path}}}"
