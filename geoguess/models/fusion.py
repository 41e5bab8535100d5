"""Fusion of the four views' feature vectors `[B, 4, F]` into one vector per location."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from geoguess.errors import GeoguessError

NUM_VIEWS = 4


class ConcatFusion(nn.Module):
    """The write-up's choice: the four vectors side by side, so the head sees each heading."""

    def __init__(self, features: int, views: int = NUM_VIEWS) -> None:
        super().__init__()
        self.out_features = features * views

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class MeanFusion(nn.Module):
    """Average of the views: heading-agnostic, four times fewer head weights."""

    def __init__(self, features: int, views: int = NUM_VIEWS) -> None:
        super().__init__()
        self.out_features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


class AttentionFusion(nn.Module):
    """A learned weighting of the views (attention pooling).

    Each view gets a score from a small MLP of its features plus a learned heading embedding, so
    the model can both prefer informative views (a road sign) and know which heading it is.
    """

    def __init__(self, features: int, views: int = NUM_VIEWS, hidden: int = 128) -> None:
        super().__init__()
        self.out_features = features
        self.heading = nn.Parameter(torch.zeros(views, features))
        self.score = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.heading
        weights = torch.softmax(self.score(x).squeeze(-1), dim=1)  # [B, views]
        return (weights.unsqueeze(-1) * x).sum(dim=1)


FUSIONS: dict[str, Callable[[int], nn.Module]] = {
    "concat": ConcatFusion,
    "mean": MeanFusion,
    "attention": AttentionFusion,
}


class Neck(nn.Sequential):
    """Between fusion and head: dropout on the fused features, then, with `hidden` > 0, one
    hidden layer (GELU, dropout again). On frozen features the linear head can only weigh what
    each feature says alone; the hidden layer lets it combine them (this object and that coast)."""

    def __init__(self, features: int, hidden: int = 0, dropout: float = 0.0) -> None:
        hidden, dropout = int(hidden), float(dropout)
        if hidden < 0 or not 0.0 <= dropout < 1.0:
            raise GeoguessError(
                f"model.hidden={hidden} must be >= 0 and model.dropout={dropout} in [0, 1)"
            )
        layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout else []
        if hidden:
            layers += [nn.Linear(features, hidden), nn.GELU()]
            layers += [nn.Dropout(dropout)] if dropout else []
        super().__init__(*layers)
        self.hidden, self.dropout = hidden, dropout
        self.out_features = hidden or features


def create_fusion(name: str, features: int) -> nn.Module:
    """The fusion module `name` for `features`-wide view vectors; `.out_features` is its width."""
    if name not in FUSIONS:
        raise GeoguessError(f"model.fusion={name!r} is not one of {', '.join(FUSIONS)}")
    fusion = FUSIONS[name](features)
    fusion.name = name
    return fusion
