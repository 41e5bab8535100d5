"""`GeoguessModule`: backbone over the four views, fusion, head; metrics in km.

A checkpoint holds, besides the weights, the module's `spec` (backbone name, fusion, head kind
and settings, input statistics: plain values) and the `fitted` data. `build_from_spec` rebuilds
the module from those through the suite's own registries (timm's model names, `FUSIONS`,
`HEADS`) and nothing else, so loading someone's checkpoint never runs code of their choosing.
"""

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
from geoguess.models.backbones import POOLS, feature_size, global_pool
from geoguess.models.feature_cache import BATCH_LOCATIONS
from geoguess.models.fusion import FUSIONS, Neck, create_fusion
from geoguess.models.heads import build_head, no_autocast
from geoguess.models.refinement import QUANTILES, REFINE, TTA, Retrieval, mirror_views

CHECKPOINT_KEY = "geoguess"
CHECKPOINT_VERSION = 2
MONITOR = "val/haversine_km"
NORMALIZE = ("auto", "pretrained", "dataset")
# Precision of the backbone's passes while none of it trains (model.frozen_precision).
FROZEN_PRECISIONS = ("32", "bf16")


class NonFiniteLossError(GeoguessError):
    """The loss became NaN or infinite: training cannot continue meaningfully."""


class GeoguessModule(L.LightningModule):
    """Four views -> one shared backbone -> fused features -> head.

    Images arrive as `uint8 [B, 4, 3, H, W]` (or float in 0..255) and are normalised here, on
    the module's device, with `input_mean/std`: the backbone's own statistics when it is
    pretrained (`normalize=auto|pretrained`), else the training split's.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: Callable[..., nn.Module],
        fitted: Any,
        fusion: str = "concat",
        dropout: float = 0.0,
        hidden: int = 0,
        normalize: str = "auto",
        channels_last: bool | None = None,
        frozen_precision: str = "32",
        compile: bool = False,
        check_finite_every: int = 25,
        feature_cache: bool = True,
        tta: str = "none",
        refine: str = "none",
        refine_k: int = 16,
        refine_cells: int = 3,
        refine_temperature: float = 0.05,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        backbone_lr: float | None = None,
        pretrained: bool = False,
        input_stats: tuple[tuple, tuple] | None = None,
        config: dict | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.fusion = create_fusion(fusion, feature_size(backbone))
        self.neck = Neck(self.fusion.out_features, hidden, dropout)
        self.head = head(
            self.neck.out_features,
            grid=fitted.grid,
            targets=fitted.targets,
            country=fitted.country,
        )
        self.fitted = fitted
        self.config = config or {}
        self.channels_last = channels_last
        self.frozen_precision = str(frozen_precision)
        if self.frozen_precision not in FROZEN_PRECISIONS:
            raise GeoguessError(
                f"model.frozen_precision={frozen_precision!r} is not one of "
                f"{', '.join(FROZEN_PRECISIONS)}"
            )
        if compile:
            self.backbone.compile()  # in place: the state_dict keeps its keys
        # The NaN check reads the loss on the host, a device sync: every N steps, not each.
        self.check_finite_every = max(1, int(check_finite_every))
        self._finite = None
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.backbone_lr = backbone_lr
        mean, std = input_stats or _input_stats(backbone, fitted, normalize, pretrained)
        self.register_buffer("input_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        # Set by the training run when the backbone starts frozen and the images are not
        # augmented (see feature_cache.py); dropped for good once any backbone stage trains.
        self.use_feature_cache = bool(feature_cache)
        self.feature_cache = None
        if tta not in TTA or refine not in REFINE:
            raise GeoguessError(
                f"tta={tta!r} / model.refine={refine!r}: choose tta from {', '.join(TTA)} "
                f"and model.refine from {', '.join(REFINE)}"
            )
        if refine == "knn" and not hasattr(self.head, "class_probabilities"):
            raise GeoguessError(
                "model.refine=knn looks in the likeliest cells: a classification "
                "or hybrid head, not head=regression"
            )
        self.tta, self.refine = tta, refine
        self.refine_settings = {
            "k": int(refine_k),
            "cells": int(refine_cells),
            "temperature": float(refine_temperature),
        }
        # Fitted after training on the best checkpoint (validation and training splits) and
        # kept beside it: the radii's calibration and the retrieval index.
        self.radius_scale: tuple[float, float] | None = None
        self.retrieval: Retrieval | None = None
        self._outputs: dict[str, list[dict]] = {"val": [], "test": []}
        self.test_predictions: pd.DataFrame | None = None
        self.val_predictions: pd.DataFrame | None = None
        self.test_metrics: dict[str, float] = {}

    # -- forward ------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, 4, 3, H, W]` in 0..255 -> head output (logits or normalised x, y). With the
        image cache `rows` of the locations, cached backbone features are used when valid."""
        return self.head(self.neck(self.embed(images, rows)))

    def embed(self, images: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The fused features of each location, `[B, D]` float32."""
        if rows is not None and self.feature_cache is not None:
            features = self.feature_cache.lookup(rows, self.device)
        else:
            features = self.encode_views(images)
        with no_autocast(features):  # fusion and head in float32 (see heads.py)
            return self.fusion(features.float())

    @torch.no_grad()
    def guess(
        self, images, rows=None, fused=None, output=None, tta: bool = True
    ) -> dict[str, torch.Tensor]:
        """The final guess of each location: `xy` (metres, before snapping), with test-time
        augmentation (unless `tta` is false) and retrieval refinement as configured, and
        `radius50`/`radius90` (km; calibrated once `radius_scale` is set)."""
        if fused is None:
            fused = self.embed(images, rows)
            output = self.head(self.neck(fused))
        head = self.head
        xy = head.to_projected(output)
        if tta and self.tta == "mirror":
            xy = (xy + head.to_projected(self(mirror_views(images)))) / 2
        if self.refine == "knn" and self.retrieval is not None:
            refined, found = self.retrieval.refine(fused, head.class_probabilities(output))
            xy = torch.where(found[:, None], refined, xy)
        scale = self.radius_scale or (1.0, 1.0)
        r50, r90 = (head.spread_km(output, xy, q) * scale[i] for i, q in enumerate(QUANTILES))
        # Each quantile is scaled on its own: keep the 90 % circle around the 50 % one.
        return {"xy": xy, "radius50": r50, "radius90": torch.maximum(r90, r50)}

    def encode_views(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's features of each view, `[B, 4, F]`."""
        if self._keeps_activations():
            return self._encode(images)
        # Nothing is kept for a backward pass (evaluation, a frozen backbone): the feature
        # cache's blocks of locations, one pass each. A test batch with mirror TTA is 1,024
        # views, and at 224 px Lite0's activations for all of them at once peaked at 14.6 GB;
        # the same blocks as the cache also give the same bits as its features.
        return torch.cat([self._encode(block) for block in images.split(BATCH_LOCATIONS)])

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        b, v = images.shape[:2]
        x = images.flatten(0, 1)  # the four views go through the backbone as one batch
        x = (x.float() / 255.0 - self.input_mean) / self.input_std
        # bf16 only for the passes no gradient flows through: the feature cache, evaluation and
        # a frozen backbone's training steps alike, so cached and live features match.
        bf16 = self.frozen_precision == "bf16" and not self._gradients_flow()
        return run_backbone(self.backbone, x, self.uses_channels_last(), bf16).reshape(b, v, -1)

    def _gradients_flow(self) -> bool:
        """Whether this pass trains the backbone."""
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.backbone.parameters())

    def _keeps_activations(self) -> bool:
        """Whether this pass must run as one batch: batch norm in training mode normalises by
        the batch's statistics, and a backward pass keeps every chunk's activations anyway."""
        return self.backbone.training or self._gradients_flow()

    def on_train_epoch_start(self) -> None:
        # After the unfreeze schedule (a callback) has set this epoch's trainable stages.
        if self.feature_cache is not None and any(
            p.requires_grad for p in self.backbone.parameters()
        ):
            self.feature_cache = None

    def uses_channels_last(self) -> bool:
        if self.channels_last is None:
            return self.device.type == "cuda"
        return bool(self.channels_last)

    def feature_variant(self) -> str:
        """What besides its weights changes the bits of the backbone's features, as a key
        suffix ("" for the defaults, so that caches built before keep their keys)."""
        variant = f":{self.frozen_precision}" if self.frozen_precision != "32" else ""
        return variant + (":channels_last" if self.uses_channels_last() else "")

    def set_backbone_layout(self) -> None:
        if self.uses_channels_last():
            self.backbone.to(memory_format=torch.channels_last)

    def on_fit_start(self) -> None:
        self.set_backbone_layout()

    @torch.no_grad()
    def predict_latlon(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        lat, lon, _ = self.head.decode(self.guess(images)["xy"].cpu().numpy())
        return lat, lon

    # -- steps --------------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if len(batch["uuid"]) == 0:
            return None  # every location of the batch was unreadable
        loss = self.head.loss(self(batch["images"], batch.get("row")), batch)
        finite = torch.isfinite(loss.detach())
        self._finite = finite if self._finite is None else self._finite & finite
        if batch_idx % self.check_finite_every == 0:
            self._check_finite(loss)
        n = len(batch["uuid"])
        # Two names, because Lightning would suffix one name logged both ways (_step, _epoch).
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        self.log(
            "train/loss_epoch", loss, on_step=False, on_epoch=True, batch_size=n, sync_dist=True
        )
        return loss

    def on_train_epoch_end(self) -> None:
        if self._finite is not None:
            self._check_finite(None)

    def _check_finite(self, loss: torch.Tensor | None) -> None:
        finite, self._finite = bool(self._finite), None
        if not finite:
            if loss is not None and not torch.isfinite(loss):
                value = f" became {loss.item()}"
            else:
                value = f" was not finite in one of the last {self.check_finite_every} steps"
            raise NonFiniteLossError(
                f"the training loss{value} at epoch {self.current_epoch}, "
                f"step {self.global_step}; lower optimizer.lr (now "
                f"{self._base_lr()}), use gradient clipping (trainer.gradient_clip_val=1.0) "
                "or precision 32-true, and check the data"
            )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _eval_step(self, stage: str, batch: dict) -> None:
        if len(batch["uuid"]) == 0:
            return
        fused = self.embed(batch["images"], batch.get("row"))
        output = self.head(self.neck(fused))
        loss = self.head.loss(output, batch)
        self.log(
            f"{stage}/loss", loss, on_epoch=True, batch_size=len(batch["uuid"]), sync_dist=True
        )
        # Test-time augmentation at test only: the epochs' validation picks the checkpoint
        # without it (a second backbone pass per epoch would defeat the feature cache), while
        # the radii are calibrated on validation with it (train.fit_inference_extras).
        guess = self.guess(batch["images"], fused=fused, output=output, tta=stage == "test")
        self._outputs[stage].append(
            {
                **guess,
                "latlon": batch["latlon"].to(torch.float64),
                "index": batch["index"].to(torch.int64),
            }
        )

    # -- epoch ends: metrics over every location, in km --------------------------------------

    def on_validation_epoch_start(self) -> None:
        # Validation runs before on_train_epoch_end: a loss that went NaN in the epoch's last
        # steps must be reported as such, not as the NaN predictions it leads to.
        if self._finite is not None:
            self._check_finite(None)
        self._outputs["val"] = []

    def on_test_epoch_start(self) -> None:
        self._outputs["test"] = []

    def on_validation_epoch_end(self) -> None:
        frame = self._gather_frame("val")
        if frame is None:
            return
        self.val_predictions = frame
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
        diagonal = self.fitted.country.diagonal_km
        stats["geoguessr_score"] = metrics.geoguessr_score(frame["error_km"].to_numpy(), diagonal)
        if frame["snapped"].any():
            stats["haversine_km_unsnapped"] = float(frame["error_km_unsnapped"].mean())
        if self.radius_scale is not None:
            for q, column in zip(QUANTILES, ("radius50_km", "radius90_km"), strict=True):
                inside = frame["error_km"] <= frame[column]
                stats[f"coverage{int(q * 100)}"] = float(inside.mean())
        for name, value in stats.items():
            self.log(f"test/{name}", value, sync_dist=True)
        self.test_metrics = stats
        self.test_predictions = frame

    def _gather_frame(self, stage: str) -> pd.DataFrame | None:
        """Every location of the epoch (all ranks, each once): predictions, truth, km."""
        outputs, self._outputs[stage] = self._outputs[stage], []
        if not outputs:
            return None  # (DDP: a rank without locations; Lightning gives each rank some)
        keys = ("xy", "latlon", "index", "radius50", "radius90")
        parts = {k: torch.cat([o[k] for o in outputs]) for k in keys}
        if self.trainer is not None and self.trainer.world_size > 1:
            parts = {k: _gather_uneven(t) for k, t in parts.items()}
        parts = {k: t.cpu().numpy() for k, t in parts.items()}
        # DistributedSampler pads ranks with repeated locations: count each location once.
        _, first = np.unique(parts["index"], return_index=True)
        parts = {k: v[first] for k, v in parts.items()}
        xy, latlon, index = parts["xy"], parts["latlon"], parts["index"]
        uuids = self._split_uuids(stage)
        lat, lon, snapped = self.head.decode(xy)
        frame = metrics.prediction_frame(
            [uuids[i] for i in index], lat, lon, latlon[:, 0], latlon[:, 1]
        )
        raw_lat, raw_lon = self.head.targets.unproject(xy)
        frame["snapped"] = snapped
        frame["error_km_unsnapped"] = metrics.prediction_frame(
            frame["uuid"], raw_lat, raw_lon, latlon[:, 0], latlon[:, 1]
        )["error_km"].to_numpy()
        frame["radius50_km"], frame["radius90_km"] = parts["radius50"], parts["radius90"]
        return frame

    def _split_uuids(self, stage: str) -> list[str]:
        datamodule = self.trainer.datamodule
        return datamodule.datasets[stage].uuids

    # -- optimisation -------------------------------------------------------------------------

    def _base_lr(self) -> float | None:
        factory = self.optimizer_factory
        return factory.keywords.get("lr") if isinstance(factory, partial) else None

    def param_groups(self) -> list[dict]:
        """Head and fusion at `optimizer.lr`; the backbone in its own groups at `backbone_lr`;
        biases and normalisation weights without weight decay (timm's grouping).

        Every parameter is registered from the start, frozen ones included (a parameter
        without gradient is skipped by the optimizer), so that unfreezing needs no new group
        and schedulers and resumed optimizer states always see the same groups.
        """
        from timm.optim import param_groups_weight_decay

        factory = self.optimizer_factory
        keywords = factory.keywords if isinstance(factory, partial) else {}
        weight_decay = keywords.get("weight_decay", 0.0)
        rest = nn.ModuleDict({"fusion": self.fusion, "neck": self.neck, "head": self.head})
        groups = []
        for name, part, lr in (
            ("head", rest, None),
            ("backbone", self.backbone, self.backbone_lr),
        ):
            with _all_trainable(part):
                for group in param_groups_weight_decay(part, weight_decay):
                    group["name"] = name if group["weight_decay"] else f"{name}/no_decay"
                    if lr is not None:
                        group["lr"] = float(lr)
                    groups.append(group)
        return groups

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise GeoguessError("no optimizer configured")
        optimizer = self.optimizer_factory(self.param_groups())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, trainer=self.trainer, monitor=MONITOR)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # -- checkpoints --------------------------------------------------------------------------

    def spec(self) -> dict:
        """The architecture in plain values: what `build_from_spec` needs besides `fitted`."""
        return {
            "backbone": {
                "name": backbone_name(self.backbone),
                "global_pool": global_pool(self.backbone),
            },
            "fusion": self.fusion.name,
            "dropout": self.neck.dropout,
            "hidden": self.neck.hidden,
            "head": self.head.spec(),
            "input_mean": [float(v) for v in self.input_mean.flatten()],
            "input_std": [float(v) for v in self.input_std.flatten()],
            # Both change the backbone's numbers a little: predict runs as the test did.
            "frozen_precision": self.frozen_precision,
            "channels_last": self.channels_last,
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "version": CHECKPOINT_VERSION,
            "spec": self.spec(),
            "fitted": self.fitted.to_dict(),
            # Provenance only: never instantiated when the checkpoint is loaded.
            "config": self.config,
        }


