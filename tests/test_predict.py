"""`geoguess.predict`: a checkpoint alone locates every folder of a dataset, or fails saying
which file is wrong; checkpoints are untrusted input."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from geoguess import inference
from geoguess.errors import GeoguessError
from geoguess.inference import predict
from geoguess.models.checkpoint import CheckpointError, load_network
from geoguess.predict import run
from tests.conftest import REPO_ROOT
from tests.data_helpers import truncate
from tests.train_helpers import FAST, composed, dataset, folder_data, run_cli, run_training


def predict_as_configured(checkpoint, root, **overrides):
    """`inference.predict` with the settings `geoguess.predict` gives it from conf/predict.yaml,
    `overrides` over them."""
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "predict.yaml")
    settings = {
        "batch_size": cfg.data.batch_size,
        "num_workers": cfg.data.num_workers,
        "device": cfg.device,
        "tta": cfg.tta,
        "refine": cfg.refine,
    }
    return predict(checkpoint, root, **{**settings, **overrides})


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return dataset(tmp_path_factory.getbasetemp(), num_locations=80, image_size=32)


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("trained")
    # Whole test split (no batch limit), so that every test location has a prediction to match.
    results = run_training(
        [*FAST, *folder_data(data_root), "trainer.limit_test_batches=null"], run_dir
    )
    return {"run": run_dir, **results}


def copy_dataset(source: Path, target: Path, n: int = 12) -> Path:
    """The first `n` locations of `source` (images and csv rows), without its cache."""
    frame = pd.read_csv(source / "data.csv", index_col=0).iloc[:n]
    for uuid in frame["uuid"]:
        shutil.copytree(source / "images" / uuid, target / "images" / uuid)
    frame.to_csv(target / "data.csv")
    return target


def predict_with(tmp_path: Path, checkpoint, root, output, *extra) -> Path:
    """`python -m geoguess.predict ...` in this process, in a fresh run folder (`checkpoint`
    None: the model is given in `extra`)."""
    model = [f"checkpoint={checkpoint}"] if checkpoint is not None else []
    overrides = [*model, f"data.root={root}", f"output={output}", *extra]
    run_dir = tmp_path / f"run-{len(list(tmp_path.glob('run-*')))}"
    with composed(overrides, run_dir, "predict") as cfg:
        return run(cfg)


def test_predictions_reproduce_the_test_predictions_of_training(trained, data_root):
    frame, failures = predict_as_configured(trained["best_checkpoint"], data_root, batch_size=16)
    assert not failures
    uuids = sorted(p.name for p in (data_root / "images").iterdir() if p.is_dir())
    assert sorted(frame["uuid"]) == uuids  # every folder, once
    tested = pd.read_csv(trained["run"] / "predictions_test.csv")
    merged = tested.merge(frame, on="uuid", suffixes=("_train", ""))
    assert len(merged) == len(tested) > 0
    # Same weights, same images (decoded on the fly instead of from the cache).
    assert np.allclose(merged["latitude"], merged["latitude_train"], atol=1e-5)
    assert np.allclose(merged["longitude"], merged["longitude_train"], atol=1e-5)
    assert np.allclose(merged["error_km"], merged["error_km_train"], atol=1e-2)


def test_train_and_predict_give_bit_identical_test_predictions_with_tta_and_refinement(
    data_root, tmp_path
):
    """The training run's test and `geoguess.predict` go through the one predictor: on the same
    checkpoint the test split's guesses and radii are the same bits, with mirror TTA and
    retrieval refinement on (predict takes both from the checkpoint: the run was tested so).

    The backbone's CPU kernels round a location's features a little differently in batches of
    other sizes or neighbours, so predict reads the test split alone, in the test's order and
    batch size, and training computes the features live (no feature cache)."""
    overrides = [*FAST, *folder_data(data_root), "trainer.limit_test_batches=null"]
    overrides += ["tta=mirror", "model.refine=knn", "trainer.max_epochs=2"]
    overrides += ["data.split_by=hash", "model.feature_cache=false"]
    results = run_training(overrides, tmp_path / "run")
    tested = pd.read_csv(tmp_path / "run" / "predictions_test.csv")
    assert len(tested) >= 8
    test_root = tmp_path / "test-split"
    rows = pd.read_csv(data_root / "data.csv", index_col=0).set_index("uuid")
    rows.loc[tested["uuid"]].reset_index().to_csv(test_root.mkdir() or test_root / "data.csv")
    for uuid in tested["uuid"]:
        shutil.copytree(data_root / "images" / uuid, test_root / "images" / uuid)
    output = tmp_path / "predicted.csv"
    predict_with(tmp_path, results["best_checkpoint"], test_root, output, "data.batch_size=8")
    predicted = pd.read_csv(output)
    assert predicted["uuid"].tolist() == tested["uuid"].tolist()
    for column in ("latitude", "longitude", "radius50_km", "radius90_km"):
        assert np.array_equal(predicted[column], tested[column]), column

    # Both settings were applied: without refinement the guesses move, and without TTA too.
    def latitudes(*changed: str) -> np.ndarray:
        out = tmp_path / f"other-{len(changed)}.csv"
        args = ("data.batch_size=8", *changed)
        return pd.read_csv(
            predict_with(tmp_path, results["best_checkpoint"], test_root, out, *args)
        )["latitude"].to_numpy()

    unrefined = latitudes("refine=none")
    assert not np.array_equal(unrefined, tested["latitude"])
    assert not np.array_equal(latitudes("refine=none", "tta=none"), unrefined)


def test_a_frozen_bf16_channels_last_model_predicts_as_it_tested(data_root, tmp_path):
    """The checkpoint records model.frozen_precision and model.channels_last: both change the
    backbone's numbers, so predict runs the passes as the test did."""
    settings = ["unfreeze=frozen", "model.frozen_precision=bf16", "model.channels_last=true"]
    overrides = [*FAST, *folder_data(data_root), "trainer.limit_test_batches=null", *settings]
    results = run_training(overrides, tmp_path)
    frame, failures = predict_as_configured(results["best_checkpoint"], data_root, batch_size=16)
    tested = pd.read_csv(tmp_path / "predictions_test.csv")
    merged = tested.merge(frame, on="uuid", suffixes=("_train", ""))
    assert not failures and len(merged) == len(tested) > 0
    assert np.allclose(merged["latitude"], merged["latitude_train"], atol=1e-5)
    assert np.allclose(merged["longitude"], merged["longitude_train"], atol=1e-5)
    # On a model this small both layouts round alike; on Lite0 at 224 px they move guesses by
    # up to 2 km, so the settings themselves must come back.
    network, _ = load_network(results["best_checkpoint"])
    assert network.spec.frozen_precision == "bf16" and network.uses_channels_last()


