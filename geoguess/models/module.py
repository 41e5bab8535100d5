"""`GeoguessModule`: backbone over the four views, fusion, head; metrics in km."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import nn

from geoguess import metrics
from geoguess.errors import GeoguessError
from geoguess.models.fusion import create_fusion

CHECKPOINT_KEY = "geoguess"
MONITOR = "val/haversine_km"


class NonFiniteLossError(GeoguessError):
    """The loss became NaN or infinite: training cannot continue meaningfully."""


class GeoguessModule(L.LightningModule):
    """Four views -> one shared backbone -> fused features -> head.

    Images arrive as `uint8 [B, 4, 3, H, W]` and are normalised here, on the module's device,
    with the training split's statistics. `fitted` (a `FittedData`) and `config` (the resolved
    run config, plain containers) are stored in every checkpoint so that prediction needs
    nothing else.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: Callable[..., nn.Module],
        fitted: Any,
        fusion: str = "concat",
        dropout: float = 0.0,
        channels_last: bool | None = None,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        backbone_lr: float | None = None,
        config: dict | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.fusion = create_fusion(getattr(fusion, "name", fusion), backbone.num_features)
        self.dropout = nn.Dropout(float(dropout)) if dropout else nn.Identity()
        self.head = head(self.fusion.out_features, grid=fitted.grid, targets=fitted.targets)
        self.fitted = fitted
        self.config = config or {}
        self.channels_last = channels_last
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.backbone_lr = backbone_lr
        self.register_buffer(
            "image_mean", torch.tensor(fitted.image_mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "image_std", torch.tensor(fitted.image_std).view(1, 3, 1, 1), persistent=False
        )
        self._outputs: dict[str, list[dict]] = {"val": [], "test": []}
        self.test_predictions: pd.DataFrame | None = None
        self.test_metrics: dict[str, float] = {}

    # -- forward ------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`uint8 [B, 4, 3, H, W]` -> head output (logits or normalised x, y)."""
        b, v = images.shape[:2]
        x = images.flatten(0, 1)  # the four views go through the backbone as one batch
        x = (x.float() / 255.0 - self.image_mean) / self.image_std
        if self._use_channels_last():
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.backbone(x).reshape(b, v, -1)
        return self.head(self.dropout(self.fusion(features)))

    def _use_channels_last(self) -> bool:
        if self.channels_last is None:
            return self.device.type == "cuda"
        return bool(self.channels_last)

    def on_fit_start(self) -> None:
        if self._use_channels_last():
            self.backbone.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def predict_latlon(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return self.head.to_latlon(self(images))

    # -- steps --------------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if len(batch["uuid"]) == 0:
            return None  # every location of the batch was unreadable
        loss = self.head.loss(self(batch["images"]), batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss became {loss.item()} at epoch {self.current_epoch}, "
                f"step {self.global_step}; lower optimizer.lr (now "
                f"{self._base_lr()}), use gradient clipping (trainer.gradient_clip_val=1.0) "
                "or precision 32-true, and check the data"
            )
        n = len(batch["uuid"])
        # Two names, because Lightning would suffix one name logged both ways (_step, _epoch).
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _eval_step(self, stage: str, batch: dict) -> None:
        if len(batch["uuid"]) == 0:
            return
        output = self(batch["images"])
        loss = self.head.loss(output, batch)
        self.log(
            f"{stage}/loss", loss, on_epoch=True, batch_size=len(batch["uuid"]), sync_dist=True
        )
        self._outputs[stage].append(
            {
                "xy": self.head.to_projected(output).detach(),
                "latlon": batch["latlon"].to(torch.float64),
                "uuid": list(batch["uuid"]),
            }
        )

    # -- epoch ends: metrics over every location, in km --------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._outputs["val"] = []

    def on_test_epoch_start(self) -> None:
        self._outputs["test"] = []

    def on_validation_epoch_end(self) -> None:
        frame = self._gather_frame("val")
        if frame is None:
            return
        stats = metrics.error_stats(frame["error_km"].to_numpy())
        # Every rank holds the same gathered values: syncing them changes nothing but keeps
        # the ranks' checkpoint decisions in step.
        self.log(MONITOR, stats["haversine_km"], prog_bar=True, sync_dist=True)
        self.log("val/median_km", stats["median_km"], sync_dist=True)

    def on_test_epoch_end(self) -> None:
        frame = self._gather_frame("test")
        if frame is None:
            return
        stats = metrics.error_stats(frame["error_km"].to_numpy())
        stats["geoguessr_score"] = metrics.geoguessr_score(
            frame["error_km"].to_numpy(), self._diagonal_km()
        )
        for name, value in stats.items():
            self.log(f"test/{name}", value, sync_dist=True)
        self.test_metrics = stats
        self.test_predictions = frame

    def _diagonal_km(self) -> float:
        from geoguess.geo import Country

        country = self.config.get("country") or {}
        country = {k: v for k, v in country.items() if k != "_target_"}
        return Country(**country).diagonal_km

    def _gather_frame(self, stage: str) -> pd.DataFrame | None:
        """Every location of the epoch (all ranks): predictions, truth and error in km."""
        outputs, self._outputs[stage] = self._outputs[stage], []
        if outputs:
            xy = torch.cat([o["xy"] for o in outputs]).cpu().numpy()
            latlon = torch.cat([o["latlon"] for o in outputs]).cpu().numpy()
            uuids = [u for o in outputs for u in o["uuid"]]
        else:
            xy, latlon, uuids = np.zeros((0, 2)), np.zeros((0, 2)), []
        xy, latlon, uuids = _all_ranks(self.trainer, (xy, latlon, uuids))
        if not uuids:
            return None
        lat, lon = self.head.targets.unproject(xy)
        return metrics.prediction_frame(uuids, lat, lon, latlon[:, 0], latlon[:, 1])

    # -- optimisation -------------------------------------------------------------------------

    def _base_lr(self) -> float | None:
        factory = self.optimizer_factory
        return factory.keywords.get("lr") if isinstance(factory, partial) else None

    def param_groups(self) -> list[dict]:
        """Head and fusion at `optimizer.lr`; the backbone in its own group at `backbone_lr`.

        Every parameter is registered from the start, frozen ones included (a parameter
        without gradient is skipped by the optimizer), so that unfreezing needs no new group
        and schedulers and resumed optimizer states always see the same groups.
        """
        backbone = [p for p in self.backbone.parameters()]
        ids = {id(p) for p in backbone}
        rest = [p for p in self.parameters() if id(p) not in ids]
        group = {"params": backbone, "name": "backbone"}
        if self.backbone_lr is not None:
            group["lr"] = float(self.backbone_lr)
        return [{"params": rest, "name": "head"}, group]

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise GeoguessError("no optimizer configured")
        optimizer = self.optimizer_factory(self.param_groups())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, trainer=self.trainer, monitor=MONITOR)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # -- checkpoints --------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "version": 1,
            "config": self.config,
            "fitted": self.fitted.to_dict(),
            "num_classes": self.head.num_classes,
        }