class _all_trainable:
    """Temporarily mark every parameter trainable, so that a frozen part is still grouped."""

    def __init__(self, module: nn.Module) -> None:
        self.params = list(module.parameters())

    def __enter__(self) -> None:
        self.flags = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(True)

    def __exit__(self, *exc) -> None:
        for p, flag in zip(self.params, self.flags, strict=True):
            p.requires_grad_(flag)


def _gather_uneven(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` of every rank, concatenated; ranks may hold different numbers of rows."""
    from torchmetrics.utilities.distributed import gather_all_tensors

    return torch.cat(gather_all_tensors(tensor.contiguous()))


def backbone_name(backbone: nn.Module) -> str:
    """The timm architecture of a backbone built by `create_backbone`."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    name = cfg.get("architecture")
    if not name:
        raise GeoguessError(f"{type(backbone).__name__} is not a timm model")
    return str(name)


def _input_stats(backbone, fitted, normalize: str, pretrained: bool) -> tuple[tuple, tuple]:
    if normalize not in NORMALIZE:
        raise GeoguessError(f"model.normalize={normalize!r} is not one of {', '.join(NORMALIZE)}")
    if normalize == "pretrained" or (normalize == "auto" and pretrained):
        from timm.data import resolve_model_data_config

        config = resolve_model_data_config(backbone)
        return tuple(config["mean"]), tuple(config["std"])
    return tuple(fitted.image_mean), tuple(fitted.image_std)


def run_backbone(
    backbone: nn.Module, x: torch.Tensor, channels_last: bool, bf16: bool
) -> torch.Tensor:
    """`backbone(x)` on normalised views, channels-last and under bf16 autocast as asked (the
    features then come back as float32)."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if not bf16:
        return backbone(x)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        features = backbone(x)
    return features.float()


# What checkpoints written before an option existed ran with (their specs lack its key).
SPEC_DEFAULTS = {"hidden": 0, "frozen_precision": "32", "channels_last": None}


def complete_spec(spec: dict) -> dict:
    """`spec` with the keys older checkpoints lack filled in as those checkpoints ran."""
    spec = {**SPEC_DEFAULTS, **spec}
    if isinstance(spec.get("backbone"), dict):
        spec["backbone"] = {"global_pool": "avg", **spec["backbone"]}
    return spec


def build_from_spec(spec: dict, fitted) -> GeoguessModule:
    """The module of a checkpoint, for inference: every value read as data, every part taken
    from the suite's registries (timm names, fusions, heads); anything else is refused."""
    from geoguess.models.backbones import create_backbone

    try:
        spec = complete_spec(spec)
        name, pool = spec["backbone"]["name"], spec["backbone"]["global_pool"]
        fusion, dropout, hidden = spec["fusion"], spec["dropout"], spec["hidden"]
        frozen_precision, channels_last = spec["frozen_precision"], spec["channels_last"]
        head_spec = dict(spec["head"])
        mean, std = spec["input_mean"], spec["input_std"]
    except (KeyError, TypeError) as exc:
        raise GeoguessError(f"the checkpoint's model description lacks {exc}") from None
    if (
        not isinstance(name, str)
        or fusion not in FUSIONS
        or pool not in POOLS
        or frozen_precision not in FROZEN_PRECISIONS
    ):
        raise GeoguessError(
            f"the checkpoint names an unknown backbone {name!r}, pooling {pool!r}, "
            f"fusion {fusion!r} or frozen precision {frozen_precision!r}"
        )
    if (
        not isinstance(dropout, float | int)
        or not isinstance(hidden, int)
        or not _floats(mean)
        or not _floats(std)
        or channels_last not in (None, True, False)
    ):
        raise GeoguessError(
            "the checkpoint's dropout, hidden width, input statistics or channels_last "
            "are not what they should be"
        )
    backbone = create_backbone(name, pretrained=False, global_pool=pool)
    return GeoguessModule(
        backbone=backbone,
        head=partial(build_head, head_spec),
        fitted=fitted,
        fusion=fusion,
        dropout=float(dropout),
        hidden=hidden,
        frozen_precision=frozen_precision,
        channels_last=channels_last,
        input_stats=(tuple(mean), tuple(std)),
    )


def _floats(values) -> bool:
    return (
        isinstance(values, list | tuple)
        and len(values) == 3
        and all(isinstance(v, float | int) for v in values)
    )


__all__ = [
    "CHECKPOINT_KEY",
    "MONITOR",
    "GeoguessModule",
    "NonFiniteLossError",
    "build_from_spec",
]
