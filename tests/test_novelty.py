"""The novelty score: how unlike the training split a location looks, and predict's warning
when most inputs are unlike it (errors and radii measured at test do not hold for them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from geoguess.novelty import NoveltyReference, novel_share
from geoguess.predict import run
from tests.train_helpers import FAST, composed, dataset, folder_data, run_training

REAL_SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real-sample"
WARNING = "lie farther from the training split than 95 % of its own locations do"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    root = dataset(tmp_path_factory.getbasetemp(), num_locations=80, image_size=32)
    run_dir = tmp_path_factory.mktemp("novelty-run")
    results = run_training([*FAST, *folder_data(root), "trainer.limit_test_batches=null"], run_dir)
    return {"run": run_dir, **results}


def predict_folder(trained: dict, root: Path, tmp_path: Path, capsys) -> tuple[pd.DataFrame, str]:
    """`python -m geoguess.predict run=RUN data.root=ROOT`: the CSV, and what went to stderr."""
    output = tmp_path / "predictions.csv"
    overrides = [f"run={trained['run']}", f"data.root={root}", f"output={output}"]
    with composed(overrides, tmp_path / "predict-run", "predict") as cfg:
        run(cfg)
    printed = capsys.readouterr()
    return pd.read_csv(output), printed.err


def noise_dataset(root: Path, n: int = 12, size: int = 64) -> Path:
    """`n` locations of uniform noise views, without data.csv."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "images" / f"noise-{i:02d}"
        folder.mkdir(parents=True)
        for view in (0, 90, 180, 270):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{view}.jpg")
    return root


def test_reference_percentiles_match_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(60, 8, generator=generator).abs()  # one orthant, like ReLU features
    reference = NoveltyReference.fit(train, k=3)
    # The reference keeps unit rows rounded to float16, as the checkpoint stores them.
    unit = torch.nn.functional.normalize(train, dim=-1).half().double()
    distances = 1 - torch.nn.functional.normalize(unit, dim=-1) @ unit.T
    loo = []
    for i in range(len(unit)):
        others = np.delete(distances[i].numpy(), i)
        loo.append(np.sort(others)[:3].mean())
    assert np.allclose(reference.distances.numpy(), np.sort(loo), atol=1e-5)
    query = torch.randn(5, 8, generator=generator).abs()
    q = torch.nn.functional.normalize(query.double(), dim=-1)
    direct = np.sort((1 - q @ unit.T).numpy(), axis=1)[:, :3].mean(axis=1)
    expected = [100 * np.mean(np.sort(loo) <= d + 1e-7) for d in direct]
    assert np.allclose(reference.percentile(query).numpy(), expected, atol=100 / 60 + 1e-6)
    # A training row itself lies at distance 0 to its own copy: novelty well below 95.
    assert (reference.percentile(train[:5]) < 50).all()
    # The opposite orthant: beyond every training distance.
    assert (reference.percentile(-train[:3]) == 100).all()
    restored = NoveltyReference.from_checkpoint(reference.to_checkpoint())
    assert torch.equal(restored.percentile(query), reference.percentile(query))
    assert novel_share([10.0, 96.0, np.nan, 99.0]) == pytest.approx(2 / 3)
    assert novel_share([np.nan]) is None


def test_a_checkpoint_keeps_the_reference_and_the_run_reports_the_novel_share(trained):
    checkpoint = torch.load(trained["best_checkpoint"], weights_only=True)
    novelty = checkpoint["geoguess"]["extras"]["novelty"]
    assert novelty["features"].dtype == torch.float16 and novelty["k"] == 5
    assert len(novelty["features"]) == len(novelty["distances"]) == trained["split_sizes"]["train"]
    tested = pd.read_csv(trained["run"] / "predictions_test.csv")
    assert 0 <= trained["test_novel_share"] < 0.5 and len(tested)


def test_warns_on_noise_images(trained, tmp_path, capsys):
    frame, err = predict_folder(trained, noise_dataset(tmp_path / "noise"), tmp_path, capsys)
    assert list(frame.columns)[-1] == "novelty"
    assert (frame["novelty"] > 95).mean() > 0.5
    assert WARNING in err and "will not hold" in err


@pytest.mark.skipif(not REAL_SAMPLE.is_dir(), reason="no ../shared/data/real-sample")
def test_real_photos_get_a_novelty_column_and_the_warning_follows_it(trained, tmp_path, capsys):
    frame, err = predict_folder(trained, REAL_SAMPLE, tmp_path, capsys)
    columns = ["uuid", "latitude", "longitude", "radius50_km", "radius90_km", "novelty"]
    assert list(frame.columns) == columns and len(frame) == 100
    assert frame["novelty"].between(0, 100).all()
    assert (WARNING in err) == ((frame["novelty"] > 95).mean() > 0.5)


@pytest.fixture(scope="module")
def trained_pretrained(tmp_path_factory) -> dict:
    """The shipped pretrained Lite0, frozen, on 120 embedded locations at 64 px: features that
    see what a photograph is (the tiny CNN barely trained does not tell them apart)."""
    root = dataset(tmp_path_factory.getbasetemp(), num_locations=120, image_size=64)
    run_dir = tmp_path_factory.mktemp("novelty-pretrained")
    overrides = [*FAST, *folder_data(root), "trainer.limit_test_batches=null"]
    overrides += ["backbone=efficientnet_lite0", "unfreeze=frozen", "image.size=64"]
    results = run_training([*overrides, "trainer.max_epochs=2"], run_dir)
    return {"run": run_dir, **results}


@pytest.mark.slow
@pytest.mark.skipif(not REAL_SAMPLE.is_dir(), reason="no ../shared/data/real-sample")
def test_a_model_of_the_embedded_world_warns_on_real_photos_not_on_its_own(
    trained_pretrained, tmp_path, capsys
):
    frame, err = predict_folder(trained_pretrained, REAL_SAMPLE, tmp_path / "real", capsys)
    assert (frame["novelty"] > 95).mean() > 0.5
    assert WARNING in err and "radii will not hold" in err
    held_out = dataset(tmp_path, num_locations=40, image_size=64, seed=7)
    frame, err = predict_folder(trained_pretrained, held_out, tmp_path / "embedded", capsys)
    assert len(frame) == 40 and (frame["novelty"] > 95).mean() < 0.5
    assert WARNING not in err


def test_quiet_on_held_out_embedded_locations(trained, tmp_path, capsys):
    held_out = dataset(tmp_path, num_locations=40, image_size=32, seed=7)
    frame, err = predict_folder(trained, held_out, tmp_path, capsys)
    assert len(frame) == 40 and (frame["novelty"] > 95).mean() < 0.5
    assert WARNING not in err and "warning" not in err
