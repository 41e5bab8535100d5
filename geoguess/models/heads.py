"""Heads: the last layer, its loss, and the decoding of its output into coordinates.

Decoding goes through the country's metric CRS (metres, float64) and is inverted to
latitude/longitude with the train-fitted `TargetSpace`, so both heads end in the same place.
The linear layer, the loss and the decoding run in float32/float64 with autocast off: under
bf16 the regression head alone loses kilometres, and the haversine tens of km.

`HEADS` is the registry a checkpoint's head is rebuilt from: a checkpoint names a kind and
plain settings (`spec.HeadSpec`), never code to run.
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

    def spread_km(self, output: torch.Tensor, xy: torch.Tensor, q: float) -> torch.Tensor:
        """Per location, the radius (km) around `xy` holding a share `q` of the predicted
        probability mass; uncalibrated (the run scales it on validation). A head without a
        distribution over places returns 1 km everywhere: its calibrated radius is then the
        validation errors' quantile."""
        return torch.ones(len(xy), dtype=torch.float64, device=xy.device)

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


class ClassificationHead(Head):
    """Cross-entropy over the grid's classes.

    `decode` turns the predicted distribution over places into one location, in metres:
    `weighted` (the write-up's): the softmax-weighted mean of the class points, which minimises
    the expected squared distance; a hesitation between two neighbouring cells lands between
    them (which may be at sea or abroad: `snap_to_land` moves it back). `median`: the spatial
    median, the point with the least expected distance, which is what the score averages; on a
    crescent-shaped country a hesitation between its two arms puts the mean inland, far from
    both, and the median on the likelier arm. `top`: the likeliest class's point.
    With `smoothing_km`, the target is soft:
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
        decode: str = "weighted",
    ) -> None:
        if decode not in DECODES:
            raise GeoguessError(f"head.decode={decode!r} is not one of {', '.join(DECODES)}")
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
        self.decode_mode = decode
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

    def to_projected(self, output: torch.Tensor) -> torch.Tensor:
        probabilities = self.class_probabilities(output)
        places = self.place_xy(output)
        if self.decode_mode == "top":
            top = probabilities.argmax(-1)
            return places[torch.arange(len(top), device=top.device), top]
        mean = (probabilities[..., None] * places).sum(1)
        if self.decode_mode == "median":
            return spatial_median(probabilities, places, mean)
        return mean

    def class_probabilities(self, output: torch.Tensor) -> torch.Tensor:
        with no_autocast(output):
            return torch.softmax(output[:, : self.num_classes].to(torch.float64), dim=-1)

    def place_xy(self, output: torch.Tensor) -> torch.Tensor:
        """`[B, C, 2]` metres: where each class puts the location (its point)."""
        return self.class_xy.expand(len(output), -1, -1)

    def spread_km(self, output: torch.Tensor, xy: torch.Tensor, q: float) -> torch.Tensor:
        return mass_radius_km(self.class_probabilities(output), self.place_xy(output), xy, q)


DECODES = ("weighted", "median", "top")
MEDIAN_TOLERANCE_M = 1.0
MEDIAN_MAX_STEPS = 200


def spatial_median(
    probabilities: torch.Tensor, places: torch.Tensor, start: torch.Tensor
) -> torch.Tensor:
    """`[B, 2]` metres: per row, the point x minimising sum_c p_c |x - place_c| (Weiszfeld's
    iteration from `start`). The sum is convex, so the iteration finds its one minimum; a place
    the iterate lands on is kept at 1 m so that its weight stays finite."""
    with no_autocast(places):
        x = start.to(torch.float64)
        for _ in range(MEDIAN_MAX_STEPS):
            distance = torch.linalg.vector_norm(places - x[:, None, :], dim=-1).clamp(min=1.0)
            weight = probabilities / distance
            moved = (weight[..., None] * places).sum(1) / weight.sum(-1, keepdim=True)
            step = torch.linalg.vector_norm(moved - x, dim=-1).max()
            x = moved
            if step < MEDIAN_TOLERANCE_M:
                break
        return x


def mass_radius_km(
    probabilities: torch.Tensor, places: torch.Tensor, xy: torch.Tensor, q: float
) -> torch.Tensor:
    """The distance from `xy` within which the places (`[B, C, 2]` m) hold mass `q`."""
    with no_autocast(places):
        distance = torch.linalg.vector_norm(places - xy[:, None, :], dim=-1) / 1000.0
        order = distance.argsort(dim=-1)
        mass = probabilities.gather(-1, order).cumsum(-1)
        first = (mass < q).sum(-1, keepdim=True).clamp(max=distance.shape[-1] - 1)
        return distance.gather(-1, order).gather(-1, first).squeeze(-1).clamp(min=0.1)


class HybridHead(ClassificationHead):
    """Classification over the cells plus, per cell, a regression of the offset of the
    location from the cell's point (OSV-5M's hybrid), trained jointly.

    Outputs `C` logits and `2C` offsets in units of `offset_scale_m` (about a cell's width).
    Decoding as the classifier's, over the places point_c + offset_c: `weighted` = sum over
    cells of p_c (point_c + offset_c), `median` their spatial median, `top` = the most likely
    cell's point plus its offset.
    """

    kind = "hybrid"

    def __init__(
        self,
        in_features: int,
        grid: ClassGrid,
        targets: TargetSpace,
        country: Country | None = None,
        points: str = "clipped",
        smoothing_km: float | None = None,
        snap_to_land: bool = True,
        decode: str = "weighted",
        offset_weight: float = 1.0,
    ) -> None:
        super().__init__(
            in_features, grid, targets, country, points, smoothing_km, snap_to_land, decode
        )
        self.offset_weight = float(offset_weight)
        c = self.num_classes
        self.linear = nn.Linear(in_features, 3 * c)
        nn.init.zeros_(self.linear.weight[c:])
        nn.init.zeros_(self.linear.bias[c:])
        area = country.projected_geometry.area if country is not None else 1e10
        self.offset_scale_m = float(np.sqrt(area / c))
        # The batch's `target` is the location min-max normalised over the training range.
        self.register_buffer(
            "target_scale", torch.tensor(targets.scale(), dtype=torch.float64), persistent=False
        )
        self.register_buffer(
            "target_offset", torch.tensor(targets.offset(), dtype=torch.float64), persistent=False
        )

    def offsets_m(self, output: torch.Tensor) -> torch.Tensor:
        with no_autocast(output):
            c = self.num_classes
            raw = output[:, c:].to(torch.float64).reshape(len(output), c, 2)
            return raw * self.offset_scale_m

    def place_xy(self, output: torch.Tensor) -> torch.Tensor:
        return self.class_xy[None] + self.offsets_m(output)

    def loss(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        with no_autocast(output):
            c = self.num_classes
            classification = super().loss(output[:, :c], batch)
            truth = batch["target"].to(torch.float64) * self.target_scale + self.target_offset
            ids = batch["class_id"]
            wanted = (truth - self.class_xy[ids]) / self.offset_scale_m
            predicted = output[:, c:].float().reshape(len(output), c, 2)
            chosen = predicted[torch.arange(len(ids), device=ids.device), ids]
            return classification + self.offset_weight * F.mse_loss(chosen, wanted.float())


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
        decode: str | None = None,
    ) -> None:
        # `grid`, `points`, `smoothing_km` and `decode` concern classification only: unused here.
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


HEADS: dict[str, type[Head]] = {
    "classification": ClassificationHead,
    "regression": RegressionHead,
    "hybrid": HybridHead,
}


def build_head(
    spec, in_features: int, grid: ClassGrid, targets: TargetSpace, country: Country
) -> Head:
    """The head a `HeadSpec` describes (its kind from `HEADS`, the settings that kind takes)."""
    settings = {"snap_to_land": spec.snap_to_land}
    if spec.kind != "regression":
        settings.update(points=spec.points, smoothing_km=spec.smoothing_km, decode=spec.decode)
    if spec.kind == "hybrid":
        settings["offset_weight"] = spec.offset_weight
    return HEADS[spec.kind](in_features, grid=grid, targets=targets, country=country, **settings)
