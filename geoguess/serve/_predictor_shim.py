"""A stand-in for `geoguess.predictor.Predictor` until it lands: the same interface over
`load_for_inference`, `inference.configure`, the module's `guess()` and `head.decode()`.

Every other module of `geoguess.serve` imports `Predictor` from here only, so the real one
replaces this file by changing that one import.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class Predictor:
    """One checkpoint, ready to locate batches of four views."""

    def __init__(self, model, image_size: int, top_k: int) -> None:
        self.model = model
        self.image_size = int(image_size)
        self.top_k = int(top_k)
        self.device = next(model.parameters()).device

    @classmethod
    def from_checkpoint(
        cls,
        path,
        device: str = "cpu",
        tta: str | None = None,
        refine: str | None = None,
        top_k: int = 5,
    ) -> Predictor:
        """The checkpoint's model; `tta`/`refine` None: as the run was tested."""
        from omegaconf import OmegaConf

        from geoguess.inference import configure
        from geoguess.models.checkpoint import load_for_inference, read_checkpoint
        from geoguess.models.module import CHECKPOINT_KEY

        config = OmegaConf.create(read_checkpoint(path)[CHECKPOINT_KEY].get("config") or {})
        if tta is None:
            tta = OmegaConf.select(config, "tta", default="none") or "none"
        if refine is None:
            refine = OmegaConf.select(config, "model.refine", default="none") or "none"
        model, fitted = load_for_inference(path, device)
        configure(model, Path(path), tta, refine)
        return cls(model, fitted.image_size, top_k)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """One row per location of `images` (uint8 `[B, 4, 3, S, S]`)."""
        model, head = self.model, self.model.head
        images = images.to(self.device)
        fused = model.embed(images)
        output = head(model.neck(fused))
        guess = model.guess(images, fused=fused, output=output)
        lat, lon, snapped = head.decode(guess["xy"].cpu().numpy())
        b = len(lat)
        if model.radius_scale is not None:
            r50 = guess["radius50"].double().cpu().numpy()
            r90 = guess["radius90"].double().cpu().numpy()
        else:
            r50 = r90 = np.full(b, np.nan)
        rows = {
            "latitude": np.asarray(lat, dtype=np.float64),
            "longitude": np.asarray(lon, dtype=np.float64),
            "radius50_km": r50,
            "radius90_km": r90,
            "snapped": np.asarray(snapped, dtype=bool),
        }
        if hasattr(head, "class_probabilities"):
            k = min(self.top_k, head.num_classes)
            probabilities, cells = head.class_probabilities(output).topk(k, dim=-1)
            latlon = head.class_latlon[cells].cpu().numpy()
            rows["top_cells"] = cells.cpu().numpy().astype(np.int64)
            rows["top_probabilities"] = probabilities.float().cpu().numpy()
            rows["top_cell_latitude"], rows["top_cell_longitude"] = latlon[..., 0], latlon[..., 1]
        else:
            rows["top_cells"] = np.zeros((b, 0), dtype=np.int64)
            rows["top_probabilities"] = np.zeros((b, 0), dtype=np.float32)
            rows["top_cell_latitude"] = np.zeros((b, 0))
            rows["top_cell_longitude"] = np.zeros((b, 0))
        return rows
