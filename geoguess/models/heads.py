"""Heads: the last layer, its loss, and the decoding of its output into coordinates.

Decoding goes through the country's metric CRS (metres, float64) and is inverted to
latitude/longitude with the train-fitted `TargetSpace`, so both heads end in the same place.
The linear layer, the loss and the decoding run in float32/float64 with autocast off: under
bf16 the regression head alone loses kilometres, and the haversine tens of km.

`HEADS` is the registry a checkpoint's head is rebuilt from: a checkpoint names a kind and
plain settings (`Head.spec`), never code to run.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geoguess.data.targets import TargetSpace
from geoguess.errors import GeoguessError
from geoguess.geo import ClassGrid, Country, haversine_km_torch

MIN_CLASSES = 2


def no_autocast(tensor: torch.Tensor):
    return torch.autocast(device_type=tensor.device.type, enabled=False)


class Head(nn.Module):
    """A linear layer in float32 and the decoding shared by every head."""

    kind: str = ""
    num_classes: int | None = None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        targets: TargetSpace,
        country: Country | None = None,
        snap_to_land: bool = True,
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.targets = targets
        self.country = country
        self.snap_to_land = bool(snap_to_land)
        if self.snap_to_land and country is None:
            raise GeoguessError("head.snap_to_land=true needs the country")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with no_autocast(features):
            return self.linear(features.float())

    def to_projected(self, output: torch.Tensor) -> torch.Tensor:
        """Predicted easting/northing in metres, float64, before any snapping."""
        raise NotImplementedError

    def decode(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Latitude and longitude (float64) of projected predictions, snapped onto land when
        `snap_to_land`; the third array says which predictions were moved."""
        lat, lon = self.targets.unproject(np.asarray(xy, dtype=np.float64))
        if not self.snap_to_land:
            return lat, lon, np.zeros(len(lat), dtype=bool)
        return self.country.snap_to_land(lat, lon)

    def to_latlon(self, output: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Predicted latitude and longitude in degrees (float64 numpy arrays)."""
        lat, lon, _ = self.decode(self.to_projected(output).detach().cpu().numpy())
        return lat, lon

    def spec(self) -> dict:
        """The plain settings this head is rebuilt from (`build_head`)."""
        return {"kind": self.kind, "snap_to_land": self.snap_to_land}


class ClassificationHead(Head):
    """Cross-entropy over the grid's classes.

    The predicted location is the softmax-weighted mean of the class points in metres, as in the
    write-up: a hesitation between two neighbouring cells lands between them (which may be at
    sea or abroad: `snap_to_land` moves it back). With `smoothing_km`, the target is soft:
    `exp(-(d_i - d_min) / smoothing_km)` over the class points (normalised), `d_i` the
    great-circle distance of class point i to the true location, so a near miss costs less than
    a far one.
    """

    kind = "classification"

    def __init__(
        self,
        in_features: int,
        grid: ClassGrid,
        targets: TargetSpace,
        country: Country | None = None,
        points: str = "clipped",
        smoothing_km: float | None = None,
        snap_to_land: bool = True,
    ) -> None:
        if smoothing_km is not None and not float(smoothing_km) > 0:
            raise GeoguessError(f"head.smoothing_km={smoothing_km} must be positive, or null")
        if grid.num_classes < MIN_CLASSES:
            raise GeoguessError(
                f"the grid has {grid.num_classes} class holding training locations; a "
                f"classifier needs at least {MIN_CLASSES}: use a finer grid (grid.spacing) or "
                "head=regression"
            )
        try:
            lat, lon = grid.points(points)
        except ValueError as exc:
            raise GeoguessError(f"head.points={points!r}: {exc}") from None
        super().__init__(in_features, len(lat), targets, country, snap_to_land)
        self.points = points
        self.smoothing_km = float(smoothing_km) if smoothing_km is not None else None
        self.num_classes = len(lat)
        # Derived from the fitted grid (kept in the checkpoint), so not part of the state_dict.
        xy = targets.project(lat, lon)
        self.register_buffer("class_xy", torch.tensor(xy, dtype=torch.float64), persistent=False)
        self.register_buffer(
            "class_latlon",
            torch.tensor(np.column_stack([lat, lon]), dtype=torch.float64),
            persistent=False,
        )

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        with no_autocast(logits):
            logits = logits.float()
            if self.smoothing_km is None:
                return F.cross_entropy(logits, batch["class_id"])
            return -(self.soft_targets(batch["latlon"]) * logits.log_softmax(-1)).sum(-1).mean()

    def soft_targets(self, latlon: torch.Tensor) -> torch.Tensor:
        """`[B, C]` float32 distribution over classes, decaying with distance to the truth."""
        with no_autocast(latlon):
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
        with no_autocast(logits):
            return torch.softmax(logits.to(torch.float64), dim=-1) @ self.class_xy

    def spec(self) -> dict:
        return {**super().spec(), "points": self.points, "smoothing_km": self.smoothing_km}


class RegressionHead(Head):
    """Two outputs: the min-max normalised projected x, y; MSE against the normalised target.

    The loss sees the raw outputs (a clamp would stop the gradient of a prediction beyond the
    range); predictions are clamped to [0, 1], the training locations' bounding box.
    """

    kind = "regression"

    def __init__(
        self,
        in_features: int,
        targets: TargetSpace,
        grid: ClassGrid | None = None,
        country: Country | None = None,
        snap_to_land: bool = True,
        points: str | None = None,
        smoothing_km: float | None = None,
    ) -> None:
        # `grid`, `points` and `smoothing_km` concern classification only: unused here.
        super().__init__(in_features, 2, targets, country, snap_to_land)
        # Start at the centre of the training range (about the baseline) rather than at a corner.
        nn.init.constant_(self.linear.bias, 0.5)
        self.register_buffer(
            "scale", torch.tensor(targets.scale(), dtype=torch.float64), persistent=False
        )
        self.register_buffer(
            "offset", torch.tensor(targets.offset(), dtype=torch.float64), persistent=False
        )

    def loss(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        with no_autocast(output):
            return F.mse_loss(output.float(), batch["target"].float())

    def to_projected(self, output: torch.Tensor) -> torch.Tensor:
        with no_autocast(output):
            return output.to(torch.float64).clamp(0.0, 1.0) * self.scale + self.offset


HEADS: dict[str, type[Head]] = {"classification": ClassificationHead, "regression": RegressionHead}
# The plain settings each kind takes from a checkpoint, with their types.
HEAD_SETTINGS: dict[str, dict[str, tuple[type, ...]]] = {
    "classification": {
        "points": (str,),
        "smoothing_km": (float, int, type(None)),
        "snap_to_land": (bool,),
    },
    "regression": {"snap_to_land": (bool,)},
}


def build_head(
    spec: dict, in_features: int, grid: ClassGrid, targets: TargetSpace, country: Country
) -> Head:
    """A head from its `spec` (kind and plain settings), refusing anything unknown."""
    kind = spec.get("kind")
    if kind not in HEADS:
        raise GeoguessError(f"unknown head kind {kind!r}; known: {', '.join(HEADS)}")
    allowed = HEAD_SETTINGS[kind]
    settings = {k: v for k, v in spec.items() if k != "kind"}
    for key, value in settings.items():
        if key not in allowed or not isinstance(value, allowed[key]):
            raise GeoguessError(f"head setting {key}={value!r} is not valid for a {kind} head")
    return HEADS[kind](in_features, grid=grid, targets=targets, country=country, **settings)