def test_cli_writes_coordinates_and_radii_and_prints_the_error(trained, data_root, tmp_path):
    output = tmp_path / "out" / "predictions.csv"
    args = [
        f"checkpoint={trained['best_checkpoint']}",
        f"data.root={data_root}",
        f"output={output}",
    ]
    done = run_cli("predict", args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = pd.read_csv(output)
    columns = ["uuid", "latitude", "longitude", "radius50_km", "radius90_km", "novelty"]
    assert list(frame.columns) == columns
    assert len(frame) == 80 and (frame["radius90_km"] >= frame["radius50_km"]).all()
    assert frame["novelty"].between(0, 100).all()
    assert "mean error" in done.stdout and " km" in done.stdout
    # Piped: a start line naming the checkpoint and settings, and progress lines, no bar.
    lines = done.stdout.splitlines()
    start = f"predicting 80 locations of {data_root} with {trained['best_checkpoint']}, "
    assert lines[0] == start + "tta=none (as tested), refine=none (as tested)"
    assert "predicted 80 / 80 locations (" in done.stdout
    assert "\r" not in done.stdout + done.stderr
    # The log file holds what was printed.
    (log,) = (tmp_path / "outputs" / "predict").glob("*/predict.log")
    logged = log.read_text()
    assert start in logged and f"wrote 80 predictions to {output}" in logged
    assert "mean error" in logged
    assert not list(output.parent.glob(".*.tmp"))  # the atomic write left nothing behind
    assert output.stat().st_mode & 0o777 == 0o644


def test_refuses_to_overwrite_unless_asked(trained, data_root, tmp_path):
    output = tmp_path / "predictions.csv"
    output.write_text("precious\n")
    with pytest.raises(GeoguessError, match="already exists; pass overwrite=true"):
        predict_with(tmp_path, trained["best_checkpoint"], data_root, output)
    assert output.read_text() == "precious\n"
    assert not (tmp_path / "run-0" / ".hydra").exists()  # refused: no run record
    predict_with(tmp_path, trained["best_checkpoint"], data_root, output, "overwrite=true")
    assert len(pd.read_csv(output)) == 80


def test_an_unreadable_view_fails_naming_it_or_is_skipped_and_listed(trained, data_root, tmp_path):
    root = copy_dataset(data_root, tmp_path / "data")
    folders = sorted((root / "images").iterdir())
    (folders[3] / "180.jpg").unlink()
    truncate(folders[5] / "90.jpg")
    output = tmp_path / "p.csv"
    with pytest.raises(GeoguessError) as error:
        predict_with(tmp_path, trained["best_checkpoint"], root, output)
    message = str(error.value)
    assert "2 of 12 locations cannot be predicted" in message
    assert f"{folders[3] / '180.jpg'}: missing or empty file" in message
    assert f"{folders[5] / '90.jpg'}: does not decode" in message
    assert not output.exists()  # a submission holds every location, or is not written
    predict_with(tmp_path, trained["best_checkpoint"], root, output, "on_invalid=skip")
    frame = pd.read_csv(output)
    assert len(frame) == 10 and not {folders[3].name, folders[5].name} & set(frame["uuid"])
    skipped = pd.read_csv(tmp_path / "p_skipped.csv")
    assert set(skipped["uuid"]) == {folders[3].name, folders[5].name}


def test_an_unwritable_output_fails_before_any_work(trained, data_root, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("predicted although the output cannot be written")

    monkeypatch.setattr(inference, "predict", no_work)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for output in (a_file / "sub" / "p.csv", tmp_path, Path("/proc/geoguess/p.csv")):
        with pytest.raises(GeoguessError, match="output="):
            predict_with(tmp_path, trained["best_checkpoint"], data_root, output)


def test_data_csv_is_optional(trained, data_root, tmp_path, capsys):
    root = copy_dataset(data_root, tmp_path / "data", n=5)
    (root / "data.csv").unlink()
    output = tmp_path / "p.csv"
    predict_with(tmp_path, trained["best_checkpoint"], root, output)
    frame = pd.read_csv(output)
    assert len(frame) == 5 and frame[["latitude", "longitude"]].notna().all().all()
    assert "mean error" not in capsys.readouterr().out


def test_bad_checkpoints_get_one_plain_message(trained, data_root, tmp_path):
    last = trained["run"] / "checkpoints" / "last.ckpt"
    assert len(predict_as_configured(last, data_root)[0]) == 80
    whole = last.read_bytes()
    files = {
        "missing.ckpt": None,
        "empty.ckpt": b"",
        "text.ckpt": b"this is not a checkpoint\n",
        "random.ckpt": np.random.default_rng(0).bytes(4096),
        "truncated.ckpt": whole[: len(whole) // 2],
    }
    for name, content in files.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    expected = {
        "missing.ckpt": "does not exist",
        "empty.ckpt": "is empty",
        "text.ckpt": "cannot be read",
        "random.ckpt": "cannot be read",
        "truncated.ckpt": "truncated or damaged",
        "foreign.ckpt": "not a checkpoint written by geoguess.train",
    }
    for name, pattern in expected.items():
        with pytest.raises(CheckpointError, match=pattern) as error:
            predict_as_configured(tmp_path / name, data_root)
        assert "weights_only" not in str(error.value) and "Traceback" not in str(error.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        predict_with(tmp_path, tmp_path / "missing.ckpt", data_root, tmp_path / "p.csv")
    assert not (tmp_path / "run-0" / ".hydra").exists()  # refused: no run record


class _Payload:
    """Unpickling it would write a file (a code-running pickle)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


def test_a_crafted_checkpoint_runs_nothing(trained, data_root, tmp_path):
    """A checkpoint is data: no stored `_target_` is instantiated, no pickle code runs."""
    checkpoint = torch.load(trained["best_checkpoint"], weights_only=True)
    marker = tmp_path / "written-by-the-checkpoint.npz"
    # 1. Every config node replaced by a file writer that Hydra's blocklist lets through.
    evil = {"_target_": "numpy.savez", "file": str(marker)}
    for key in ("backbone", "head", "model", "country", "grid"):
        checkpoint["geoguess"]["config"][key] = dict(evil)
    crafted = tmp_path / "crafted-config.ckpt"
    torch.save(checkpoint, crafted)
    frame, _ = predict_as_configured(
        crafted, data_root
    )  # the config is provenance, never instantiated
    assert len(frame) == 80 and not marker.exists()
    # 2. A model description naming something else than the suite's registries.
    for part, value in (
        (("spec", "backbone", "name"), "numpy.savez"),
        (("spec", "fusion"), "numpy.savez"),
        (("spec", "head", "kind"), "numpy.savez"),
    ):
        bad = torch.load(trained["best_checkpoint"], weights_only=True)
        node = bad["geoguess"]
        for key in part[:-1]:
            node = node[key]
        node[part[-1]] = value
        path = tmp_path / f"crafted-{'-'.join(part)}.ckpt"
        torch.save(bad, path)
        with pytest.raises(GeoguessError):
            predict_as_configured(path, data_root)
        assert not marker.exists()
    # 3. A pickle that would run code when loaded with weights_only=False.
    pickled = tmp_path / "pickle.ckpt"
    torch.save({"state_dict": {}, "geoguess": _Payload(str(marker))}, pickled)
    with pytest.raises(CheckpointError, match="refused"):
        predict_as_configured(pickled, data_root)
    assert not marker.exists()
    # The same refusal for a resumed training run.
    with pytest.raises(CheckpointError, match="refused"):
        run_training([*FAST, *folder_data(data_root), f"ckpt_path={pickled}"], tmp_path / "r")
    assert not marker.exists()


def test_checkpoint_zip_holds_no_code_objects(trained):
    """What the suite writes loads with weights_only=True (tensors and plain data)."""
    with zipfile.ZipFile(trained["best_checkpoint"]) as archive:
        names = archive.namelist()
    assert any(name.endswith("data.pkl") for name in names)
    buffer = io.BytesIO(Path(trained["best_checkpoint"]).read_bytes())
    assert "geoguess" in torch.load(buffer, weights_only=True)


def test_run_takes_its_best_checkpoint_and_exactly_one_model_is_given(
    trained, data_root, tmp_path, capsys
):
    root = copy_dataset(data_root, tmp_path / "data", n=6)
    output = tmp_path / "from-run.csv"
    predict_with(tmp_path, None, root, output, f"run={trained['run']}")
    printed = capsys.readouterr().out
    assert f"with {trained['best_checkpoint']}, tta=none (as tested)" in printed
    by_checkpoint = predict_with(tmp_path, trained["best_checkpoint"], root, tmp_path / "c.csv")
    assert pd.read_csv(output).equals(pd.read_csv(by_checkpoint))
    # The run folder moved: its best checkpoint is found under checkpoints/ by name; without
    # results.json (a run killed before its end), checkpoints/best-*.ckpt.
    moved = tmp_path / "moved"
    shutil.copytree(trained["run"], moved)
    best = Path(trained["best_checkpoint"]).name
    results = json.loads((moved / "results.json").read_text())
    results["best_checkpoint"] = f"/gone/checkpoints/{best}"
    (moved / "results.json").write_text(json.dumps(results))
    (moved / "checkpoints" / "best-epoch99.ckpt").write_bytes(b"")  # older, not named there
    os.utime(moved / "checkpoints" / "best-epoch99.ckpt", (0, 0))
    predict_with(tmp_path, None, root, tmp_path / "moved.csv", f"run={moved}")
    assert f"with {moved / 'checkpoints' / best}," in capsys.readouterr().out
    (moved / "results.json").unlink()
    predict_with(tmp_path, None, root, tmp_path / "killed.csv", f"run={moved}")
    assert f"with {moved / 'checkpoints' / best}," in capsys.readouterr().out
    refused = tmp_path / "refused"
    for extra, pattern in (
        ([], "no model was given: give the training run, run="),
        ([f"run={trained['run']}", f"checkpoint={trained['best_checkpoint']}"], "both given"),
        ([f"run={tmp_path / 'nowhere'}"], "is not a folder"),
        ([f"run={root}"], "holds no best checkpoint"),
    ):
        overrides = [f"data.root={root}", f"output={tmp_path / 'x.csv'}", *extra]
        with composed(overrides, refused, "predict") as cfg, pytest.raises(GeoguessError) as error:
            run(cfg)
        assert pattern in str(error.value) and not (refused / ".hydra").exists()
    assert not (tmp_path / "x.csv").exists()


def test_last_checkpoint_says_in_one_line_that_it_has_no_radii(
    trained, data_root, tmp_path, capsys
):
    root = copy_dataset(data_root, tmp_path / "data", n=4)
    output = tmp_path / "last.csv"
    predict_with(tmp_path, trained["run"] / "checkpoints" / "last.ckpt", root, output)
    assert list(pd.read_csv(output).columns) == ["uuid", "latitude", "longitude"]
    lines = [line for line in capsys.readouterr().out.splitlines() if "no calibration" in line]
    assert len(lines) == 1 and "run=" in lines[0] and "best checkpoint" in lines[0]


@pytest.mark.parametrize(
    "table, reason",
    [
        ("drop-longitude", "has no longitude column (its columns: uuid, latitude)"),
        ("other-uuids", "gives coordinates for none of the 4 predicted folders"),
    ],
)
def test_a_data_csv_that_cannot_score_says_why(trained, data_root, tmp_path, capsys, table, reason):
    root = copy_dataset(data_root, tmp_path / "data", n=4)
    frame = pd.read_csv(root / "data.csv", index_col=0)
    if table == "drop-longitude":
        frame = frame[["uuid", "latitude"]]
    else:
        frame["uuid"] = [f"other-{i}" for i in range(len(frame))]
    frame.to_csv(root / "data.csv", index=False)
    predict_with(tmp_path, trained["best_checkpoint"], root, tmp_path / "p.csv")
    printed = capsys.readouterr().out
    assert f"{root / 'data.csv'} {reason}: the predictions are not scored" in printed
    assert "mean error" not in printed
