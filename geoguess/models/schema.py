"""Typed schemas of the training config groups, so bad values fail at composition.

Each `conf/<group>/<option>.yaml` starts from `/schema/<group>/<option>`: Hydra then refuses,
before anything runs, a value of the wrong type (`optimizer.lr=fast`) or outside a choice
(`model.fusion=sum`, `head.points=middle`). Keys can still be added with `+key=value` (for
example `+optimizer.betas=[0.9,0.99]`, passed on to the optimizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional  # noqa: UP035 - OmegaConf needs typing.Optional

from hydra.core.config_store import ConfigStore


class Fusion(Enum):
    concat = "concat"
    mean = "mean"
    attention = "attention"


class Points(Enum):
    clipped = "clipped"
    centroid = "centroid"
    train_mean = "train_mean"


@dataclass
class BackboneSchema:
    _target_: str = "geoguess.models.backbones.create_backbone"
    name: str = "resnet10t"
    pretrained: bool = False
    pretrained_file: Optional[str] = None  # noqa: UP045


@dataclass
class ClassificationSchema:
    _target_: str = "geoguess.models.heads.ClassificationHead"
    _partial_: bool = True
    points: Points = Points.clipped
    smoothing_km: Optional[float] = None  # noqa: UP045


@dataclass
class RegressionSchema:
    _target_: str = "geoguess.models.heads.RegressionHead"
    _partial_: bool = True
    # Classification-only keys, accepted and unused, so that an experiment or a sweep over
    # `head=classification,regression` may set them for both.
    points: Optional[Points] = None  # noqa: UP045
    smoothing_km: Optional[float] = None  # noqa: UP045


@dataclass
class ModelSchema:
    _target_: str = "geoguess.models.GeoguessModule"
    _partial_: bool = True
    fusion: Fusion = Fusion.concat
    dropout: float = 0.0
    channels_last: Optional[bool] = None  # noqa: UP045


@dataclass
class OptimizerSchema:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 1e-3
    lr_finetune: float = 1e-4
    weight_decay: float = 0.0


@dataclass
class PlateauSchema:
    _target_: str = "geoguess.models.schedulers.plateau"
    _partial_: bool = True
    factor: float = 0.5
    patience: int = 2
    min_lr: float = 0.0
    threshold: float = 1e-3


@dataclass
class OneCycleSchema:
    _target_: str = "geoguess.models.schedulers.onecycle"
    _partial_: bool = True
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4


@dataclass
class CosineSchema:
    _target_: str = "geoguess.models.schedulers.cosine"
    _partial_: bool = True
    eta_min: float = 0.0


@dataclass
class NoSchedulerSchema:
    pass


@dataclass
class NeverSchema:
    _target_: str = "geoguess.models.unfreeze.Never"


@dataclass
class AtEpochSchema:
    _target_: str = "geoguess.models.unfreeze.AtEpoch"
    epoch: int = 1


@dataclass
class GradualSchema:
    _target_: str = "geoguess.models.unfreeze.Gradual"
    every: int = 1


SCHEMAS: dict[str, dict[str, Any]] = {
    "backbone": {"backbone": BackboneSchema},
    "head": {"classification": ClassificationSchema, "regression": RegressionSchema},
    "model": {"default": ModelSchema},
    "optimizer": {"optimizer": OptimizerSchema},
    "scheduler": {
        "plateau": PlateauSchema,
        "onecycle": OneCycleSchema,
        "cosine": CosineSchema,
        "none": NoSchedulerSchema,
    },
    "unfreeze": {"never": NeverSchema, "at_epoch": AtEpochSchema, "gradual": GradualSchema},
}


def register() -> None:
    """Store the schemas as `/schema/<group>/<name>` (idempotent)."""
    store = ConfigStore.instance()
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=node)


register()
