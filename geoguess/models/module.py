"""`GeoguessModule`: the LightningModule that trains a `GeoNetwork` — loss, optimizers,
schedules, the per-epoch metrics in km — and nothing else.

Its guesses at validation and test come from the run's `Predictor` (geoguess/predictor.py), the
same object `python -m geoguess.predict` and the server use. A checkpoint holds, besides the
weights, the network's `NetworkSpec`, the `InferenceSpec` it was tested with, the fitted data
and (once fitted) the inference extras, as plain values; `checkpoint.load_network` rebuilds the
network from those through the suite's registries and nothing else, so loading someone's
checkpoint never runs code of their choosing.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import lightning as L
import numpy as np
import pandas as pd
import torch
from timm.optim import param_groups_weight_decay
from torch import nn
from torchmetrics.utilities.distributed import gather_all_tensors

from geoguess import metrics
from geoguess.errors import GeoguessError
from geoguess.models.network import GeoNetwork
from geoguess.models.refinement import QUANTILES
from geoguess.models.spec import CHECKPOINT_KEY, CHECKPOINT_VERSION, InferenceSpec, migrate
from geoguess.predictor import Predictor

MONITOR = "val/haversine_km"


class NonFiniteLossError(GeoguessError):
    """The loss became NaN or infinite: training cannot continue meaningfully."""


class GeoguessModule(L.LightningModule):
    """Trains `network`; `inference` says how its test guesses are made (TTA, refinement).

    `feature_cache` (set by the `FeatureCacheCallback` while the backbone is frozen and the
    images are not augmented) replaces the backbone's pass on the cached images; `predictor`
    makes the guesses (the `InferenceExtrasCallback` gives it its fitted extras before test).
    """

    def __init__(
        self,
        network: GeoNetwork,
        *,
        check_finite_every: int,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        backbone_lr: float | None = None,
        inference: InferenceSpec | None = None,
        config: dict | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.fitted = network.fitted
        self.config = config or {}
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.backbone_lr = backbone_lr
        # The NaN check reads the loss on the host, a device sync: every N steps, not each.
        self.check_finite_every = max(1, int(check_finite_every))
        self._finite = None
        self.predictor = Predictor(network, inference)
        self.feature_cache = None
        self._outputs: dict[str, list[dict]] = {"val": [], "test": []}
        self.test_predictions: pd.DataFrame | None = None
        self.val_predictions: pd.DataFrame | None = None
        self.test_metrics: dict[str, float] = {}

    @property
    def backbone(self) -> nn.Module:
        return self.network.backbone

    @property
    def head(self) -> nn.Module:
        return self.network.head

    def forward(
        self, images: torch.Tensor | None, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Head output of `[B, 4, 3, H, W]` images in 0..255; with the image cache `rows` of
        the locations, their cached backbone features stand for the images (which training
        batches then do not carry)."""
        return self.network(images, self.features_of({"row": rows}))

    @property
    def feature_cache(self):
        return self._feature_cache

    @feature_cache.setter
    def feature_cache(self, cache) -> None:
        """While cached features stand for the images, training batches come without them."""
        self._feature_cache = cache
        datamodule = getattr(self._trainer, "datamodule", None)
        if hasattr(datamodule, "read_train_images"):
            datamodule.read_train_images(cache is None)

    def features_of(self, batch: dict) -> torch.Tensor | None:
        """The cached backbone features of a batch's locations, or None (no cache)."""
        rows = batch.get("row")
        if rows is None or self.feature_cache is None:
            return None
        return self.feature_cache.lookup(rows, self.device)

    def setup(self, stage: str) -> None:
        # Before the strategy wraps the model (DDP's gradient buckets follow the strides).
        self.network.set_backbone_layout(self.trainer.strategy.root_device)

    def on_train_epoch_start(self) -> None:
        # After the unfreeze schedule (a callback) has set this epoch's trainable stages.
        if self.feature_cache is not None and self.network.backbone_trains():
            self.feature_cache = None

    # -- steps --------------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if len(batch["uuid"]) == 0:  # every location of the batch was unreadable
            return self._empty_step_loss()
        loss = self.head.loss(self(batch.get("images"), batch.get("row")), batch)
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

    def _empty_step_loss(self) -> torch.Tensor:
        """A zero loss on every trainable parameter: under DDP the other ranks' backward
        passes wait for this rank's gradients, so a rank with nothing to learn from still
        takes part in the step (its gradients are zeros), where returning None would skip the
        backward pass and hang them. Logged with batch size 0, so the epoch's mean and its
        synchronisation across ranks see this rank without counting it."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        loss = torch.stack([p.sum() * 0.0 for p in trainable]).sum()
        self.log(
            "train/loss_epoch",
            loss.detach(),
            on_step=False,
            on_epoch=True,
            batch_size=0,
            sync_dist=True,
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
            # Logged all the same: the epoch's synchronised mean needs every rank's entry.
            zero = torch.zeros((), device=self.device)
            self.log(f"{stage}/loss", zero, on_epoch=True, batch_size=0, sync_dist=True)
            return
        # Test-time augmentation at test only: the epochs' validation picks the checkpoint
        # without it (a second backbone pass per epoch would defeat the feature cache), while
        # the radii are calibrated on validation with it (InferenceExtrasCallback).
        guess = self.predictor.guess(batch["images"], self.features_of(batch), tta=stage == "test")
        loss = self.network.head.loss(guess["output"], batch)
        self.log(
            f"{stage}/loss", loss, on_epoch=True, batch_size=len(batch["uuid"]), sync_dist=True
        )
        self._outputs[stage].append(
            {key: value(guess, batch).to(dtype) for key, (value, dtype) in OUTPUTS.items()}
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
        if self.predictor.calibrated:
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
        # A rank without locations takes part in the gather all the same (with no rows), or
        # the others would wait for it forever.
        parts = {
            key: torch.cat([o[key] for o in outputs])
            if outputs
            else torch.zeros((0, *shape), dtype=dtype, device=self.device)
            for key, shape, dtype in _output_shapes()
        }
        if self.trainer is not None and self.trainer.world_size > 1:
            parts = {k: _gather_uneven(t) for k, t in parts.items()}
        if not len(parts["index"]):
            return None
        parts = {k: t.cpu().numpy() for k, t in parts.items()}
        # DistributedSampler pads ranks with repeated locations: count each location once.
        _, first = np.unique(parts["index"], return_index=True)
        parts = {k: v[first] for k, v in parts.items()}
        xy, latlon, index = parts["xy"], parts["latlon"], parts["index"]
        uuids = self._split_uuids(stage)
        lat, lon, snapped = self.predictor.decode(xy)
        frame = metrics.prediction_frame(
            [uuids[i] for i in index], lat, lon, latlon[:, 0], latlon[:, 1]
        )
        raw_lat, raw_lon = self.network.head.targets.unproject(xy)
        frame["snapped"] = snapped
        frame["error_km_unsnapped"] = metrics.prediction_frame(
            frame["uuid"], raw_lat, raw_lon, latlon[:, 0], latlon[:, 1]
        )["error_km"].to_numpy()
        frame["radius50_km"], frame["radius90_km"] = parts["radius50"], parts["radius90"]
        frame["novelty"] = parts["novelty"]
        return frame

    def _split_uuids(self, stage: str) -> list[str]:
        return self.trainer.datamodule.datasets[stage].uuids

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
        factory = self.optimizer_factory
        keywords = factory.keywords if isinstance(factory, partial) else {}
        weight_decay = keywords.get("weight_decay", 0.0)
        net = self.network
        rest = nn.ModuleDict({"fusion": net.fusion, "neck": net.neck, "head": net.head})
        groups = []
        for name, part, lr in (
            ("head", rest, None),
            ("backbone", net.backbone, self.backbone_lr),
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

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "version": CHECKPOINT_VERSION,
            "spec": self.network.spec.to_dict(),
            "inference": self.predictor.inference.to_dict(),
            "fitted": self.fitted.to_dict(),
            # Provenance only: never instantiated when the checkpoint is loaded.
            "config": self.config,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A checkpoint of an older format resumes under today's names.
        checkpoint[CHECKPOINT_KEY] = migrate(
            checkpoint.get(CHECKPOINT_KEY), checkpoint.get("state_dict")
        )


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


# What each evaluation batch keeps per location: its value and dtype (the same on every rank,
# as the gather across ranks needs). The guesses are float64 already (heads.to_projected).
OUTPUTS = {
    "xy": (lambda guess, batch: guess["xy"], torch.float64),
    "latlon": (lambda guess, batch: batch["latlon"], torch.float64),
    "index": (lambda guess, batch: batch["index"], torch.int64),
    "radius50": (lambda guess, batch: guess["radius50"], torch.float64),
    "radius90": (lambda guess, batch: guess["radius90"], torch.float64),
    "novelty": (lambda guess, batch: guess["novelty"], torch.float64),
}
# Each output's shape after its location axis.
OUTPUT_SHAPES = {
    "xy": (2,),
    "latlon": (2,),
    "index": (),
    "radius50": (),
    "radius90": (),
    "novelty": (),
}


def _output_shapes() -> list[tuple[str, tuple, torch.dtype]]:
    return [(key, OUTPUT_SHAPES[key], dtype) for key, (_, dtype) in OUTPUTS.items()]


def _gather_uneven(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` of every rank, concatenated; ranks may hold different numbers of rows."""
    return torch.cat(gather_all_tensors(tensor.contiguous()))


__all__ = ["MONITOR", "GeoguessModule", "NonFiniteLossError"]
