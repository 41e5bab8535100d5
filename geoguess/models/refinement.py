"""What happens between the head's output and the final guess: test-time augmentation,
refinement by retrieval of similar training locations, and calibrated confidence radii."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geoguess.errors import GeoguessError

TTA = ("none", "mirror")
REFINE = ("none", "knn")
QUANTILES = (0.5, 0.9)


def mirror_views(images: torch.Tensor) -> torch.Tensor:
    """The panorama seen in a mirror: every view flipped left-right and the east (90°) and
    west (270°) views swapped, so that headings 0, 90, 180, 270 still go clockwise."""
    return images.flip(-1)[:, [0, 3, 2, 1]]


@dataclass
class Retrieval:
    """The training split's fused embeddings (L2-normalised), locations (m) and classes.

    A query moves to the similarity-weighted location of its `k` most similar training
    locations among those in its `cells` most probable classes (PIGEON's refinement,
    simplified).
    """

    embeddings: torch.Tensor  # [N, D] float32, unit norm
    xy: torch.Tensor  # [N, 2] float64 metres
    classes: torch.Tensor  # [N] int64
    k: int = 16
    cells: int = 3
    temperature: float = 0.05

    def __post_init__(self) -> None:
        if self.k < 1 or self.cells < 1 or not self.temperature > 0:
            raise GeoguessError("model.refine_k and refine_cells must be >= 1, temperature > 0")

    def refine(self, fused: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        """`[B, 2]` metres for the queries `fused` `[B, D]` with class probabilities `[B, C]`."""
        device = fused.device
        embeddings, xy, classes = (t.to(device) for t in (self.embeddings, self.xy, self.classes))
        query = torch.nn.functional.normalize(fused.float(), dim=-1)
        similarity = query @ embeddings.T  # [B, N]
        top = probabilities.topk(min(self.cells, probabilities.shape[-1]), dim=-1).indices
        allowed = (classes[None, :, None] == top[:, None, :]).any(-1)  # [B, N]
        similarity = similarity.masked_fill(~allowed, float("-inf"))
        best, index = similarity.topk(min(self.k, similarity.shape[-1]), dim=-1)
        weights = torch.softmax(best.double() / self.temperature, dim=-1)
        weights = torch.nan_to_num(weights)  # no candidate at all: all -inf
        refined = (weights[..., None] * xy[index]).sum(1)
        has_candidate = torch.isfinite(best[:, 0])
        return refined, has_candidate

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "embeddings": self.embeddings.cpu().numpy().astype(np.float32),
            "xy": self.xy.cpu().numpy(),
            "classes": self.classes.cpu().numpy(),
        }

    @classmethod
    def from_arrays(cls, arrays, **settings) -> Retrieval:
        return cls(
            torch.from_numpy(np.asarray(arrays["embeddings"], dtype=np.float32)),
            torch.from_numpy(np.asarray(arrays["xy"], dtype=np.float64)),
            torch.from_numpy(np.asarray(arrays["classes"], dtype=np.int64)),
            **settings,
        )


def radius_scale(errors_km: np.ndarray, raw_radii_km: np.ndarray) -> np.ndarray:
    """Per quantile q, the factor that makes the radii hold a share q of the truths:
    the q-quantile of error / raw radius over the validation locations."""
    ratios = np.asarray(errors_km)[:, None] / np.maximum(np.asarray(raw_radii_km), 1e-9)
    return np.array([np.quantile(ratios[:, i], q) for i, q in enumerate(QUANTILES)])


def extras_path(checkpoint) -> Path:
    """Where a format-2 checkpoint kept its inference extras: `best-epochNN.inference.npz`
    beside it (format 3 keeps them inside the checkpoint)."""
    return Path(checkpoint).with_suffix(".inference.npz")


def load_extras(checkpoint) -> tuple[tuple[float, float] | None, Retrieval | None]:
    """The calibration and retrieval index a format-2 checkpoint kept beside itself (None when
    absent)."""
    path = extras_path(checkpoint)
    if not path.is_file():
        return None, None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            scale = tuple(float(v) for v in arrays["radius_scale"])
            retrieval = None
            if "embeddings" in arrays:
                k, cells, temperature = arrays["refine_settings"]
                retrieval = Retrieval.from_arrays(
                    arrays, k=int(k), cells=int(cells), temperature=float(temperature)
                )
    except (OSError, ValueError, KeyError) as exc:
        raise GeoguessError(f"{path} cannot be read ({exc})") from None
    return scale, retrieval
