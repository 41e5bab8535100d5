"""The training run's own callbacks: the plateau step a resumed run misses, per-epoch seeding,
the per-epoch log line, and a progress bar only where someone watches it."""

from __future__ import annotations

import hashlib
import logging
import random
import sys
import time

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar

from geoguess.lightning_version import check_lightning
from geoguess.utils.cli import to_log_files

check_lightning()

log = logging.getLogger("geoguess.train")


class PlateauStepOnResume(Callback):
    """The plateau schedulers' step that a run resumed from an epoch-end checkpoint misses.

    Lightning steps an epoch-interval `ReduceLROnPlateau` after every `on_train_epoch_end`
    hook, so after `ModelCheckpoint` saved that epoch (`checkpoints/last.ckpt` included), and a
    run resumed from that checkpoint does not take the step (the monitored value is not in it).
    Its plateau scheduler would then judge the next epochs against a stale best. This keeps the
    values those steps need in the checkpoint, and takes the steps when a run resumes.
    """

    def __init__(self) -> None:
        # Scheduler index -> the monitored value of the step Lightning takes after this
        # epoch's end hooks: saved with an epoch-end checkpoint, done once that step is taken.
        self.pending: dict[int, float] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.pending = {}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not a monitoring callback: Lightning runs this before ModelCheckpoint saves.
        self.pending = {}
        for index, config in enumerate(trainer.lr_scheduler_configs):
            due = (trainer.current_epoch + 1) % config.frequency == 0
            if config.reduce_on_plateau and config.interval == "epoch" and due:
                value = trainer.callback_metrics.get(config.monitor)
                if value is not None:
                    self.pending[index] = float(value)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        configs = trainer.lr_scheduler_configs
        for index, value in self.pending.items():
            pl_module.lr_scheduler_step(configs[index].scheduler, value)
        self.pending = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.pending = {}

    def state_dict(self) -> dict:
        return {"pending": dict(self.pending)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.pending = {int(k): float(v) for k, v in state_dict.get("pending", {}).items()}


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
            to_log_files(line, log.name)
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


def terminal_progress_bar(refresh_rate: int):
    """A progress bar when the output is a terminal; None (no bar) when it is piped.

    Redrawn every `refresh_rate` steps: each redraw reads the logged loss on the host, which
    waits for the GPU.
    """
    if not sys.stdout.isatty():
        return None
    return RichProgressBar(refresh_rate=refresh_rate)