def _all_ranks(trainer, values: tuple) -> tuple:
    """The per-rank arrays and lists joined over every rank (unchanged on one process)."""
    if trainer is None or trainer.world_size <= 1:
        return values
    import torch.distributed as dist

    gathered = [None] * trainer.world_size
    dist.all_gather_object(gathered, values)
    xy = np.concatenate([g[0] for g in gathered])
    latlon = np.concatenate([g[1] for g in gathered])
    uuids = [u for g in gathered for u in g[2]]
    # DistributedSampler pads ranks with repeated locations: count each location once.
    _, first = np.unique(np.asarray(uuids, dtype=object).astype(str), return_index=True)
    first = np.sort(first)
    return xy[first], latlon[first], [uuids[i] for i in first]


__all__ = ["CHECKPOINT_KEY", "MONITOR", "GeoguessModule", "NonFiniteLossError"]


def build_module(cfg, fitted: Any, inference: bool = False) -> GeoguessModule:
    """The module of a run config (a DictConfig or the plain dict kept in a checkpoint).

    For `inference`, the backbone is built without pretrained weights (the checkpoint's
    state_dict replaces them) and without optimizer or scheduler.
    """
    from hydra.utils import get_class, instantiate
    from omegaconf import DictConfig, OmegaConf

    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    plain = plain_config(cfg)
    backbone_overrides = {"pretrained": False, "pretrained_file": None} if inference else {}
    backbone = instantiate(cfg.backbone, **backbone_overrides)
    head = instantiate(cfg.head)
    optimizer = scheduler = backbone_lr = None
    if not inference:
        options = dict(plain["optimizer"])
        lr_finetune = options.pop("lr_finetune", None)
        optimizer = instantiate(options)
        scheduler = instantiate(cfg.scheduler) if cfg.scheduler.get("_target_") else None
        if get_class(cfg.unfreeze._target_).starts_frozen:
            backbone_lr = lr_finetune
    factory = instantiate(cfg.model)
    return factory(
        backbone=backbone,
        head=head,
        fitted=fitted,
        optimizer=optimizer,
        scheduler=scheduler,
        backbone_lr=backbone_lr,
        config=plain,
    )


def plain_config(cfg) -> dict:
    """The resolved config as plain containers (enums as strings), without Hydra's own node."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return {k: v for k, v in cfg.items() if k != "hydra"}
