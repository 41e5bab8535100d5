"""When the backbone trains: `never` frozen, frozen until an epoch, or unfrozen stage by stage.

The backbone's parameters are all in the optimizer from the start (in their own groups, at
`unfreeze.backbone_lr`); freezing only switches `requires_grad` off, so unfreezing needs no new
param group, schedulers see the same groups throughout and resuming from a checkpoint restores
the same optimizer state. A frozen stage also keeps its BatchNorm layers in eval mode, so that
their running statistics (ImageNet's, for a pretrained backbone) stay as they are.

The schedule is a function of the epoch only and is applied again at every epoch start, so a
run resumed from `last` freezes exactly what the interrupted run had frozen.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from geoguess.errors import GeoguessError
from geoguess.models.backbones import stage_parameters


class BackboneUnfreeze(BaseFinetuning):
    """Base of the schedules: `trainable_stages(epoch, n)` says how many of the last stages train.

    `backbone_lr` is the backbone's learning rate (null: `optimizer.lr`, as the head's). The
    settings' defaults are written in conf/unfreeze/*.yaml alone.
    """

    def __init__(self, *, backbone_lr: float | None) -> None:
        super().__init__()
        if backbone_lr is not None and (
            not isinstance(backbone_lr, float | int) or not backbone_lr > 0
        ):
            raise GeoguessError(f"unfreeze.backbone_lr={backbone_lr!r} must be positive, or null")
        self.backbone_lr = float(backbone_lr) if backbone_lr is not None else None

    def trainable_stages(self, epoch: int, num_stages: int) -> int:
        raise NotImplementedError

    def frozen_from_start(self) -> bool:
        """Whether no stage trains in the first epoch (its features can then be cached)."""
        return self.trainable_stages(0, 1) == 0

    def same_every_epoch(self, max_epochs: int | None) -> bool:
        """Whether the same stages train in every epoch of a run of `max_epochs` (counted for
        a backbone of many stages: for fewer the answer can only be too cautious)."""
        epochs = max_epochs if max_epochs is not None and max_epochs > 0 else MANY
        return len({self.trainable_stages(epoch, MANY) for epoch in range(epochs)}) == 1

    # BaseFinetuning freezes in `setup`, before DDP wraps the model; DDP would then never
    # synchronise the gradients of parameters unfrozen later. Freezing is done at every epoch
    # start instead (`finetune_function`), on the wrapped model — and here too when nothing is
    # unfrozen later: DDP then leaves the frozen parameters out altogether.
    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        trainer = pl_module._trainer
        if self.same_every_epoch(trainer.max_epochs if trainer is not None else None):
            apply_schedule(pl_module.backbone, self.trainable_stages(0, num_stages(pl_module)))

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer) -> None:
        apply_schedule(pl_module.backbone, self.trainable_stages(epoch, num_stages(pl_module)))


# Epochs (or stages) beyond any run's (or backbone's) count.
MANY = 1000


class Never(BackboneUnfreeze):
    """Everything trains from the first step (for backbones trained from scratch)."""

    def trainable_stages(self, epoch: int, num_stages: int) -> int:
        return num_stages


class Frozen(BackboneUnfreeze):
    """The backbone never trains: a linear probe of its (pretrained) features."""

    def trainable_stages(self, epoch: int, num_stages: int) -> int:
        return 0


class AtEpoch(BackboneUnfreeze):
    """The backbone is frozen (eval mode) until `epoch`, then trains entirely."""

    def __init__(self, *, epoch: int, backbone_lr: float | None) -> None:
        super().__init__(backbone_lr=backbone_lr)
        self.epoch = _count("unfreeze.epoch", epoch, minimum=0)

    def trainable_stages(self, epoch: int, num_stages: int) -> int:
        return num_stages if epoch >= self.epoch else 0


class Gradual(BackboneUnfreeze):
    """One more stage, from the last backwards, every `every` epochs (the first after `every`)."""

    def __init__(self, *, every: int, backbone_lr: float | None) -> None:
        super().__init__(backbone_lr=backbone_lr)
        self.every = _count("unfreeze.every", every, minimum=1)

    def trainable_stages(self, epoch: int, num_stages: int) -> int:
        return min(num_stages, epoch // self.every)


def _count(key: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GeoguessError(f"{key}={value!r} must be an integer of at least {minimum}")
    return value


def num_stages(pl_module: L.LightningModule) -> int:
    return len(_stages(pl_module.backbone))


def _stages(backbone: nn.Module) -> list[list[str]]:
    stages = getattr(backbone, "_geoguess_stages", None)
    if stages is None:
        stages = stage_parameters(backbone)
        backbone._geoguess_stages = stages  # plain attribute: not a parameter, not saved
    return stages


def apply_schedule(backbone: nn.Module, trainable: int) -> None:
    """Let the last `trainable` stages train; freeze the others and put their BatchNorms in eval."""
    stages = _stages(backbone)
    first_trainable = len(stages) - trainable
    params = dict(backbone.named_parameters())
    stage_of = {}
    for index, names in enumerate(stages):
        for name in names:
            params[name].requires_grad_(index >= first_trainable)
            stage_of[name] = index
    for name, module in backbone.named_modules():
        if isinstance(module, _BatchNorm):
            prefix = f"{name}." if name else ""
            index = stage_of.get(f"{prefix}weight", 0)
            module.train(index >= first_trainable and backbone.training)


__all__ = ["AtEpoch", "BackboneUnfreeze", "Frozen", "Gradual", "Never", "apply_schedule"]
