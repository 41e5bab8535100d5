"""The one predictor: a trained network and its fitted extras turned into answers.

Test-time augmentation, refinement by retrieval, calibrated confidence radii, snapping onto land
and the likeliest cells all happen here, and only here: the training run's test, `python -m
geoguess.predict` and the server call `Predictor` and nothing else, so that they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geoguess.errors import GeoguessError
from geoguess.geo import haversine_km
from geoguess.models.checkpoint import load_network
from geoguess.models.network import GeoNetwork
from geoguess.models.refinement import QUANTILES, Retrieval, mirror_views, radius_scale
from geoguess.models.spec import InferenceSpec
from geoguess.novelty import NoveltyReference

TOP_K = 5


@dataclass
class InferenceExtras:
    """What is fitted after training on the best weights: the radii's calibration (validation
    split), the retrieval index (training split, with refinement by knn) and the novelty
    reference (training split)."""

    radius_scale: tuple[float, float] | None = None
    retrieval: Retrieval | None = None
    novelty: NoveltyReference | None = None

    def to_checkpoint(self) -> dict:
        """Plain values and tensors (read back with `torch.load(weights_only=True)`)."""
        entry: dict = {"radius_scale": list(self.radius_scale) if self.radius_scale else None}
        if self.retrieval is not None:
            entry["retrieval"] = {
                "embeddings": self.retrieval.embeddings.detach().cpu().float().contiguous(),
                "xy": self.retrieval.xy.detach().cpu().double().contiguous(),
                "classes": self.retrieval.classes.detach().cpu().long().contiguous(),
            }
        if self.novelty is not None:
            entry["novelty"] = self.novelty.to_checkpoint()
        return entry

    @classmethod
    def from_checkpoint(cls, entry, inference: InferenceSpec) -> InferenceExtras:
        if entry is None:
            return cls()
        try:
            scale = entry.get("radius_scale")
            scale = (float(scale[0]), float(scale[1])) if scale is not None else None
            arrays = entry.get("retrieval")
            retrieval = None
            if arrays is not None:
                retrieval = Retrieval(
                    arrays["embeddings"].float(),
                    arrays["xy"].double(),
                    arrays["classes"].long(),
                    k=inference.refine_k,
                    cells=inference.refine_cells,
                    temperature=inference.refine_temperature,
                )
            novelty = entry.get("novelty")
            novelty = NoveltyReference.from_checkpoint(novelty) if novelty is not None else None
        except (AttributeError, KeyError, TypeError, IndexError, ValueError) as exc:
            raise GeoguessError(f"the checkpoint's inference extras are damaged ({exc})") from None
        return cls(scale, retrieval, novelty)


class Predictor:
    """Guesses of a `GeoNetwork` as its run was tested: `inference` says how (TTA, refinement),
    `extras` holds the calibration and the retrieval index."""

    def __init__(
        self,
        network: GeoNetwork,
        inference: InferenceSpec | None = None,
        extras: InferenceExtras | None = None,
        top_k: int = TOP_K,
    ) -> None:
        self.network = network
        self.inference = inference or InferenceSpec.plain()
        self.extras = extras or InferenceExtras()
        self.top_k = int(top_k)
        if self.inference.refine == "knn" and not hasattr(network.head, "class_probabilities"):
            raise GeoguessError(
                "model.refine=knn looks in the likeliest cells: a classification "
                "or hybrid head, not head=regression"
            )
        self._place_extras()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "cpu",
        tta: str | None = None,
        refine: str | None = None,
        top_k: int = TOP_K,
    ) -> Predictor:
        """The predictor of a checkpoint, on `device`, with the TTA and refinement the run was
        tested with unless `tta` / `refine` say otherwise."""
        network, stored = load_network(path, device)
        inference = stored.inference.replace(tta=tta, refine=refine)
        extras = InferenceExtras.from_checkpoint(stored.extras, inference)
        if inference.refine == "knn" and extras.retrieval is None:
            raise GeoguessError(
                f"refine=knn needs the training split's embeddings, kept in the checkpoints of "
                f"a run trained with model.refine=knn; {path} has none"
            )
        return cls(network, inference, extras, top_k)

    @property
    def image_size(self) -> int:
        return int(self.fitted.image_size)

    @property
    def fitted(self):
        return self.network.fitted

    @property
    def calibrated(self) -> bool:
        return self.extras.radius_scale is not None

    def _place_extras(self) -> None:
        """The index and the novelty reference on the network's device once, not copied to it
        on every batch."""
        device = self.network.device
        if self.extras.novelty is not None:
            self.extras.novelty.to(device)
        retrieval = self.extras.retrieval
        if retrieval is not None:
            retrieval.embeddings = retrieval.embeddings.to(device)
            retrieval.xy = retrieval.xy.to(device)
            retrieval.classes = retrieval.classes.to(device)

    # -- guesses --------------------------------------------------------------------------------

    @torch.no_grad()
    def guess(
        self,
        images: torch.Tensor,
        features: torch.Tensor | None = None,
        tta: bool = True,
        refine: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Per location, on the network's device: `xy` (metres, before snapping), `radius50`
        and `radius90` (km; calibrated once the extras are fitted), `output` (the head's raw
        output on the images as given), `fused` (their fused features) and `novelty` (their
        percentile among the training split's distances, `geoguess.novelty`; NaN before the
        extras are fitted).

        `images` uint8 `[B, 4, 3, S, S]`; `features`: the backbone's cached per-view features of
        the same images, used instead of a backbone pass on them (never for the mirrored views).
        """
        network = self.network
        head = network.head
        fused = network.embed(images, features)
        output = head(network.neck(fused))
        xy = head.to_projected(output)
        if tta and self.inference.tta == "mirror":
            xy = (xy + head.to_projected(network(mirror_views(images)))) / 2
        retrieval = self.extras.retrieval
        if refine and self.inference.refine == "knn" and retrieval is not None:
            refined, found = retrieval.refine(fused, head.class_probabilities(output))
            xy = torch.where(found[:, None], refined, xy)
        scale = self.extras.radius_scale or (1.0, 1.0)
        r50, r90 = (head.spread_km(output, xy, q) * scale[i] for i, q in enumerate(QUANTILES))
        # Each quantile is scaled on its own: keep the 90 % circle around the 50 % one.
        radius90 = torch.maximum(r90, r50)
        novelty = self.extras.novelty
        novelty = (
            novelty.percentile(fused)
            if novelty is not None
            else torch.full((len(xy),), torch.nan, device=xy.device)
        )
        return {
            "xy": xy,
            "radius50": r50,
            "radius90": radius90,
            "output": output,
            "fused": fused,
            "novelty": novelty,
        }

    def decode(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Latitude, longitude and whether each guess was snapped onto land."""
        return self.network.head.decode(np.asarray(xy, dtype=np.float64))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """The answers for `images` (uint8 `[B, 4, 3, S, S]`, views 0, 90, 180, 270), one row
        per location: latitude, longitude, radius50_km and radius90_km (NaN when the checkpoint
        has no calibration), snapped, novelty (0-100; NaN when the checkpoint has no novelty
        reference), and the `top_k` likeliest cells (ids, probabilities and
        points; no columns for a regression head)."""
        guess = self.guess(images.to(self.network.device))
        lat, lon, snapped = self.decode(guess["xy"].cpu().numpy())
        radii = torch.stack([guess["radius50"], guess["radius90"]], -1).cpu().numpy()
        if not self.calibrated:
            radii = np.full_like(radii, np.nan)
        answers = {
            "latitude": lat,
            "longitude": lon,
            "radius50_km": radii[:, 0].astype(np.float64),
            "radius90_km": radii[:, 1].astype(np.float64),
            "snapped": np.asarray(snapped, dtype=bool),
            "novelty": guess["novelty"].cpu().numpy().astype(np.float64),
        }
        return {**answers, **self.top_cells(guess["output"])}

    def top_cells(self, output: torch.Tensor) -> dict[str, np.ndarray]:
        head = self.network.head
        if not hasattr(head, "class_probabilities"):
            empty = np.zeros((len(output), 0))
            return {
                "top_cells": empty.astype(np.int64),
                "top_probabilities": empty.astype(np.float32),
                "top_cell_latitude": empty,
                "top_cell_longitude": empty,
            }
        probabilities = head.class_probabilities(output)
        k = min(self.top_k, probabilities.shape[-1])
        top = probabilities.topk(k, dim=-1)
        points = head.class_latlon[top.indices].cpu().numpy()
        return {
            "top_cells": top.indices.cpu().numpy().astype(np.int64),
            "top_probabilities": top.values.float().cpu().numpy(),
            "top_cell_latitude": points[..., 0],
            "top_cell_longitude": points[..., 1],
        }

    # -- fitting the extras -----------------------------------------------------------------------

    @torch.no_grad()
    def fit_extras(
        self,
        train_batches: Iterable[dict],
        val_batches: Iterable[dict],
        features_of: Callable[[dict], torch.Tensor | None] = lambda batch: None,
    ) -> InferenceExtras:
        """On the current weights: the novelty reference and (with refinement by knn) the
        retrieval index of the training split, then the radii's calibration on the validation
        split's errors, guessed as at test (TTA and refinement on). `features_of(batch)`:
        cached backbone features, if any."""
        self.extras = InferenceExtras()
        parts = self._collect(train_batches, features_of, embed=True)
        if parts:
            self.extras.novelty = NoveltyReference.fit(parts["fused"])
        if self.inference.refine == "knn":
            self.extras.retrieval = Retrieval(
                torch.nn.functional.normalize(parts["fused"], dim=-1),
                torch.from_numpy(self.fitted.targets.project(*parts["latlon"].T.numpy())),
                parts["class_id"],
                k=self.inference.refine_k,
                cells=self.inference.refine_cells,
                temperature=self.inference.refine_temperature,
            )
        self._place_extras()
        parts = self._collect(val_batches, features_of)
        lat, lon, _ = self.network.head.decode(parts["xy"].numpy())
        errors = haversine_km(lat, lon, *parts["latlon"].T.numpy())
        raw = torch.stack([parts["radius50"], parts["radius90"]], dim=-1).numpy()
        self.extras.radius_scale = tuple(float(v) for v in radius_scale(errors, raw))
        return self.extras

    def _collect(self, batches, features_of, embed: bool = False) -> dict[str, torch.Tensor]:
        """The guesses (and with `embed`, fused features) over `batches`, on the CPU."""
        device = self.network.device
        collected: dict[str, list] = {}
        for batch in batches:
            if not batch["uuid"]:
                continue
            # The index needs the fused features alone: no mirrored pass, no refinement.
            guess = self.guess(
                batch["images"].to(device), features_of(batch), tta=not embed, refine=not embed
            )
            values = {
                "xy": guess["xy"],
                "radius50": guess["radius50"],
                "radius90": guess["radius90"],
                "latlon": batch["latlon"],
                "class_id": batch["class_id"],
            }
            if embed:
                values["fused"] = guess["fused"].float()
            for key, value in values.items():
                collected.setdefault(key, []).append(value.cpu())
        return {key: torch.cat(value) for key, value in collected.items()}
