"""The training run's own callbacks: `last.ckpt` at consistent points, per-epoch seeding, the
per-epoch log line, and a progress bar only where someone watches it."""

from __future__ import annotations

import hashlib
import logging
import random
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger("geoguess.train")

LAST = "last.ckpt"


class LastCheckpoint(Callback):
    """`checkpoints/last.ckpt` at the start of every epoch and at the end of training.

    At an epoch's start the previous epoch is complete, its learning-rate schedulers stepped
    included. Lightning's own `save_last` writes at the epoch's end, before an epoch-stepped
    scheduler moves, and a run resumed from there skips that step: its learning rates, and so
    its results, then differ from the uninterrupted run's.
    """

    def __init__(self, dirpath: str | Path, filename: str = LAST) -> None:
        self.path = Path(dirpath) / filename
        self._at_epoch_start = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._at_epoch_start = True
        try:
            trainer.save_checkpoint(self.path, weights_only=False)
        finally:
            self._at_epoch_start = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self._at_epoch_start:
            epoch_start_progress(checkpoint["loops"]["fit_loop"])


def epoch_start_progress(fit_loop: dict) -> None:
    """The fit loop's saved state as it is between two epochs: the previous one complete, the
    next one not begun.

    At `on_train_epoch_start` the new epoch already counts as "ready" and the epoch loop still
    holds the previous epoch's batch counters (reset a moment later). Saved as they are, a
    resumed run takes the new epoch for one interrupted at its start: it skips its batches, or
    (Lightning's rule for restarted epochs) the plateau scheduler's step at its end.
    """
    for counters in fit_loop["epoch_progress"].values():
        counters["ready"] = counters["started"]
    for key, progress in fit_loop.items():
        if key.startswith("epoch_loop.") and isinstance(progress, dict):
            _zero_counters(progress, "current")
        if key == "epoch_loop.val_loop.batch_progress":
            _zero_counters(progress, "total")


def _zero_counters(progress: dict, which: str) -> None:
    for key, value in progress.items():
        if key == which and isinstance(value, dict):
            progress[key] = dict.fromkeys(value, 0)
        elif key == "is_last_batch":
            progress[key] = False
        elif isinstance(value, dict):
            _zero_counters(value, which)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for one epoch of one run, the same on every machine."""
    digest = hashlib.sha256(f"geoguess-epoch:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class EpochSeed(Callback):
    """Seeds Python, NumPy and torch (every device) from (seed, epoch) at each epoch's start.

    Epoch k's randomness (data order, dropout, augmentation) is then a function of the run's
    seed and k alone, not of what ran before it (sanity checks, a previous session), so a run
    resumed at an epoch boundary continues exactly as the uninterrupted one. The seed is kept in
    checkpoints, with the generators' states.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed = epoch_seed(self.seed, trainer.current_epoch)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)  # every CUDA device too

    def state_dict(self) -> dict:
        version, python_state, gauss = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "seed": self.seed,
            "python": [version, list(python_state), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        # The run's seed is the checkpoint's: a resumed run continues its own sequence.
        self.seed = int(state_dict["seed"])
        version, python_state, gauss = state_dict["python"]
        random.setstate((version, tuple(python_state), gauss))
        name, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            # A run resumed with fewer visible devices restores those it has.
            for device, state in enumerate(state_dict["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(state, device)


class EpochLog(Callback):
    """One line per epoch (loss, validation km, best so far, learning rate, seconds).

    Always written to the run's log file; on the console only when no progress bar shows
    the epochs (piped output, cluster logs).
    """

    def __init__(self) -> None:
        self._start = time.monotonic()
        self.best: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        val = float(metrics["val/haversine_km"]) if "val/haversine_km" in metrics else None
        if val is not None and (self.best is None or val < self.best):
            self.best = val
        if not trainer.is_global_zero:
            return
        line = self.line(trainer, val, time.monotonic() - self._start)
        if trainer.progress_bar_callback is not None:
            _to_log_files(line)
        else:
            log.info(line)

    def line(self, trainer: L.Trainer, val: float | None, seconds: float) -> str:
        metrics = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        if "train/loss_epoch" in metrics:
            parts.append(f"train loss {float(metrics['train/loss_epoch']):.4f}")
        if val is not None:
            parts.append(f"val {val:.1f} km (best {self.best:.1f})")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.2e}")
        parts.append(f"{seconds:.1f} s")
        return "  ".join(parts)

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best")


def _to_log_files(line: str) -> None:
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def terminal_progress_bar(refresh_rate: int = 10):
    """A progress bar when the output is a terminal; None (no bar) when it is piped.

    Redrawn every `refresh_rate` steps: each redraw reads the logged loss on the host, which
    waits for the GPU.
    """
    if not sys.stdout.isatty():
        return None
    from lightning.pytorch.callbacks import RichProgressBar

    return RichProgressBar(refresh_rate=refresh_rate)
