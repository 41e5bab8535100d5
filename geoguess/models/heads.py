"""Heads: the last layer, its loss, and the decoding of its output into coordinates.

Decoding goes through the country's metric CRS (metres, float64) and is inverted to
latitude/longitude with the train-fitted `TargetSpace`, so both heads end in the same place.
Losses and decoding run in float32/float64 with autocast off: bf16 would cost tens of km.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geoguess.data.targets import TargetSpace
from geoguess.errors import GeoguessError
from geoguess.geo import ClassGrid, haversine_km_torch


def _no_autocast(tensor: torch.Tensor):
    return torch.autocast(device_type=tensor.device.type, enabled=False)


class Head(nn.Module):
    """Common decoding: `to_projected` (metres, float64) is head-specific; `to_latlon` is not."""

    num_classes: int | None = None

    def __init__(self, targets: TargetSpace) -> None:
        super().__init__()
        self.targets = targets

    def to_projected(self, output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to_latlon(self, output: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Predicted latitude and longitude in degrees (float64 numpy arrays)."""
        xy = self.to_projected(output).detach().cpu().numpy()
        return self.targets.unproject(xy)


class ClassificationHead(Head):
    """Cross-entropy over the grid's classes.

    The predicted location is the softmax-weighted mean of the class points in metres, as in the
    write-up: a hesitation between two neighbouring cells lands between them. With
    `smoothing_km`, the target is soft: `exp(-(d_i - d_min) / smoothing_km)` over the class points
    (normalised), `d_i` the great-circle distance of class point i to the true location, so a
    near miss costs less than a far one.
    """

    def __init__(
        self,
        in_features: int,
        grid: ClassGrid,
        targets: TargetSpace,
        points: str = "clipped",
        smoothing_km: float | None = None,
    ) -> None:
        super().__init__(targets)
        points = getattr(points, "name", points)  # a schema Enum or a plain string
        if smoothing_km is not None and not float(smoothing_km) > 0:
            raise GeoguessError(f"head.smoothing_km={smoothing_km} must be positive, or null")
        self.points = points
        self.smoothing_km = float(smoothing_km) if smoothing_km is not None else None
        lat, lon = grid.points(points)
        self.num_classes = len(lat)
        self.linear = nn.Linear(in_features, self.num_classes)
        # Derived from the fitted grid (kept in the checkpoint), so not part of the state_dict.
        xy = targets.project(lat, lon)
        self.register_buffer("class_xy", torch.tensor(xy, dtype=torch.float64), persistent=False)
        self.register_buffer(
            "class_latlon",
            torch.tensor(np.column_stack([lat, lon]), dtype=torch.float64),
            persistent=False,
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        with _no_autocast(logits):
            logits = logits.float()
            if self.smoothing_km is None:
                return F.cross_entropy(logits, batch["class_id"])
            return -(self.soft_targets(batch["latlon"]) * logits.log_softmax(-1)).sum(-1).mean()

    def soft_targets(self, latlon: torch.Tensor) -> torch.Tensor:
        """`[B, C]` float32 distribution over classes, decaying with distance to the truth."""
        with _no_autocast(latlon):
            latlon = latlon.to(torch.float64)
            d = haversine_km_torch(
                latlon[:, :1],
                latlon[:, 1:],
                self.class_latlon[None, :, 0],
                self.class_latlon[None, :, 1],
                check=False,
            )
            # softmax(-d / tau) is exp(-(d - d_min) / tau) normalised, computed stably.
            return torch.softmax(-d / self.smoothing_km, dim=-1).float()

    def to_projected(self, logits: torch.Tensor) -> torch.Tensor:
        with _no_autocast(logits):
            return torch.softmax(logits.to(torch.float64), dim=-1) @ self.class_xy


class RegressionHead(Head):
    """Two outputs: the min-max normalised projected x, y; MSE against the normalised target.

    The loss sees the raw outputs (a clamp would stop the gradient of a prediction beyond the
    range); predictions are clamped to [0, 1], the training locations' bounding box.
    """

    def __init__(
        self,
        in_features: int,
        targets: TargetSpace,
        grid: ClassGrid | None = None,
        points: str | None = None,
        smoothing_km: float | None = None,
    ) -> None:
        # `grid`, `points` and `smoothing_km` concern classification only: unused here.
        super().__init__(targets)
        self.linear = nn.Linear(in_features, 2)
        # Start at the centre of the training range (about the baseline) rather than at a corner.
        nn.init.constant_(self.linear.bias, 0.5)
        self.register_buffer(
            "scale", torch.tensor(targets.scale(), dtype=torch.float64), persistent=False
        )
        self.register_buffer(
            "offset", torch.tensor(targets.offset(), dtype=torch.float64), persistent=False
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    def loss(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        with _no_autocast(output):
            return F.mse_loss(output.float(), batch["target"].float())

    def to_projected(self, output: torch.Tensor) -> torch.Tensor:
        with _no_autocast(output):
            return output.to(torch.float64).clamp(0.0, 1.0) * self.scale + self.offset
