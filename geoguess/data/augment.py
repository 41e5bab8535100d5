"""Training augmentation as a batch operation on the device that trains.

The loader hands over uint8 batches straight from the image cache; `BatchAugment` then gives
each view a random resized crop (70-100 % of the area, aspect 0.9-1.1, no flips: a flip swaps
east and west and the heading order would lie) and a brightness/contrast jitter, drawn from the
same distributions as the torchvision transforms it replaces:

    RandomResizedCrop(S, scale=(0.7, 1.0), ratio=(0.9, 1.1), antialias=True)
    ColorJitter(brightness=0.2, contrast=0.2)     (its two adjustments in random order)

applied to each view on its own. Every random number of location `i` in epoch `e` comes from
`numpy.random.default_rng([seed, e, i])`, so an augmented batch is a pure function of (seed,
epoch, location indices, pixels): the same whatever the batch size, worker count, rank or what
ran before, and a resumed run reproduces it exactly.

Two kernels compute the same pixels (up to rounding, see `BatchAugment`): on CUDA every view is
warped at once in float (`grid_sample`) and jittered with batched tensor ops; on the CPU each
view is cropped and resized by torch's uint8 antialiased kernel (the one torchvision uses) and
jittered with one 256-entry lookup table, which is several times faster there than float math.

The CPU kernel is in `augment_cpu.py`, with what it approximates.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from geoguess.data.augment_cpu import augment_per_view
from geoguess.data.augment_params import GRAY_WEIGHTS, ViewParams, sample_params

BACKENDS = ("auto", "batched", "per_view")
# The columns of packed parameters (`pack_params`).
PARAM_COLUMNS = ("top", "left", "height", "width", "brightness", "contrast", "contrast_first")


class BatchAugment:
    """Augments a training batch `uint8 [B, V, 3, H, W]` on its device; returns uint8, same shape.

    `augment(images, indices, epoch)`: `indices` are the batch's dataset indices (the batch's
    "index"), `epoch` the current epoch. Output views have the input's size.

    `backend`: "batched" (float math on all views at once: the choice on a GPU), "per_view"
    (uint8 kernels view by view: the choice on a CPU) or "auto" (by the images' device). Both
    follow torchvision's uint8 pipeline (resized crop rounded to integers, each adjustment
    truncated, the contrast pivot the mean grayscale). The per-view kernel takes that mean
    before flooring each gray value, over every k-th row (see the module's note); the batched
    one samples the crop with `grid_sample`, whose edge rows may blend half a pixel from
    outside the crop. Both stay within a few grey levels of torchvision given the same
    parameters, on average well under one.
    """

    def __init__(
        self,
        seed: int = 0,
        scale: tuple[float, float] = (0.7, 1.0),
        ratio: tuple[float, float] = (0.9, 1.1),
        brightness: float = 0.2,
        contrast: float = 0.2,
        backend: str = "auto",
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
        if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"scale={scale} and ratio={ratio} must be increasing and positive")
        self.seed = int(seed)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.backend = backend

    def params(self, indices, epoch: int, views: int, height: int, width: int) -> ViewParams:
        return sample_params(
            self.seed,
            epoch,
            _as_numpy(indices),
            views,
            height,
            width,
            self.scale,
            self.ratio,
            self.brightness,
            self.contrast,
        )

    def prepare(self, indices, epoch: int, shape: tuple[int, ...]) -> torch.Tensor:
        """The packed parameters (`pack_params`) of a batch of `shape` `[B, V, 3, H, W]`, made
        on the host from host `indices`, pinned when CUDA is present: handed to `__call__` as
        `params`, they reach the device with the batch's own copy, and the device never waits
        for the host (see `GeoDataModule.on_before_batch_transfer`)."""
        _, views, _, height, width = shape
        params = self.params(indices, epoch, views, height, width)
        return pack_params(params, pin=torch.cuda.is_available())

    def __call__(
        self, images: torch.Tensor, indices, epoch: int, params: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`params`: from `prepare` (on the host or already on the images' device); without
        them, they are drawn here from `indices`, which a device tensor copies to the host
        first (a sync)."""
        if images.dtype != torch.uint8 or images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(
                f"expected uint8 images [B, V, 3, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        batch, views, _, height, width = images.shape
        if batch == 0:
            return images
        if params is None:
            drawn = self.params(indices, epoch, views, height, width)
            if len(drawn.top) != batch:
                raise ValueError(f"{len(drawn.top)} indices for a batch of {batch}")
            params = pack_params(drawn, pin=images.is_cuda)
        if tuple(params.shape) != (batch, views, len(PARAM_COLUMNS)):
            raise ValueError(f"parameters {tuple(params.shape)} for a batch of {batch} x {views}")
        backend = self.backend
        if backend == "auto":
            backend = "per_view" if images.device.type == "cpu" else "batched"
        if backend == "per_view":
            return augment_per_view(images, unpack_params(params))
        return augment_batched(images, params)


def _as_numpy(indices) -> np.ndarray:
    if isinstance(indices, torch.Tensor):
        return indices.detach().cpu().numpy()
    return np.asarray(indices)


def pack_params(params: ViewParams, pin: bool = False) -> torch.Tensor:
    """`float64 [B, V, 7]` (`PARAM_COLUMNS`) on the host: every value exact (the crop's
    integers, the jitter's float64 factors, the order as 0 or 1), so that the kernels compute
    what they computed from `ViewParams`; `pin` for an asynchronous copy to a GPU."""
    columns = [np.asarray(getattr(params, name), dtype=np.float64) for name in PARAM_COLUMNS]
    packed = torch.from_numpy(np.stack(columns, axis=-1))
    return packed.pin_memory() if pin else packed


def unpack_params(packed: torch.Tensor) -> ViewParams:
    """The `ViewParams` of packed parameters (a host copy first if they are on a device)."""
    values = packed.detach().cpu().numpy()
    crop = values[..., :4].astype(np.int64)
    return ViewParams(
        top=crop[..., 0],
        left=crop[..., 1],
        height=crop[..., 2],
        width=crop[..., 3],
        brightness=values[..., 4],
        contrast=values[..., 5],
        contrast_first=values[..., 6] > 0.5,
    )


# ---------------------------------------------------------------------------------------------
# Batched float kernel (GPU)


def augment_batched(images: torch.Tensor, params: torch.Tensor | ViewParams) -> torch.Tensor:
    """All views at once: one `grid_sample` for the crops, tensor ops for the jitter.

    `params` packed (`pack_params`) or `ViewParams`; on the host they are copied with
    `non_blocking` (asynchronous from pinned memory), no other copy and no sync."""
    batch, views, channels, height, width = images.shape
    n = batch * views
    if isinstance(params, ViewParams):
        params = pack_params(params, pin=images.is_cuda)
    columns = params.to(images.device, non_blocking=True).reshape(n, len(PARAM_COLUMNS))
    flat = images.reshape(n, channels, height, width).float()
    grid = _crop_grids(columns, height, width)
    # Bilinear, sampling the crop's pixel centres exactly as a resize of the crop does; at
    # the crop's edge half a pixel of the neighbouring row may blend in (torchvision clamps).
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = _jitter_float(out.round_(), columns)
    return out.to(torch.uint8).reshape(images.shape)


def _crop_grids(columns: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`[n, H, W, 2]` sampling positions in grid_sample's normalised coordinates."""

    def axis(start, length, size):
        # Output pixel k samples input x = start + (k + 0.5) * length / size - 0.5, which
        # grid_sample (align_corners=False) calls (2 x + 1) / size - 1.
        start, length = start.float().unsqueeze(1), length.float().unsqueeze(1)
        k = torch.arange(size, dtype=torch.float32, device=columns.device) + 0.5
        x = start + k * length / size
        return 2 * x / size - 1

    gx = axis(columns[:, 1], columns[:, 3], width)  # [n, W]
    gy = axis(columns[:, 0], columns[:, 2], height)  # [n, H]
    return torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)


def _jitter_float(x: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """torchvision's uint8 brightness and contrast on integer-valued `[n, 3, H, W]` floats.

    Each adjustment truncates to integers and the contrast pivot is the mean of the floored
    grayscale, as torchvision computes on uint8 images.
    """
    n = len(columns)
    b = columns[:, 4].float().view(n, 1, 1, 1)
    c = columns[:, 5].float().view(n, 1, 1, 1)
    contrast_first = (columns[:, 6] > 0.5).view(n, 1, 1, 1)
    weights = _gray_weights(x.device)
    brightened = (x * b).clamp_(0, 255).floor_()
    before_contrast = torch.where(contrast_first, x, brightened)
    gray = (before_contrast * weights).sum(1, keepdim=True).floor_()
    mean = gray.mean((2, 3), keepdim=True)
    contrasted = (before_contrast * c + (1 - c) * mean).clamp_(0, 255).floor_()
    return torch.where(contrast_first, (contrasted * b).clamp_(0, 255).floor_(), contrasted)


@functools.cache
def _gray_weights(device: torch.device) -> torch.Tensor:
    """`[1, 3, 1, 1]` luma weights on `device`, copied there once (a copy per batch would wait)."""
    return torch.tensor(GRAY_WEIGHTS, device=device).view(1, 3, 1, 1)


# ---------------------------------------------------------------------------------------------
# The reference: torchvision, view by view (what the loader workers used to run)


class TorchvisionViewAugment:
    """The former per-view augmentation in torchvision v2; kept as the reference in tests and
    the benchmark's naive loader, not for training (it draws from torch's global RNG)."""

    def __init__(self, size: int, scale=(0.7, 1.0), ratio=(0.9, 1.1)) -> None:
        # torchvision loads here, not at the top: training never needs it, only this reference.
        from torchvision.transforms import v2

        self.crop = v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True)
        self.jitter = v2.ColorJitter(brightness=0.2, contrast=0.2)
        self.transform = v2.Compose([self.crop, self.jitter])

    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(view) for view in views])
