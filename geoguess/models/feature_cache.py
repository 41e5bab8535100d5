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
import uuid
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from torch import nn

from geoguess.errors import GeoguessError
from geoguess.models.backbones import backbone_name, global_pool
from geoguess.utils.io import make_temp_file

log = logging.getLogger(__name__)

# Locations per backbone pass on the CPU, here and in `GeoNetwork.encode_views` at inference
# (`model.inference_block`): the same blocks give the features computed live the same bits as
# the cached ones.
BATCH_LOCATIONS = 16
# How long the ranks of a distributed run wait for each other while they build the cache: each
# computes an equal share, but a slow disk or a busy device must not end the run at the
# default collective timeout (10 minutes under NCCL). A rank that dies leaves the others
# waiting this long, unless the launcher (torchrun, srun) ends them first.
BUILD_TIMEOUT = timedelta(hours=2)
# Share of a CUDA device's free memory the whole feature cache may take to be gathered there.
DEVICE_SHARE = 0.25


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
        self._tables: dict[torch.device, torch.Tensor | None] = {}

    def lookup(self, rows: torch.Tensor, device) -> torch.Tensor:
        """`float32 [B, 4, F]` for the image cache rows `rows`.

        On a CUDA device the whole cache moves into device memory once, when it fits in a
        share of the free memory, and is gathered there (no wait for the device); otherwise
        the rows are gathered on the host and copied from pinned memory without blocking."""
        device = torch.device(device)
        table = self._device_table(device) if device.type == "cuda" else None
        if table is not None:
            return table[rows.to(device, non_blocking=True)]
        picked = torch.from_numpy(np.asarray(self.array[np.asarray(rows.cpu())]))
        return _to_device(picked, device)

    def _device_table(self, device: torch.device) -> torch.Tensor | None:
        if device not in self._tables:
            free, _ = torch.cuda.mem_get_info(device)
            fits = self.array.nbytes <= free * DEVICE_SHARE
            self._tables[device] = _upload(self.array, device) if fits else None
            if not fits:
                log.info(
                    "the feature cache (%.1f GB) is read from the host", self.array.nbytes / 1e9
                )
        return self._tables[device]

    @classmethod
    def build_or_load(
        cls,
        folder: Path,
        key: str,
        images,
        encode,
        block: int = BATCH_LOCATIONS,
        device: torch.device | str = "cpu",
        ranks: Ranks | None = None,
    ) -> FeatureCache:
        """The cache `key` in `folder`, computed first when absent: `encode(uint8 [b, 4, 3, S,
        S] on device)` gives `[b, 4, F]` features; `images` is the image cache's array, encoded
        `block` locations at a time. Under several `ranks` each encodes its share of the
        blocks into a part file and rank 0 joins them (the same bits as one process)."""
        ranks = ranks or Ranks()
        path = Path(folder) / f"features-{key}.npy"
        if ranks.broadcast(path.is_file()):  # rank 0's answer: every rank takes one branch
            return cls(path)
        device = torch.device(device)
        log.info("computing backbone features of %d locations once (%s)", len(images), path.name)
        starts = np.array_split(np.arange(0, len(images), block), ranks.world_size)
        if ranks.world_size == 1:
            _encode_into(folder, path.name, path, images, encode, starts[0], block, device)
            return cls(path)
        # Named for this build: two runs building the same key at once keep their parts apart.
        parts_name = f".{path.stem}-{ranks.broadcast(uuid.uuid4().hex)}.part"
        parts = [Path(folder) / f"{parts_name}{r}.npy" for r in range(ranks.world_size)]
        with ranks.waiting():
            try:
                mine = starts[ranks.rank]
                if len(mine):
                    _encode_into(
                        folder,
                        parts[ranks.rank].name,
                        parts[ranks.rank],
                        images,
                        encode,
                        mine,
                        block,
                        device,
                        first=int(mine[0]),
                    )
                ranks.wait()
                if ranks.rank == 0:
                    _join_parts(
                        folder,
                        path,
                        [p for p, s in zip(parts, starts, strict=True) if len(s)],
                        len(images),
                    )
                ranks.wait()
            finally:
                parts[ranks.rank].unlink(missing_ok=True)
        return cls(path)


