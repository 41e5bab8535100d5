"""Learning-rate schedules as Lightning `lr_scheduler` dicts.

Each `conf/scheduler/*.yaml` is a partial of one of these functions and holds the defaults of
its settings (written there alone); the module calls it with its optimizer, the trainer (for
the number of steps and epochs) and the metric to monitor.
"""

from __future__ import annotations

import math

from hydra.utils import get_method
from torch.optim import Optimizer, lr_scheduler

from geoguess.errors import GeoguessError


def plateau(
    optimizer: Optimizer,
    trainer=None,
    monitor: str = "val/haversine_km",
    *,
    factor: float,
    patience: int,
    min_lr: float,
    threshold: float,
) -> dict:
    """Divide the learning rates when the validation error (km) stops improving."""
    scheduler = lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=factor, patience=patience, min_lr=min_lr, threshold=threshold
    )
    return {"scheduler": scheduler, "monitor": monitor, "interval": "epoch", "strict": False}


def onecycle(
    optimizer: Optimizer,
    trainer=None,
    monitor: str | None = None,
    *,
    pct_start: float,
    div_factor: float,
    final_div_factor: float,
) -> dict:
    """One cycle per run: warm up to each group's learning rate, then anneal, every step."""
    total = _total_steps(trainer)
    max_lr = [group["lr"] for group in optimizer.param_groups]
    scheduler = lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=max_lr,
        total_steps=total,
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
    )
    return {"scheduler": scheduler, "interval": "step"}


def cosine(
    optimizer: Optimizer, trainer=None, monitor: str | None = None, *, eta_min: float
) -> dict:
    """Cosine annealing over `trainer.max_epochs`, stepped every epoch."""
    epochs = getattr(trainer, "max_epochs", None)
    if not epochs or epochs < 0:
        raise GeoguessError("scheduler=cosine needs trainer.max_epochs")
    scheduler = lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(epochs), eta_min=eta_min)
    return {"scheduler": scheduler, "interval": "epoch"}


# Schedules laid out over `trainer.max_epochs` (a resumed run cannot stretch them).
onecycle.spans_the_run = True
cosine.spans_the_run = True


def spans_the_run(node) -> bool:
    """Whether the `scheduler` group's choice (a config node, or null) spans the whole run."""
    target = node.get("_target_") if node else None
    return bool(target) and bool(getattr(get_method(target), "spans_the_run", False))


def _total_steps(trainer) -> int:
    steps = getattr(trainer, "estimated_stepping_batches", None)
    if steps is None or not math.isfinite(steps) or steps <= 0:
        raise GeoguessError("scheduler=onecycle needs a finite trainer.max_epochs or max_steps")
    return int(steps)
