"""Section `train_step`: a plain PyTorch training step of the suite's computation on the
present device, and Lightning's step against it in lock step (`lightning_overhead`)."""

from __future__ import annotations

import contextlib
import statistics
import time

import numpy as np
import torch
from torch import nn

from geoguess.bench.config import BenchConfig, BenchSettings
from geoguess.bench.timing import quiet, sync
from geoguess.models.backbones import create_backbone, feature_size


def run(cfg: BenchConfig) -> dict:
    """`{"<backbone>": {"<size>": {...}}, "lightning_overhead": ..., ...}`."""
    cfg.progress("training steps")
    result = bench_train_step(cfg.settings, cfg.device)
    result.update(bench_lightning_overhead(cfg.settings, cfg.device))
    return result


class BenchNet(nn.Module):
    """The training computation the suite runs: four views through one backbone, concatenated
    features, a linear classifier, cross-entropy (random weights, no download)."""

    def __init__(self, backbone: str, classes: int = 64) -> None:
        super().__init__()
        # Random weights and timm's usual pooling: the speed measured is the architecture's.
        self.backbone = create_backbone(
            backbone, pretrained=False, pretrained_file=None, global_pool="avg"
        )
        self.head = nn.Linear(4 * feature_size(self.backbone), classes)
        self.register_buffer("mean", torch.tensor([0.45, 0.45, 0.45]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, v = images.shape[:2]
        x = (images.flatten(0, 1).float() / 255.0 - self.mean) / self.std
        if images.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone(x).reshape(b, -1))

    def loss(self, batch: dict) -> torch.Tensor:
        logits = self(batch["images"])
        return nn.functional.cross_entropy(logits.float(), batch["class_id"])


def synthetic_batches(count: int, batch_size: int, size: int, device, classes: int = 64):
    """`count` batches of random uint8 views and class labels on `device`."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        images = torch.randint(0, 256, (batch_size, 4, 3, size, size), generator=generator)
        labels = torch.randint(0, classes, (batch_size,), generator=generator)
        batches.append({"images": images.to(torch.uint8).to(device), "class_id": labels.to(device)})
    return batches


def _autocast(device, precision: str):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def plain_loop_steps(net, optimizer, batches, device, precision: str) -> list[float]:
    """Seconds of each step of a plain PyTorch loop (start of one step to start of the next)."""
    net.train()
    stamps = []
    for batch in batches:
        sync(device)
        stamps.append(time.perf_counter())
        with _autocast(device, precision):
            loss = net.loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    stamps.append(time.perf_counter())
    return np.diff(stamps).tolist()


def median_step(steps: list[float], warmup: int) -> float:
    """The median step time after `warmup` steps: robust to a neighbour's burst of work."""
    return float(statistics.median(steps[warmup:]))


def bench_train_step(settings: BenchSettings, device) -> dict:
    """Samples/s of a plain training step of each of `train_backbones`, median after warm-up."""
    result = {}
    for backbone in settings.train_backbones:
        size = settings.train_image_size
        net = BenchNet(backbone).to(device)
        if _channels_last(settings, device):
            net = net.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
        batches = synthetic_batches(
            settings.warmup_steps + settings.train_steps, settings.train_batch_size, size, device
        )
        steps = plain_loop_steps(net, optimizer, batches, device, settings.precision)
        for _ in range(settings.repeats - 1):
            steps += plain_loop_steps(net, optimizer, batches, device, settings.precision)
        rate = settings.train_batch_size / median_step(steps, settings.warmup_steps)
        result.setdefault(backbone, {})[str(size)] = {
            "samples_per_s": rate,
            "images_per_s": 4 * rate,
            "batch_size": settings.train_batch_size,
        }
        del net, optimizer, batches
    return result


def _channels_last(settings: BenchSettings, device) -> bool:
    if settings.channels_last == "auto":
        return device.type == "cuda"
    return str(settings.channels_last).lower() in ("true", "1", "yes")


def bench_lightning_overhead(settings: BenchSettings, device) -> dict:
    """Step time of a Lightning `fit` / of a plain PyTorch loop, on the same tiny net, AdamW,
    batches and device, the first `warmup_steps` of each excluded.

    The two run in lock step: at the start of each Lightning step a callback runs one plain
    step of a second copy of the net on the same batch, timed on its own. A Lightning step is
    the time from one batch start to the next less that plain step, so it includes everything
    Lightning does around the step (fetching, hooks, logging). Each pair is measured within a
    second, so a neighbour's burst of work on a shared machine slows both alike; the figure is
    the median ratio over the pairs.
    """
    import lightning as L  # here, not at the top: a bench without this section need not load it

    size = settings.overhead_image_size
    steps = settings.warmup_steps + max(settings.train_steps, 20) * max(1, settings.repeats)
    batches = synthetic_batches(steps, settings.train_batch_size, size, torch.device("cpu"))
    precision = "bf16" if device.type == "cuda" else "fp32"

    class Module(L.LightningModule):
        def __init__(self, net) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch: dict, batch_idx: int):
            loss = self.net.loss(batch)
            self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["images"]))
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-4)

    class LockStep(L.Callback):
        def __init__(self) -> None:
            torch.manual_seed(0)
            self.net = BenchNet("tiny").to(device).train()
            self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=1e-4)
            self.stamps: list[float] = []
            self.plain: list[float] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            sync(device)
            self.stamps.append(time.perf_counter())
            self.plain.append(
                plain_loop_steps(self.net, self.optimizer, [batch], device, precision)[0]
            )

        def on_train_epoch_end(self, trainer, module) -> None:
            sync(device)
            self.stamps.append(time.perf_counter())

    torch.manual_seed(0)
    clock = LockStep()
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    torch.manual_seed(0)
    with quiet("lightning.pytorch", "lightning.fabric"):
        trainer.fit(Module(BenchNet("tiny")), train_dataloaders=_ListLoader(batches))
    plain = np.array(clock.plain)
    lightning = np.diff(clock.stamps) - plain
    keep = slice(settings.warmup_steps, None)
    return {
        "lightning_overhead": float(np.median(lightning[keep] / plain[keep])),
        "lightning_step_ms": float(np.median(lightning[keep])) * 1000,
        "plain_step_ms": float(np.median(plain[keep])) * 1000,
        "overhead_image_size": size,
    }


class _ListLoader:
    """The same list of batches for Lightning (an iterable with a length)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
