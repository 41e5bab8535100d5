"""Reading checkpoints as untrusted input.

A checkpoint is read with `torch.load(weights_only=True)` (tensors and plain containers only)
and its model is rebuilt from plain values through the suite's registries
(`load_network`), never by instantiating a `_target_` stored in it: a crafted
checkpoint cannot make prediction or a resumed run call a function of its author's choosing.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from geoguess.data.fitted import FittedData, fit_settings
from geoguess.errors import GeoguessError
from geoguess.models.network import GeoNetwork
from geoguess.models.refinement import load_extras
from geoguess.models.schedulers import spans_the_run
from geoguess.models.spec import (
    CHECKPOINT_KEY,
    InferenceSpec,
    NetworkSpec,
    SpecError,
    migrate,
)
from geoguess.utils.io import atomic_write

# Format 2 recorded the settings its fit depended on in its config only: these (a checkpoint
# written since records them in its fitted data, `data.fitted.fit_settings`).
FIT_KEYS_OF_FORMAT_2 = (
    "country.boundary",
    "country.crs",
    "grid",
    "image.size",
    "data.split",
    "data.split_by",
    "data.spatial_gap_km",
    "data.spatial_block_km",
    "data.fraction",
)

# The optimisation a resume continues: its state (optimizer moments and rates, the scheduler's
# position, the unfreeze schedule) comes from the checkpoint, so a changed value here would be
# silently ignored; and a schedule laid out over trainer.max_epochs cannot be stretched.
TRAINING_KEYS = ("optimizer", "scheduler", "unfreeze")


class CheckpointError(GeoguessError):
    """A file that is not a usable geoguess checkpoint, or one that does not fit the run."""


def existing_checkpoint(path: str | Path) -> Path:
    """`path`, expanded, or a CheckpointError when no such file exists."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's contents (tensors and plain data only) brought to today's format, or
    one clear error."""
    path = existing_checkpoint(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    if not zipfile.is_zipfile(path):  # torch.save's format; a cut-off file loses its index
        raise CheckpointError(_unreadable(path))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise CheckpointError(
                f"checkpoint {path} holds Python objects besides weights and plain data; it was "
                "not written by geoguess.train and is refused (loading it could run code)"
            ) from None
        raise CheckpointError(_unreadable(path)) from None
    except Exception:  # noqa: BLE001 - truncated zip, random bytes, text: all unreadable
        raise CheckpointError(_unreadable(path)) from None
    extras = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(extras, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a checkpoint written by geoguess.train")
    if extras.get("version") == 2:  # format 2 kept its extras in a file beside it
        scale, retrieval = load_extras(path)
        if scale is not None:
            extras["extras"] = {"radius_scale": list(scale)}
            if retrieval is not None:
                extras["extras"]["retrieval"] = {
                    "embeddings": retrieval.embeddings,
                    "xy": retrieval.xy,
                    "classes": retrieval.classes,
                }
    try:
        checkpoint[CHECKPOINT_KEY] = migrate(extras, checkpoint["state_dict"])
    except SpecError as exc:
        raise CheckpointError(f"{path}: {exc}; train it again") from None
    return checkpoint


@dataclass
class StoredRun:
    """A checkpoint's own description of its run, validated."""

    spec: NetworkSpec
    inference: InferenceSpec
    fitted: FittedData
    extras: dict | None
    config: dict


def stored_run(checkpoint: dict, path: str | Path = "the checkpoint") -> StoredRun:
    entry = checkpoint[CHECKPOINT_KEY]
    try:
        return StoredRun(
            spec=NetworkSpec.from_dict(entry.get("spec")),
            inference=InferenceSpec.from_dict(entry.get("inference")),
            fitted=fitted_of(checkpoint),
            extras=entry.get("extras"),
            config=entry.get("config") or {},
        )
    except SpecError as exc:
        raise CheckpointError(f"{path}: the model it describes is refused: {exc}") from None


def _unreadable(path: Path) -> str:
    return (
        f"checkpoint {path} cannot be read: it is truncated or damaged, or not a PyTorch "
        "checkpoint at all (for a killed run, resume from checkpoints/best-*.ckpt or start anew)"
    )


