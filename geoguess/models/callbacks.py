"""Small callbacks of the training run."""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.callbacks import Callback


class TrainTimer(Callback):
    """Wall-clock seconds spent in `fit`, summed over resumed sessions (kept in checkpoints)."""

    def __init__(self) -> None:
        self.previous = 0.0
        self._start: float | None = None

    @property
    def seconds(self) -> float:
        running = time.monotonic() - self._start if self._start is not None else 0.0
        return self.previous + running

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.previous, self._start = self.seconds, None

    def state_dict(self) -> dict:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.previous = float(state_dict.get("seconds", 0.0))
