"""`geoguess.serve`: the runs of a folder behind HTTP, answering as `geoguess.predict` does,
refusing what it cannot use with a 4xx naming the field and why."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import shutil
import struct
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from omegaconf import OmegaConf

from geoguess.serve.__main__ import settings_of
from geoguess.serve.app import Settings, create_app
from geoguess.serve.batching import Batcher
from tests.conftest import REPO_ROOT
from tests.serve_helpers import RUN_NAME, models_dir, views_of
from tests.train_helpers import composed, run_cli

LOCATIONS = 3


def serve_settings(**overrides) -> Settings:
    """conf/serve.yaml's settings (the one place of their defaults), `overrides` over them."""
    return dataclasses.replace(
        settings_of(OmegaConf.load(REPO_ROOT / "conf" / "serve.yaml")), **overrides
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return models_dir(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def client(models):
    with TestClient(create_app(serve_settings(models_dir=str(models)))) as client:
        deadline = time.monotonic() + 120
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, client.get("/health").json()
            time.sleep(0.2)
        yield client


@pytest.fixture(scope="module")
def sample(real_sample_dir, tmp_path_factory) -> Path:
    """A dataset folder holding the first few real locations."""
    root = tmp_path_factory.mktemp("sample")
    for folder in sorted((real_sample_dir / "images").iterdir())[:LOCATIONS]:
        shutil.copytree(folder, root / "images" / folder.name)
    return root


@pytest.fixture(scope="module")
def real_sample_dir():
    from tests.conftest import REAL_SAMPLE

    if not (REAL_SAMPLE / "data.csv").exists():
        pytest.skip(f"real sample not present at {REAL_SAMPLE}")
    return REAL_SAMPLE


def test_models_lists_the_finished_runs_by_name(client):
    listed = client.get("/models").json()
    assert [m["name"] for m in listed] == ["sweep/0", RUN_NAME]  # not failed-run, unfinished
    tiny = client.get(f"/models/{RUN_NAME}").json()
    assert tiny["backbone"] == "tiny" and tiny["head"] == "classification"
    assert tiny["classes"] > 1 and tiny["test_km"] > 0 and tiny["trained"].endswith("+00:00")
    assert client.get("/models/sweep/0").json()["name"] == "sweep/0"
    for name in ("failed-run", "unfinished", "nope"):
        response = client.get(f"/models/{name}")
        assert response.status_code == 404 and response.json()["field"] == "name"
    assert client.get("/health").json() == {"status": "ok", "models": 2}


def test_predict_answers_as_geoguess_predict_writes(client, models, sample, tmp_path):
    from geoguess.predict import run

    checkpoint = next((models / RUN_NAME / "checkpoints").glob("best-*.ckpt"))
    output = tmp_path / "predictions.csv"
    with composed(
        [f"checkpoint={checkpoint}", f"data.root={sample}", f"output={output}"],
        tmp_path / "run",
        "predict",
    ) as cfg:
        run(cfg)
    written = pd.read_csv(output).set_index("uuid")
    for uuid, row in written.iterrows():
        response = client.post(
            f"/models/{RUN_NAME}/predict", files=views_of(sample / "images" / uuid)
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        for key in ("latitude", "longitude", "radius50_km", "radius90_km"):
            assert answer[key] == pytest.approx(row[key], abs=1e-6), key
        probabilities = [c["probability"] for c in answer["top_cells"]]
        assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((sample / "images").rglob("*.jpg")):
            zf.write(path, path.relative_to(sample).as_posix())
    files = {"file": ("sample.zip", archive.getvalue(), "application/zip")}
    response = client.post(f"/models/{RUN_NAME}/predict-batch", files=files)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    batch = pd.read_csv(io.StringIO(response.text))
    assert list(batch.columns) == list(pd.read_csv(output).columns)
    assert batch["uuid"].tolist() == written.index.tolist()
    assert np.allclose(batch.iloc[:, 1:], written.to_numpy(), atol=1e-6)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels in a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def jpeg(size=(40, 30)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 160, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def four(**replace) -> dict:
    files = {h: (f"{h}.jpg", jpeg(), "image/jpeg") for h in ("0", "90", "180", "270")}
    files.update(replace)
    return {k: v for k, v in files.items() if v is not None}


CASES = {
    "missing view": (dict(files=four(**{"90": None})), 400, "90", "missing"),
    "extra field": (
        dict(files=four(extra=("x.jpg", jpeg(), "image/jpeg"))),
        400,
        "extra",
        "unexpected",
    ),
    "not an image": (
        dict(files=four(**{"180": ("a.jpg", b"hello world", "image/jpeg")})),
        400,
        "180",
        "not an image",
    ),
    "truncated jpeg": (
        dict(files=four(**{"0": ("a.jpg", jpeg((400, 300))[:700], "image/jpeg")})),
        400,
        "0",
        "does not decode",
    ),
    "decompression bomb": (
        dict(files=four(**{"270": ("b.png", png_header(8_000, 8_000), "image/png")})),
        413,
        "270",
        "refused before decoding",
    ),
    "empty file": (dict(files=four(**{"90": ("a.jpg", b"", "image/jpeg")})), 400, "90", "empty"),
    "text field": (
        dict(files=four(**{"0": None}), data={"0": "not a file"}),
        400,
        "0",
        "not a file",
    ),
    "json body": (dict(json={"0": "x"}), 415, "content-type", "multipart/form-data"),
    "empty body": (
        dict(content=b"", headers={"content-type": "multipart/form-data; boundary=x"}),
        400,
        "body",
        "empty",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_malformed_requests_get_a_4xx_naming_the_field(client, case):
    kwargs, status, field, words = CASES[case]
    response = client.post(f"/models/{RUN_NAME}/predict", **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field and words in body["error"]
    assert "Traceback" not in response.text


@pytest.mark.parametrize("name", ["../x", "..%2Fx", "a/../../etc", ".hidden", "nope"])
def test_unknown_or_path_like_model_names_are_refused(client, name):
    response = client.post(f"/models/{name}/predict", files=four())
    assert response.status_code in (400, 404) and response.json()["error"]


def test_a_good_request_after_bad_ones_still_answers(client):
    assert client.post(f"/models/{RUN_NAME}/predict", files=four()).status_code == 200
    assert client.get("/health").status_code == 200


class EchoPredictor:
    """A model whose latitude is each location's mean pixel: which rows came back to whom."""

    image_size = 2

    def __init__(self) -> None:
        self.batches: list[int] = []

    def predict(self, images):
        time.sleep(0.02)
        self.batches.append(len(images))
        mean = images.double().flatten(1).mean(1).numpy()
        return {"latitude": mean, "longitude": -mean}


def run_concurrently(max_batch: int, requests: int = 12) -> tuple[EchoPredictor, list, list]:
    predictor = EchoPredictor()

    async def main():
        batcher = Batcher(predictor, max_batch=max_batch, max_wait_ms=50)
        batcher.start()
        inputs = [np.full((1, 4, 3, 2, 2), i, dtype=np.uint8) for i in range(requests)]
        answers = await asyncio.gather(*(batcher.predict(x) for x in inputs))
        await batcher.stop()
        return answers

    answers = asyncio.run(main())
    return predictor, answers, list(range(requests))


def test_concurrent_requests_share_forward_passes_and_each_gets_its_own_rows():
    predictor, answers, expected = run_concurrently(max_batch=8)
    assert [a["latitude"].tolist() for a in answers] == [[float(i)] for i in expected]
    assert [a["longitude"].tolist() for a in answers] == [[-float(i)] for i in expected]
    assert sum(predictor.batches) == 12 and max(predictor.batches) == 8
    assert len(predictor.batches) < 12
    unbatched, answers, expected = run_concurrently(max_batch=1)
    assert unbatched.batches == [1] * 12
    assert [a["latitude"].tolist() for a in answers] == [[float(i)] for i in expected]


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


BATCH_CASES = {
    "not a zip": ({"file": ("a.zip", b"PK no zip", "application/zip")}, "not a zip archive"),
    "no layout": ({"file": ("a.zip", zipped({"x.jpg": jpeg()}), "application/zip")}, "no images/"),
    "a view missing": (
        {"file": ("a.zip", zipped({f"images/a/{h}.jpg": jpeg() for h in (0, 90, 180)}), "x")},
        "images/a/270.jpg is missing",
    ),
    "a broken view": (
        {
            "file": (
                "a.zip",
                zipped({f"images/a/{h}.jpg": jpeg() if h else b"oops" for h in (0, 90, 180, 270)}),
                "application/zip",
            )
        },
        "images/a/0.jpg: not an image",
    ),
    "wrong field": ({"zip": ("a.zip", zipped({}), "application/zip")}, "send exactly one field"),
}


@pytest.mark.parametrize("case", BATCH_CASES)
def test_malformed_batch_uploads_are_refused_naming_the_file(client, case):
    files, words = BATCH_CASES[case]
    response = client.post(f"/models/{RUN_NAME}/predict-batch", files=files)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"] and response.json()["field"] == "file"


def test_a_zip_over_the_location_limit_is_refused(models):
    settings = serve_settings(models_dir=str(models), max_zip_locations=2)
    members = {f"images/{u}/{h}.jpg": jpeg() for u in "abc" for h in (0, 90, 180, 270)}
    with TestClient(create_app(settings)) as limited:
        deadline = time.monotonic() + 120
        while limited.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        files = {"file": ("a.zip", zipped(members), "application/zip")}
        response = limited.post(f"/models/{RUN_NAME}/predict-batch", files=files)
    assert response.status_code == 413 and "more than 2 locations" in response.json()["error"]


@pytest.mark.slow
def test_the_command_refuses_a_missing_models_folder_in_one_line(tmp_path):
    done = run_cli("serve", [f"serve.models_dir={tmp_path / 'none'}"], cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: serve.models_dir={tmp_path / 'none'} is not a folder"
    assert list(tmp_path.iterdir()) == []  # wrote nothing
