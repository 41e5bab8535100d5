"""How unlike the training split a location looks: its novelty.

A location's distance is the mean cosine distance of its fused features to their nearest
neighbours among (a sample of) the training split's; its novelty is that distance as a
percentile of the training split's own leave-one-out distances. Novelty 100 means farther from
what training saw than any training location is from the others: errors and radii measured on
the test split do not carry over to such inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

REFERENCE_ROWS = 4096
NEIGHBOURS = 5
# A location beyond this percentile of the training split's distances counts as novel.
NOVEL_PERCENTILE = 95.0
# Predict warns when more than this share of its inputs is novel.
WARN_SHARE = 0.5
_CHUNK = 1024  # query rows per distance matrix, to bound its memory


@dataclass
class NoveltyReference:
    """`features`: unit-length fused features of training locations `[N, D]`; `distances`:
    their leave-one-out mean distances to their `k` nearest neighbours, sorted `[N]`."""

    features: torch.Tensor
    distances: torch.Tensor
    k: int = NEIGHBOURS

    @classmethod
    def fit(
        cls, fused: torch.Tensor, rows: int = REFERENCE_ROWS, k: int = NEIGHBOURS, seed: int = 0
    ) -> NoveltyReference | None:
        """The reference of the training split's fused features `[N, D]` (a seeded sample of
        `rows` of them); None with fewer than two locations (no neighbour to measure)."""
        if len(fused) < 2:
            return None
        if len(fused) > rows:
            generator = torch.Generator().manual_seed(seed)
            fused = fused[torch.randperm(len(fused), generator=generator)[:rows]]
        # Rounded as the checkpoint keeps them, so that queries meet the same reference.
        features = F.normalize(fused.detach().float().cpu(), dim=-1).half().float()
        k = min(int(k), len(features) - 1)
        reference = cls(features, torch.empty(0), k)
        reference.distances = reference.distance(features, leave_one_out=True).sort().values
        return reference

    def to(self, device: torch.device | str) -> NoveltyReference:
        self.features = self.features.to(device)
        self.distances = self.distances.to(device)
        return self

    @torch.no_grad()
    def distance(self, fused: torch.Tensor, leave_one_out: bool = False) -> torch.Tensor:
        """Mean cosine distance of each row of `fused` `[B, D]` to its `k` nearest reference
        rows; `leave_one_out`: `fused` is the reference itself, each row's own match skipped."""
        # Full precision even under mixed-precision autocast: percentiles compare distances.
        with torch.autocast(fused.device.type, enabled=False):
            query = F.normalize(fused.float().to(self.features.device), dim=-1)
            parts = []
            for start in range(0, len(query), _CHUNK):
                similarity = query[start : start + _CHUNK] @ self.features.T
                if leave_one_out:
                    rows = torch.arange(len(similarity), device=similarity.device)
                    similarity[rows, rows + start] = -torch.inf
                nearest = similarity.topk(self.k, dim=-1).values
                parts.append((1 - nearest).mean(dim=-1))
        return torch.cat(parts) if parts else query.new_zeros(0)

    def percentile(self, fused: torch.Tensor) -> torch.Tensor:
        """Novelty of each row of `fused`: the share (0-100) of the training split's
        leave-one-out distances at or below its distance."""
        distance = self.distance(fused)
        below = torch.searchsorted(self.distances, distance.contiguous(), right=True)
        return below.float() * (100.0 / len(self.distances))

    def to_checkpoint(self) -> dict:
        """Tensors and plain values (read back with `torch.load(weights_only=True)`)."""
        return {
            "features": self.features.detach().cpu().half().contiguous(),
            "distances": self.distances.detach().cpu().float().contiguous(),
            "k": int(self.k),
        }

    @classmethod
    def from_checkpoint(cls, entry: dict) -> NoveltyReference:
        features, distances, k = entry["features"], entry["distances"], int(entry["k"])
        if not (isinstance(features, torch.Tensor) and isinstance(distances, torch.Tensor)):
            raise TypeError("the novelty reference is not made of tensors")
        if features.ndim != 2 or distances.shape != (len(features),) or not 0 < k < len(features):
            raise ValueError(
                f"novelty reference of shapes {tuple(features.shape)} and "
                f"{tuple(distances.shape)} with k={k}"
            )
        return cls(features.float(), distances.float().sort().values, k)


def novel_share(novelty) -> float | None:
    """The share of locations beyond `NOVEL_PERCENTILE` (None without novelty scores)."""
    values = np.asarray(novelty, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float((values > NOVEL_PERCENTILE).mean()) if len(values) else None


def warning(share: float, total: int) -> str:
    """The paragraph predict prints when most inputs are novel."""
    return (
        f"warning: {100 * share:.0f} % of the {total} locations lie farther from the training "
        f"split than {NOVEL_PERCENTILE:.0f} % of its own locations do (novelty > "
        f"{NOVEL_PERCENTILE:.0f}): these photos are unlike what the model was trained on, so "
        "the errors measured at its test and its confidence radii will not hold for them; "
        "expect larger errors, and train on photos like these to trust the answers."
    )
