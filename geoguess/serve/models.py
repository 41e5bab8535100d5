"""The finished runs a server offers: found under `serve.models_dir`, named by their path
relative to it, each loaded once.

A run is a folder whose `results.json` says `"status": "ok"` and that holds
`checkpoints/best-*.ckpt`. Names come from the file system and requests name them back, so a
name holds only safe characters and is looked up in the table built at start-up: a request
never turns into a path.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from geoguess.errors import GeoguessError
from geoguess.predictor import Predictor
from geoguess.runs import CHECKPOINT_DIR, RESULTS_FILE

log = logging.getLogger(__name__)

# One or more path segments of letters, digits, `_`, `-`, `.`; none starting with a dot.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}){0,7}")
MAX_DEPTH = 8


@dataclass
class ServedModel:
    """A run offered by the server; `predictor` once loaded."""

    name: str
    checkpoint: Path
    info: dict
    predictor: object | None = field(default=None, repr=False)


def is_safe_name(name: str) -> bool:
    return bool(NAME.fullmatch(name)) and ".." not in name


def discover(models_dir: str | Path) -> dict[str, ServedModel]:
    """Every finished run under `models_dir`, by name (sorted)."""
    root = Path(models_dir).expanduser()
    if not root.is_dir():
        raise GeoguessError(f"serve.models_dir={root} is not a folder")
    found = {}
    for results_path in sorted(root.rglob(RESULTS_FILE)):
        run = results_path.parent
        name = run.relative_to(root).as_posix()
        if len(run.relative_to(root).parts) > MAX_DEPTH or not is_safe_name(name):
            log.warning("skipping %s: its name is not a plain run name", run)
            continue
        served = _served(run, name, results_path)
        if served is not None:
            found[name] = served
    return found


def _served(run: Path, name: str, results_path: Path) -> ServedModel | None:
    try:
        results = json.loads(results_path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("skipping %s: %s cannot be read (%s)", run, RESULTS_FILE, exc)
        return None
    if not isinstance(results, dict) or results.get("status") != "ok":
        return None
    checkpoints = sorted((run / CHECKPOINT_DIR).glob("best-*.ckpt"))
    if not checkpoints:
        return None
    config = _config(run)
    info = {
        "name": name,
        "backbone": _select(config, "backbone", "name"),
        "head": _select(config, "head", "kind") or _head_kind(_select(config, "head", "_target_")),
        "image_size": _select(config, "image", "size"),
        "classes": results.get("num_classes"),
        "test_km": results.get("test_haversine_km"),
        "trained": datetime.fromtimestamp(results_path.stat().st_mtime, timezone.utc).isoformat(
            timespec="seconds"
        ),
    }
    return ServedModel(name, checkpoints[-1], info)


def _config(run: Path) -> dict:
    try:
        config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def _select(config: dict, *keys: str):
    for key in keys:
        config = config.get(key) if isinstance(config, dict) else None
    return config


def _head_kind(target) -> str | None:
    """The head's kind in a run from before `head.kind` (its `_target_` named the class)."""
    if not isinstance(target, str):
        return None
    cls = target.rsplit(".", 1)[-1]
    return cls.removesuffix("Head").lower() or None


def load_all(
    models: dict[str, ServedModel],
    device: str,
    top_k: int,
    tta: str | None = None,
    refine: str | None = None,
) -> None:
    """Load each model's predictor once; a run that cannot be loaded is dropped, saying why."""
    for name in list(models):
        try:
            models[name].predictor = Predictor.from_checkpoint(
                models[name].checkpoint, device=device, tta=tta, refine=refine, top_k=top_k
            )
        except GeoguessError as exc:
            log.error("not serving %s: %s", name, exc)
            del models[name]
