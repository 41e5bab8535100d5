"""`python -m geoguess.serve`: the runs under `serve.models_dir` behind an HTTP API and a map
page, with uvicorn (conf/serve.yaml; docs/serve.md)."""

from __future__ import annotations

import json
import os

import hydra
from omegaconf import DictConfig, OmegaConf

from geoguess.errors import GeoguessError
from geoguess.utils.cli import CONFIG_PATH, user_errors

SETTINGS_ENV = "GEOGUESS_SERVE_SETTINGS"
CPU_THREAD_WAITS = ("passive", "active")
# Keys of conf/serve.yaml for uvicorn or the process, not for the app's `Settings`.
PROCESS_KEYS = ("host", "port", "workers", "cpu_thread_wait")


@hydra.main(version_base="1.3", config_path="../" + CONFIG_PATH, config_name="serve")
@user_errors
def main(cfg: DictConfig) -> None:
    set_cpu_thread_wait(cfg.serve.cpu_thread_wait)
    run(cfg)


def set_cpu_thread_wait(wait: str | None) -> None:
    """`serve.cpu_thread_wait` as OMP_WAIT_POLICY, which OpenMP reads once, when torch first
    loads: so before anything imports torch (this module does not)."""
    if wait is None:
        return
    if wait not in CPU_THREAD_WAITS:
        raise GeoguessError(f"serve.cpu_thread_wait={wait!r}: one of passive, active, null")
    os.environ["OMP_WAIT_POLICY"] = wait.upper()


def settings_of(cfg: DictConfig):
    """`Settings` from `cfg.serve` (less `PROCESS_KEYS`: uvicorn's and the process's)."""
    # The app (torch, fastapi) loads here, not at the top: `--help` and a bad override answer
    # without it, and `serve.cpu_thread_wait` is set before torch loads.
    from geoguess.serve.app import Settings

    values = OmegaConf.to_container(cfg.serve, resolve=True)
    for key in PROCESS_KEYS:
        values.pop(key, None)
    unknown = sorted(set(values) - set(Settings.__dataclass_fields__))
    if unknown:
        raise GeoguessError(f"serve.{unknown[0]} is not a setting of the server")
    missing = sorted(set(Settings.__dataclass_fields__) - set(values))
    if missing:
        raise GeoguessError(f"serve.{missing[0]} is missing (conf/serve.yaml lists the keys)")
    if values.get("device") == "auto":
        import torch  # loaded by the app already; imported here to keep it off `--help`'s path

        values["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return Settings(**values)


def app_from_env():
    """The app of each worker process when `serve.workers` > 1 (uvicorn imports it by name)."""
    from geoguess.serve.app import Settings, create_app  # here, not at the top: see settings_of

    return create_app(Settings(**json.loads(os.environ[SETTINGS_ENV])))


def run(cfg: DictConfig) -> None:
    # uvicorn and the app load here, not at the top: `--help` answers without them.
    import uvicorn

    from geoguess.serve.app import create_app

    settings = settings_of(cfg)
    workers = int(cfg.serve.workers)
    if workers < 1:
        raise GeoguessError(f"serve.workers={workers}: at least 1")
    common = {"host": cfg.serve.host, "port": int(cfg.serve.port), "log_level": "info"}
    if workers == 1:
        uvicorn.run(create_app(settings), **common)
        return
    create_app(settings)  # refuses a bad models_dir here, before the workers start
    os.environ[SETTINGS_ENV] = json.dumps(settings.as_dict())
    uvicorn.run("geoguess.serve.__main__:app_from_env", factory=True, workers=workers, **common)


if __name__ == "__main__":
    main()
