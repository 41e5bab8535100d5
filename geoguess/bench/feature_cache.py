"""Section `feature_cache`: epochs of a frozen pretrained backbone without / with the feature
cache (real `geoguess.train` runs), and the frozen pass's speed in float32, channels-last and
bf16 (`frozen_pass`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from geoguess.bench.config import BenchConfig, BenchSettings
from geoguess.bench.timing import median_rate, seconds
from geoguess.models.backbones import create_backbone
from geoguess.models.feature_cache import BATCH_LOCATIONS
from geoguess.models.network import run_backbone


def run(cfg: BenchConfig) -> dict:
    """{epoch_seconds_*, val_km_*, speedup, frozen_pass: {...}}."""
    cfg.progress(f"feature cache ({cfg.settings.feature_cache_backbone}, frozen)")
    return bench_feature_cache(cfg.settings, cfg.work)


def bench_feature_cache(settings: BenchSettings, work: Path) -> dict:
    """Epoch time of a frozen-backbone run without / with the feature cache (real
    `geoguess.train` runs on a generated set; the cache's one-time build is not an epoch)."""
    # The renderer loads here, not at the top: a bench without this section need not import it.
    from geoguess.synthetic import generate

    root = work / "feature-cache-data"
    if not (root / "data.csv").exists():
        size = max(64, settings.feature_cache_image_size // 2)
        generate(
            root,
            num_locations=settings.feature_cache_locations,
            seed=0,
            image_size=size,
            workers=2,
            progress=False,
        )
    epochs = settings.feature_cache_epochs
    overrides = [
        f"backbone={settings.feature_cache_backbone}",
        "unfreeze=frozen",
        "data=folder",
        f"data.root={root}",
        "data.split_by=hash",
        "data.augment=false",
        f"data.batch_size={settings.batch_size}",
        f"image.size={settings.feature_cache_image_size}",
        "logger=none",
        f"trainer.max_epochs={epochs}",
        "trainer.num_sanity_val_steps=0",
    ]
    figures = {}
    for name, cached in (("without", False), ("with", True)):
        out = work / f"feature-cache-run-{name}"
        command = [sys.executable, "-m", "geoguess.train", *overrides]
        command += [f"model.feature_cache={str(cached).lower()}", f"hydra.run.dir={out}"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"feature cache run failed: {done.stderr[-2000:]}")
        results = json.loads((out / "results.json").read_text())
        figures[f"epoch_seconds_{name}"] = results["train_seconds"] / epochs
        figures[f"val_km_{name}"] = results["val_haversine_km"]
    figures["speedup"] = figures["epoch_seconds_without"] / figures["epoch_seconds_with"]
    figures["frozen_pass"] = bench_frozen_pass(settings)
    return figures


FROZEN_PASSES = {  # name: (channels_last, bf16), as model.channels_last / model.frozen_precision
    "float32": (False, False),
    "channels_last": (True, False),
    "bf16_channels_last": (True, True),
}


def bench_frozen_pass(settings: BenchSettings) -> dict:
    """Images per second of a frozen backbone's pass (evaluation, the feature cache's build) in
    float32, channels-last, and channels-last bf16, on blocks of the feature cache's size, and
    bf16's error relative to float32. Random weights: the speed is the architecture's."""
    torch.manual_seed(0)
    backbone = create_backbone(
        settings.feature_cache_backbone, pretrained=False, pretrained_file=None, global_pool="avg"
    ).eval()
    size = settings.feature_cache_image_size
    images = torch.rand(4 * BATCH_LOCATIONS, 3, size, size) * 2 - 1
    figures, features = {}, {}
    for name, (channels_last, bf16) in FROZEN_PASSES.items():
        memory = torch.channels_last if channels_last else torch.contiguous_format
        net = backbone.to(memory_format=memory)

        def run(net=net, channels_last=channels_last, bf16=bf16) -> torch.Tensor:
            with torch.inference_mode():
                return run_backbone(net, images, channels_last, bf16).float()

        features[name] = run()  # the first pass also builds the kernels: not timed
        figures[f"{name}_images_per_s"] = median_rate(
            lambda run=run: len(images) / seconds(run), settings.repeats
        )
    exact = features["float32"]
    figures["bf16_relative_error"] = float(
        (features["bf16_channels_last"] - exact).norm() / exact.norm()
    )
    figures["speedup_bf16_channels_last"] = (
        figures["bf16_channels_last_images_per_s"] / figures["float32_images_per_s"]
    )
    return figures
