"""Shared by the server's tests: one tiny trained run per session, a folder of runs to serve,
and a real uvicorn server on loopback that stops by itself."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

from geoguess.serve.loadtest import server
from tests.cli import command_env
from tests.train_helpers import FAST, dataset, folder_data, run_training

# The tiny run's location under the session's base temp folder; trained once per session.
RUN_NAME = "tiny-run"


def trained_run(base: Path) -> Path:
    """A tiny finished run (`results.json` ok, `checkpoints/best-*.ckpt`) under `base`."""
    run = Path(base) / "serve-runs" / RUN_NAME
    if not (run / "results.json").exists():
        root = dataset(Path(base), num_locations=80, image_size=32)
        run_training([*FAST, *folder_data(root)], run)
    return run


def models_dir(base: Path) -> Path:
    """A folder of runs: the tiny run, a nested copy of it, a copy under a name that is not
    plain, a failed run and an unfinished one."""
    folder = Path(base) / "serve-models"
    if folder.exists():
        return folder
    run = trained_run(base)
    shutil.copytree(run, folder / RUN_NAME)
    shutil.copytree(run, folder / "sweep" / "0")
    shutil.copytree(run, folder / "not a plain name")  # finished, but its name is refused
    failed = folder / "failed-run"
    (failed / "checkpoints").mkdir(parents=True)
    (failed / "results.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    shutil.copy(next((run / "checkpoints").glob("best-*.ckpt")), failed / "checkpoints")
    (folder / "unfinished" / "checkpoints").mkdir(parents=True)
    return folder


@contextmanager
def live_server(models: Path, cwd: Path, *overrides: str, timeout: float = 180):
    """`python -m geoguess.serve` on a free loopback port until the block ends (start-up
    bounded by `timeout` seconds); yields (base URL, pid)."""
    with server(
        models,
        *overrides,
        start_timeout=timeout,
        log=Path(cwd) / "server.log",
        env=command_env(),
        cwd=cwd,
    ) as (url, pid):
        yield url, pid


def views_of(folder: Path) -> dict[str, tuple[str, bytes, str]]:
    """The four views of one location folder as multipart file fields."""
    return {
        h: (f"{h}.jpg", (folder / f"{h}.jpg").read_bytes(), "image/jpeg")
        for h in ("0", "90", "180", "270")
    }