def fitted_of(checkpoint: dict) -> FittedData:
    """The `FittedData` stored in a checkpoint."""
    try:
        return FittedData.from_dict(checkpoint[CHECKPOINT_KEY]["fitted"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's fitted data is incomplete ({exc})") from None


def load_network(path: str | Path, device: str = "cpu") -> tuple[GeoNetwork, StoredRun]:
    """The network of a training checkpoint, in eval mode on `device`, and its description."""
    checkpoint = read_checkpoint(path)
    stored = stored_run(checkpoint, path)
    network = GeoNetwork.from_spec(stored.spec, stored.fitted)
    prefix = "network."
    weights = {
        k.removeprefix(prefix): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith(prefix)
    }
    try:
        network.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path}: its weights do not fit the model it describes ({exc})"
        ) from None
    return network.to(device).eval(), stored


def add_extras(path: str | Path, extras: dict) -> None:
    """Write the fitted inference extras (plain values and tensors) into the checkpoint."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint[CHECKPOINT_KEY]["extras"] = extras

    def write(tmp):
        torch.save(checkpoint, tmp)

    atomic_write(Path(path), write, overwrite=True)


def check_fit_settings(checkpoint: dict, cfg, datamodule) -> None:
    """Refuse a checkpoint fitted under other settings than the run's data module fits under
    (the two descriptions compared), saying which."""
    stored = fitted_of(checkpoint).info.get("fit_settings")
    if stored is None:  # format 2
        differences = _config_differences(checkpoint, cfg, FIT_KEYS_OF_FORMAT_2)
    else:
        now = fit_settings(datamodule)
        differences = [
            f"{key}: {then!r} in the checkpoint, {value!r} now"
            for key, (then, value) in _flat_pairs(stored, now).items()
            if then != value
        ]
    _refuse(differences, "fitted with other data settings")


def check_training_settings(checkpoint: dict, cfg) -> None:
    """Refuse to continue a checkpoint's training under other optimisation settings."""
    keys = list(TRAINING_KEYS)
    if spans_the_run(cfg.get("scheduler")):
        keys.append("trainer.max_epochs")
    differences = _config_differences(checkpoint, cfg, keys)
    _refuse(differences, "trained with other optimisation settings")


def _config_differences(checkpoint: dict, cfg, keys) -> list[str]:
    """`key: then in the checkpoint, now now` for each of `keys` whose value differs between
    the config stored in the checkpoint and `cfg`."""
    stored = OmegaConf.create(checkpoint[CHECKPOINT_KEY].get("config") or {})
    differences = []
    for key in keys:
        then, now = _plain(OmegaConf.select(stored, key)), _plain(OmegaConf.select(cfg, key))
        if then != now:
            differences.append(f"{key}: {then!r} in the checkpoint, {now!r} now")
    return differences


def check_architecture(checkpoint: dict, spec: NetworkSpec) -> None:
    """Refuse a checkpoint whose network differs from the one `spec` describes, saying how."""
    try:
        stored = NetworkSpec.from_dict(checkpoint[CHECKPOINT_KEY].get("spec")).to_dict()
    except SpecError as exc:
        raise CheckpointError(f"the checkpoint's model is refused: {exc}") from None
    spec = spec.to_dict()
    differences = [
        f"{key}: {then!r} in the checkpoint, {now!r} now"
        for key, (then, now) in _flat_pairs(stored, spec).items()
        if then != now
    ]
    _refuse(differences, "of another model")


def _refuse(differences: list[str], what: str) -> None:
    if differences:
        raise CheckpointError(
            f"ckpt_path: the checkpoint is {what} than this run:\n  "
            + "\n  ".join(differences)
            + "\nuse the checkpoint's settings, or start without ckpt_path"
        )


def _plain(value):
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _flat_pairs(then: dict, now: dict, prefix: str = "") -> dict:
    pairs = {}
    for key in sorted(set(then) | set(now)):
        a, b = then.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            pairs.update(_flat_pairs(a, b, f"{prefix}{key}."))
        else:
            pairs[f"{prefix}{key}"] = (a, b)
    return pairs
