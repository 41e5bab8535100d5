"""The training run's objects, each built from its config group by `instantiate`: the
LightningModule around its network, the callbacks, the trainer."""

from __future__ import annotations

import logging
import os
import warnings

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar, Timer
from omegaconf import DictConfig, OmegaConf, open_dict

from geoguess import runs
from geoguess.errors import GeoguessError
from geoguess.models.callbacks import EpochLog, EpochSeed, PlateauStepOnResume
from geoguess.models.feature_cache import FeatureCacheCallback
from geoguess.models.inference_extras import InferenceExtrasCallback
from geoguess.models.module import MONITOR, GeoguessModule
from geoguess.models.network import GeoNetwork, input_stats
from geoguess.models.unfreeze import BackboneUnfreeze
from geoguess.utils.cli import instantiate

log = logging.getLogger("geoguess.train")
# trainer=ddp's strategy: DDP looks for parameters without a gradient each step, because a
# backbone frozen in the first epochs must stay registered to be synchronised once it trains.
# When the same parameters train in every epoch, a frozen backbone is frozen before DDP wraps
# the model (BackboneUnfreeze.freeze_before_training), so plain DDP serves: it neither
# registers the frozen parameters (no all-reduce of their zero gradients) nor searches the
# graph.
FIND_UNUSED = "ddp_find_unused_parameters_true"


def build_module(cfg: DictConfig, fitted, backbone=None, optimizer=None, unfreeze=None):
    """The LightningModule of a run config around `fitted` (the parts given are reused)."""
    backbone = backbone if backbone is not None else instantiate(cfg.backbone)
    optimizer = optimizer or checked_optimizer(instantiate(cfg.optimizer))
    unfreeze = unfreeze or instantiate(cfg.unfreeze)
    settings = instantiate(cfg.model)
    pretrained = bool(cfg.backbone.get("pretrained") or cfg.backbone.get("pretrained_file"))
    stats = input_stats(backbone, fitted, settings.normalize, pretrained)
    spec = settings.network_spec(backbone, instantiate(cfg.head), stats)
    network = GeoNetwork(backbone, spec, fitted)
    if settings.compile:
        network.backbone.compile()  # in place: the state_dict keeps its keys
    return GeoguessModule(
        network,
        optimizer=optimizer,
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        backbone_lr=unfreeze.backbone_lr,
        inference=settings.inference_spec(cfg.tta),
        check_finite_every=settings.check_finite_every,
        config=plain_config(cfg),
    )


def build_trainer(cfg: DictConfig, **kwargs):
    """The Lightning Trainer of `cfg.trainer`. DDP without GPUs runs CPU processes over gloo
    (Lightning's choice), in float32 and without synchronised BatchNorm (GPU-only options)."""
    settings = {}
    if str(cfg.trainer.get("strategy", "")).startswith("ddp") and not torch.cuda.is_available():
        settings = {"accelerator": "cpu", "sync_batchnorm": False, "precision": "32-true"}
        if cfg.trainer.get("devices") == -1:  # "all devices": every CPU core its process
            settings["devices"] = os.cpu_count() or 1
    # The data module's samplers split each epoch between the ranks themselves.
    settings["use_distributed_sampler"] = False
    if cfg.trainer.get("strategy") == FIND_UNUSED and _same_parameters_train(cfg, kwargs):
        settings["strategy"] = "ddp"  # see the comment of FIND_UNUSED
    try:
        return instantiate(cfg.trainer, _partial_=True)(**{**settings, **kwargs})
    except MisconfigurationException as exc:
        raise GeoguessError(
            f"trainer: {exc} (trainer=gpu needs a CUDA GPU; trainer=cpu runs without one)"
        ) from None


def _same_parameters_train(cfg: DictConfig, kwargs: dict) -> bool:
    schedules = [c for c in kwargs.get("callbacks") or [] if isinstance(c, BackboneUnfreeze)]
    max_epochs = cfg.trainer.get("max_epochs")
    return len(schedules) == 1 and schedules[0].same_every_epoch(max_epochs)


def checked_optimizer(factory):
    """The optimizer partial, tried on one parameter: `optimizer.lr=-1` fails now, clearly."""
    try:
        factory([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as exc:
        settings = ", ".join(f"optimizer.{k}={v!r}" for k, v in factory.keywords.items())
        raise GeoguessError(f"{factory.func.__name__} refuses {settings}: {exc}") from None
    return factory


def build_callbacks(
    cfg: DictConfig, loggers: list, unfreeze: BackboneUnfreeze, feature_cache: bool
) -> list:
    """The `callbacks` group (every entry with a `_target_`, user additions included), the
    unfreeze schedule, the feature cache (while the backbone is frozen from the start and the
    images are not augmented), the inference extras, per-epoch seeding, the plateau step a
    resumed run misses, and the log line."""
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        if "_target_" not in node:
            raise GeoguessError(f"callbacks.{name} has no _target_: give one, or set it to null")
        callback = instantiate(node)
        # Lightning refuses a learning-rate monitor without a logger to write to.
        if callback is None or (isinstance(callback, LearningRateMonitor) and not loggers):
            continue
        callbacks.append(callback)
    cache = FeatureCacheCallback(
        enabled=feature_cache and unfreeze.frozen_from_start() and not cfg.data.augment
    )
    extras = InferenceExtrasCallback()
    bookkeeping = [EpochSeed(cfg.seed), PlateauStepOnResume(), EpochLog()]
    return [*callbacks, unfreeze, cache, extras, *bookkeeping]


def progress_bar(cfg: DictConfig, callbacks: list) -> bool:
    """Whether the trainer shows a progress bar (`trainer.enable_progress_bar`, or a bar among
    the callbacks); drops the bar callback when the config turns it off."""
    wanted = cfg.trainer.get("enable_progress_bar")
    has_bar = any(isinstance(c, ProgressBar) for c in callbacks)
    if wanted is False:
        callbacks[:] = [c for c in callbacks if not isinstance(c, ProgressBar)]
        return False
    return has_bar or bool(wanted)


def best_checkpoint_callback(callbacks: list) -> ModelCheckpoint | None:
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor == MONITOR:
            return callback
    log.warning("no checkpoint callback monitors %s: testing the last epoch's model", MONITOR)
    return None


def train_seconds(callbacks: list) -> float:
    """Training time so far (a resumed run's included), from the Timer callback."""
    timer = next((c for c in callbacks if isinstance(c, Timer)), None)
    return timer.time_elapsed("train") if timer is not None else 0.0


def quiet_lightning() -> None:
    """Tips, accelerator inventories and the like: not what a person needs to read."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*is deprecated, use `isinstance.*")
    # A resumed run's checkpoint folder holds the interrupted session's files, as it should.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    # Under DDP every test location is counted once (module._gather_frame drops the repeats).
    warnings.filterwarnings("ignore", message="Using `DistributedSampler` with the dataloaders")
    if runs.global_rank() != 0:  # one voice per run in the log
        log.setLevel(logging.WARNING)


def describe(model: GeoguessModule, datamodule) -> str:
    counts = {name: len(frame) for name, frame in datamodule.splits.items()}
    params = sum(p.numel() for p in model.parameters())
    classes = model.head.num_classes
    return (
        f"{counts['train']} train / {counts['val']} val / {counts['test']} test locations, "
        f"{params / 1e6:.2f} M parameters" + (f", {classes} classes" if classes is not None else "")
    )


def plain_config(cfg) -> dict:
    """The resolved config as plain containers, without Hydra's own node."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
