"""How the server's cross-request batching was chosen: the suite's asyncio queue against
LitServe, the same predictor and decoding behind both, driven by the same locust load.

    pip install --target /tmp/litpkgs --no-deps litserve   # not a dependency of the suite
    PYTHONPATH=/tmp/litpkgs python experiments/serve_litserve.py RUNS_DIR RUN VIEWS \
        [--clients 32] [--requests 300] [--rounds 2]

RUNS_DIR holds the finished run RUN (as `make bench ARGS='bench.sections=[serve]'` trains
them); VIEWS a folder with 0.jpg, 90.jpg, 180.jpg, 270.jpg. `--no-deps` keeps uvloop and
httptools (LitServe's uvicorn[standard]) out, so both servers run on the same uvicorn. Prints
one JSON line per server and round (interleaved), as `geoguess.serve.loadtest.drive` measures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import litserve as ls
import numpy as np
import torch

from geoguess.predictor import Predictor
from geoguess.serve.app import _answer
from geoguess.serve.loadtest import drive, free_port, server
from geoguess.serve.uploads import FIELDS, Limits, location_from_fields

ROOT = Path(__file__).resolve().parents[1]


LIMITS = Limits(max_image_bytes=10_000_000, max_pixels=40_000_000, max_zip_locations=1)


class GeoAPI(ls.LitAPI):
    """LitServe over the suite's Predictor and upload decoding."""

    def __init__(self, checkpoint: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.checkpoint = checkpoint

    def setup(self, device):
        self.predictor = Predictor.from_checkpoint(
            self.checkpoint, device="cpu", tta=None, refine=None, top_k=5
        )

    def decode_request(self, request):  # LitServe passes the parsed multipart form
        files = {f: request[f].file.read() for f in FIELDS}
        return location_from_fields(files, self.predictor.image_size, LIMITS)

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, images):
        return self.predictor.predict(torch.from_numpy(images))

    def unbatch(self, rows):
        count = len(rows["latitude"])
        return [{k: v[i : i + 1] for k, v in rows.items()} for i in range(count)]

    def encode_response(self, rows):
        return _answer("lit", rows)


def lit_server(checkpoint: Path, path: str, port: int, max_batch: int, wait_ms: float) -> None:
    api = GeoAPI(
        str(checkpoint), max_batch_size=max_batch, batch_timeout=wait_ms / 1000, api_path=path
    )
    ls.LitServer(api, accelerator="cpu", workers_per_device=1).run(
        port=port, generate_client_file=False
    )


@contextmanager
def lit(checkpoint: Path, path: str, max_batch: int, wait_ms: float):
    port = free_port()
    command = [
        sys.executable,
        __file__,
        "--serve-lit",
        str(checkpoint),
        path,
        str(port),
        str(max_batch),
        str(wait_ms),
    ]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    # Its own process group: LitServe's inference workers must end with it.
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("LitServe did not start")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def main() -> None:
    if sys.argv[1:2] == ["--serve-lit"]:
        checkpoint, path, port, max_batch, wait_ms = sys.argv[2:7]
        lit_server(Path(checkpoint), path, int(port), int(max_batch), float(wait_ms))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", type=Path)
    parser.add_argument("run")
    parser.add_argument("views", type=Path)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5)
    args = parser.parse_args()
    checkpoint = next((args.runs / args.run / "checkpoints").glob("best-*.ckpt"))
    path = f"/models/{args.run}/predict"
    batching = [f"serve.max_batch={args.max_batch}", f"serve.max_wait_ms={args.max_wait_ms}"]
    for round_ in range(args.rounds):
        with server(args.runs, *batching) as (url, _):
            drive(url, args.run, args.views, args.clients, 20, 120)  # warm-up
            ours = drive(url, args.run, args.views, args.clients, args.requests, 600)
        print(json.dumps({"round": round_, "server": "geoguess (asyncio queue)", **ours}))
        with lit(checkpoint, path, args.max_batch, args.max_wait_ms) as url:
            drive(url, args.run, args.views, args.clients, 20, 120)
            theirs = drive(url, args.run, args.views, args.clients, args.requests, 600)
        print(json.dumps({"round": round_, "server": "LitServe", **theirs}), flush=True)


if __name__ == "__main__":
    main()
