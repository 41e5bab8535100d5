"""Backbone features computed once: while the backbone is frozen and the images are not
augmented, every epoch would compute the same features again.

The per-view features of every location of the image cache (`float32 [N, 4, F]`, a `.npy` beside
the image cache) are keyed by the backbone's architecture and weights, the image size and
dataset, and the input normalisation, so a sweep over heads, grids, smoothing or fusions on one
frozen backbone computes them once and then trains in seconds per run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from geoguess.errors import GeoguessError
from geoguess.models.backbones import backbone_name, global_pool
from geoguess.utils.io import make_temp_file

log = logging.getLogger(__name__)

# Locations per backbone pass, here and in `GeoguessModule.encode_views` at inference: the same
# blocks give the features computed live the same bits as the cached ones.
BATCH_LOCATIONS = 16


def weights_digest(module: nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def feature_key(arch: str, weights: str, image_cache_key: str, image_size: int, mean, std) -> str:
    text = json.dumps([arch, weights, image_cache_key, image_size, list(mean), list(std)])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class FeatureCache:
    """Cached features, looked up by image cache row."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.array = np.load(self.path, mmap_mode="r")

    def lookup(self, rows: torch.Tensor, device) -> torch.Tensor:
        """`float32 [B, 4, F]` for the image cache rows `rows`."""
        picked = np.asarray(self.array[np.asarray(rows.cpu())])
        return torch.from_numpy(picked).to(device)

    @classmethod
    def build_or_load(cls, folder: Path, key: str, images, encode) -> FeatureCache:
        """The cache `key` in `folder`, computed first when absent: `encode(uint8 [b, 4, 3, S, S])`
        gives `[b, 4, F]` features; `images` is the image cache's array."""
        path = Path(folder) / f"features-{key}.npy"
        if path.is_file():
            return cls(path)
        log.info("computing backbone features of %d locations once (%s)", len(images), path.name)
        tmp = make_temp_file(folder, path.name, suffix=".npy")
        try:
            array = None
            for start in range(0, len(images), BATCH_LOCATIONS):
                block = torch.from_numpy(np.array(images[start : start + BATCH_LOCATIONS]))
                features = encode(block).float().cpu().numpy()
                if array is None:
                    shape = (len(images), *features.shape[1:])
                    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
                array[start : start + len(features)] = features
            array.flush()
            del array
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return cls(path)


class FeatureCacheCallback(Callback):
    """Gives the module the cached features of its frozen backbone at the start of fit: rank 0
    computes them (on the training device) unless a run before did, the other ranks wait, then
    every rank reads the file. `enabled` is false when the backbone trains from the first epoch,
    the images are augmented, or a run resumes (it then computes features live)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = bool(enabled)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        image_cache = getattr(getattr(trainer.datamodule, "report", None), "cache", None)
        if not self.enabled or image_cache is None or trainer.ckpt_path is not None:
            return
        if trainer.is_global_zero:
            build_feature_cache(pl_module.network, image_cache)
        trainer.strategy.barrier("feature-cache")
        pl_module.feature_cache = build_feature_cache(pl_module.network, image_cache)


def build_feature_cache(network, image_cache) -> FeatureCache:
    """The per-view features of every location of `image_cache`, computed once for this
    backbone, its weights, numerics and input statistics."""
    key = feature_key(
        f"{backbone_name(network.backbone)}:{global_pool(network.backbone)}"
        f"{network.feature_variant()}",
        weights_digest(network.backbone),
        image_cache.key,
        image_cache.image_size,
        network.input_mean.flatten().tolist(),
        network.input_std.flatten().tolist(),
    )
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            return FeatureCache.build_or_load(
                image_cache.data_path.parent, key, image_cache.open(), network.encode_views
            )
    finally:
        network.train(was_training)


def feature_file_locations(features: Path) -> pd.DataFrame:
    """The dataset's `data.csv` rows (uuid index; latitude, longitude, ...) of a cached
    `DATA_ROOT/.geoguess-cache/<key>/features-*.npy`, in the features' row order: that of the
    image cache indexes (`*px.json`) beside it, which all list the same locations."""
    root = features.parent.parent.parent
    indexes = features.parent.glob("*px.json")
    orders = {tuple(json.loads(path.read_text())["uuids"]) for path in indexes}
    if len(orders) != 1:
        raise GeoguessError(f"{features.parent} has no single image cache index (*px.json)")
    return pd.read_csv(root / "data.csv", index_col=0).set_index("uuid").loc[list(orders.pop())]
