"""A callback the resume tests add to a real training run (`+callbacks.stop=...`): at a given
epoch and batch it writes a marker file and waits there to be killed by the test."""

from __future__ import annotations

import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class WaitToBeKilled(Callback):
    def __init__(self, epoch: int, batch: int, marker: str, timeout: float = 120.0) -> None:
        self.epoch, self.batch = int(epoch), int(batch)
        self.marker, self.timeout = Path(marker), float(timeout)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            self.marker.write_text("waiting\n")
            # Short sleeps: Python runs a signal's handler between bytecodes, so a signal that
            # lands after the marker is written but before one long sleep began would wait for
            # that whole sleep.
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                time.sleep(0.05)


class RaiseKeyboardInterrupt(Callback):
    """Ctrl+C at a given epoch and batch, inside the process."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = int(epoch), int(batch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise KeyboardInterrupt


def raise_keyboard_interrupt_at(epoch: int, batch: int) -> str:
    """The override that adds `RaiseKeyboardInterrupt` to a run's callbacks."""
    return (
        "+callbacks.interrupt={_target_: tests.stop_callback.RaiseKeyboardInterrupt, "
        f"epoch: {epoch}, batch: {batch}}}"
    )
