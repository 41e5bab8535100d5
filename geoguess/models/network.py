"""`GeoNetwork`: one shared backbone over the four views, fusion, neck, head — a plain
`nn.Module` that its `NetworkSpec` alone rebuilds (with the fitted data).

Images arrive as `uint8 [B, 4, 3, H, W]` (or float in 0..255) and are normalised here, on the
network's device, with the spec's input statistics: the backbone's own when it is pretrained
(`model.normalize=auto|pretrained`), else the training split's.
"""

from __future__ import annotations

import torch
from timm.data import resolve_model_data_config
from torch import nn

from geoguess.errors import GeoguessError
from geoguess.models.backbones import create_backbone, feature_size
from geoguess.models.feature_cache import BATCH_LOCATIONS
from geoguess.models.fusion import Neck, create_fusion
from geoguess.models.heads import build_head, no_autocast
from geoguess.models.spec import BackboneSpec, NetworkSpec

NORMALIZE = ("auto", "pretrained", "dataset")
# model.inference_block=null by device type: a GPU is kept busier by larger blocks, while the
# CPU keeps the blocks its results (and cached features) were made with.
INFERENCE_BLOCKS = {"cpu": BATCH_LOCATIONS, "cuda": 64}


class GeoNetwork(nn.Module):
    """Four views -> one shared backbone -> fused features -> neck -> head."""

    def __init__(self, backbone: nn.Module, spec: NetworkSpec, fitted) -> None:
        super().__init__()
        self.backbone = backbone
        self.fusion = create_fusion(spec.fusion, feature_size(backbone))
        self.neck = Neck(self.fusion.out_features, spec.hidden, spec.dropout)
        self.head = build_head(
            spec.head,
            self.neck.out_features,
            grid=fitted.grid,
            targets=fitted.targets,
            country=fitted.country,
        )
        self.spec = spec
        self.fitted = fitted
        mean, std = spec.input_mean, spec.input_std
        self.register_buffer("input_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_spec(cls, spec: NetworkSpec, fitted) -> GeoNetwork:
        """The network of a checkpoint: the backbone from timm's registry without weights (the
        checkpoint's state_dict brings them), the rest from the suite's registries."""
        backbone = create_backbone(
            spec.backbone.name,
            pretrained=False,
            pretrained_file=None,
            global_pool=spec.backbone.global_pool,
        )
        return cls(backbone, spec, fitted)

    @property
    def device(self) -> torch.device:
        return self.input_mean.device

    # -- forward ------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, 4, 3, H, W]` in 0..255 (or the backbone's per-view `features` `[B, 4, F]`, when
        cached) -> head output (logits, or normalised x, y)."""
        return self.head(self.neck(self.embed(images, features)))

    def embed(self, images: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """The fused features of each location, `[B, D]` float32."""
        if features is None:
            features = self.encode_views(images)
        with no_autocast(features):  # fusion and head in float32 (see heads.py)
            return self.fusion(features.float())

    def encode_views(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's features of each view, `[B, 4, F]`."""
        if self._keeps_activations():
            return self._encode(images)
        # Nothing is kept for a backward pass (evaluation, a frozen backbone): the feature
        # cache's blocks of locations, one pass each, which bounds the activations' memory of a
        # large test batch with TTA and gives the same bits as the cached features.
        block = self.inference_block()
        return torch.cat([self._encode(part) for part in images.split(block)])

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        b, v = images.shape[:2]
        x = images.flatten(0, 1)  # the four views go through the backbone as one batch
        x = (x.float() / 255.0 - self.input_mean) / self.input_std
        # bf16 only for the passes no gradient flows through: the feature cache, evaluation and
        # a frozen backbone's training steps alike, so cached and live features match.
        bf16 = self.spec.frozen_precision == "bf16" and not self.gradients_flow()
        return run_backbone(self.backbone, x, self.uses_channels_last(), bf16).reshape(b, v, -1)

    def gradients_flow(self) -> bool:
        """Whether this pass trains the backbone."""
        return torch.is_grad_enabled() and self.backbone_trains()

    def backbone_trains(self) -> bool:
        return any(p.requires_grad for p in self.backbone.parameters())

    def _keeps_activations(self) -> bool:
        """Whether this pass must run as one batch: batch norm in training mode normalises by
        the batch's statistics, and a backward pass keeps every chunk's activations anyway."""
        return self.backbone.training or self.gradients_flow()

    # -- numerics of the backbone -------------------------------------------------------------

    def uses_channels_last(self, device: torch.device | None = None) -> bool:
        """`model.channels_last`; null: on CUDA devices (`device`, else the network's) only."""
        if self.spec.channels_last is None:
            return (device or self.device).type == "cuda"
        return bool(self.spec.channels_last)

    def inference_block(self, device: torch.device | None = None) -> int:
        """Locations per no-gradient backbone pass (`model.inference_block`); null: by the
        type of `device` (else the network's)."""
        if self.spec.inference_block is not None:
            return self.spec.inference_block
        return INFERENCE_BLOCKS.get((device or self.device).type, BATCH_LOCATIONS)

    def feature_variant(self) -> str:
        """What besides its weights changes the bits of the backbone's features, as a key
        suffix ("" for the defaults, so that caches built before keep their keys)."""
        precision = self.spec.frozen_precision
        variant = f":{precision}" if precision != "32" else ""
        block = self.inference_block()
        variant += f":block{block}" if block != BATCH_LOCATIONS else ""
        return variant + (":channels_last" if self.uses_channels_last() else "")

    def set_backbone_layout(self, device: torch.device | None = None) -> None:
        """The backbone's weights channels-last where its passes run so (on `device`)."""
        if self.uses_channels_last(device):
            self.backbone.to(memory_format=torch.channels_last)


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


def input_stats(backbone: nn.Module, fitted, normalize: str, pretrained: bool) -> tuple:
    """The input mean and std the network normalises with (`model.normalize`)."""
    if normalize not in NORMALIZE:
        raise GeoguessError(f"model.normalize={normalize!r} is not one of {', '.join(NORMALIZE)}")
    if normalize == "pretrained" or (normalize == "auto" and pretrained):
        config = resolve_model_data_config(backbone)
        return tuple(config["mean"]), tuple(config["std"])
    return tuple(fitted.image_mean), tuple(fitted.image_std)


__all__ = ["BackboneSpec", "GeoNetwork", "NetworkSpec", "input_stats", "run_backbone"]