class Ranks:
    """The processes that build a feature cache together: this one's rank, their number, and
    the two collectives the build needs (rank 0's answer to all; a wait for all)."""

    def __init__(self, rank: int = 0, world_size: int = 1, strategy=None) -> None:
        self.rank, self.world_size, self.strategy = int(rank), int(world_size), strategy
        self._group = None

    @classmethod
    def of(cls, trainer: L.Trainer) -> Ranks:
        return cls(trainer.global_rank, trainer.world_size, trainer.strategy)

    def broadcast(self, value):
        return self.strategy.broadcast(value, src=0) if self.world_size > 1 else value

    @contextmanager
    def waiting(self):
        """While the build runs: waits under `BUILD_TIMEOUT` (a gloo group of their own), not
        the default group's timeout (10 minutes under NCCL)."""
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            self._group = dist.new_group(backend="gloo", timeout=BUILD_TIMEOUT)
        try:
            yield self
        finally:
            if self._group is not None:
                dist.destroy_process_group(self._group)
            self._group = None

    def wait(self) -> None:
        if self._group is not None:
            dist.barrier(group=self._group)
        elif self.world_size > 1:
            self.strategy.barrier("feature-cache")


def _encode_into(folder, name, path, images, encode, starts, block, device, first=0) -> None:
    """The features of the blocks at `starts` (rows from `first` on) into the `.npy` `path`,
    written through a temporary file."""
    tmp = make_temp_file(folder, name, suffix=".npy")
    try:
        array = None
        for start, features in _encoded_blocks(images, encode, starts, block, device):
            if array is None:
                rows = min(int(starts[-1]) + block, len(images)) - first
                shape = (rows, *features.shape[1:])
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            array[start - first : start - first + len(features)] = features
        array.flush()
        del array
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _encoded_blocks(images, encode, starts, block: int, device: torch.device):
    """`(start, float32 [b, 4, F] ndarray)` per block: each block goes to the device from
    pinned memory without blocking, and its features come back the same way while the device
    already works on the next block (no wait per block)."""
    pending = None
    for start in starts.tolist():
        views = torch.from_numpy(np.array(images[start : start + block]))
        features = encode(_to_device(views, device)).float()
        done = None
        if device.type == "cuda":
            host = torch.empty(features.shape, dtype=torch.float32, pin_memory=True)
            features = host.copy_(features, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        if pending is not None:
            yield _arrived(*pending)
        pending = (start, features, done)
    if pending is not None:
        yield _arrived(*pending)


def _arrived(start: int, features: torch.Tensor, done) -> tuple[int, np.ndarray]:
    if done is not None:
        done.synchronize()
    return start, features.cpu().numpy()


def _join_parts(folder, path: Path, parts: list[Path], n: int) -> None:
    """The ranks' part files, in row order, into the cache file `path`."""
    tmp = make_temp_file(folder, path.name, suffix=".npy")
    try:
        pieces = [np.load(part, mmap_mode="r") for part in parts]
        shape = (n, *pieces[0].shape[1:])
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        row = 0
        for piece in pieces:
            array[row : row + len(piece)] = piece
            row += len(piece)
        array.flush()
        del array, pieces
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`: from pinned memory without blocking on CUDA."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _upload(array: np.ndarray, device: torch.device, rows: int = 4096) -> torch.Tensor:
    table = torch.empty(array.shape, dtype=torch.float32, device=device)
    for start in range(0, len(array), rows):
        chunk = torch.from_numpy(np.array(array[start : start + rows]))
        table[start : start + len(chunk)].copy_(chunk.pin_memory(), non_blocking=True)
    return table


class FeatureCacheCallback(Callback):
    """Gives the module the cached features of its frozen backbone at the start of fit: unless
    a run before computed them, every rank computes its share (on its training device) and
    rank 0 joins the shares, then every rank reads the file. `enabled` is false when the
    backbone trains from the first epoch, the images are augmented, or a run resumes (it then
    computes features live)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = bool(enabled)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        image_cache = getattr(getattr(trainer.datamodule, "report", None), "cache", None)
        if not self.enabled or image_cache is None or trainer.ckpt_path is not None:
            return
        pl_module.feature_cache = build_feature_cache(
            pl_module.network, image_cache, Ranks.of(trainer)
        )


def build_feature_cache(network, image_cache, ranks: Ranks | None = None) -> FeatureCache:
    """The per-view features of every location of `image_cache`, computed once for this
    backbone, its weights, numerics and input statistics (by `ranks` together)."""
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
                image_cache.data_path.parent,
                key,
                image_cache.open(),
                network.encode_views,
                block=network.inference_block(),
                device=network.device,
                ranks=ranks,
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
