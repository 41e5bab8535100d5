"""Reading checkpoints as untrusted input.

A checkpoint is read with `torch.load(weights_only=True)` (tensors and plain containers only)
and its model is rebuilt from plain values through the suite's registries
(`module.build_from_spec`), never by instantiating a `_target_` stored in it: a crafted
checkpoint cannot make prediction or a resumed run call a function of its author's choosing.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

from geoguess.errors import GeoguessError

# Settings that decide what is fitted on the training split (classes, normalisation, image
# statistics): a checkpoint's fit is only reused under the same settings.
FIT_KEYS = (
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
SCHEDULES_OVER_THE_RUN = ("onecycle", "cosine")


class CheckpointError(GeoguessError):
    """A file that is not a usable geoguess checkpoint, or one that does not fit the run."""


def existing_checkpoint(path: str | Path) -> Path:
    """`path`, expanded, or a CheckpointError when no such file exists."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's contents (tensors and plain data only), or one clear error."""
    import torch

    from geoguess.models.module import CHECKPOINT_KEY, CHECKPOINT_VERSION

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
    if not isinstance(extras, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a checkpoint written by geoguess.train")
    if extras.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} was written by another version of geoguess (checkpoint format "
            f"{extras.get('version')!r}, this one reads {CHECKPOINT_VERSION}); train it again"
        )
    return checkpoint


def _unreadable(path: Path) -> str:
    return (
        f"checkpoint {path} cannot be read: it is truncated or damaged, or not a PyTorch "
        "checkpoint at all (for a killed run, resume from checkpoints/best-*.ckpt or start anew)"
    )


def fitted_of(checkpoint: dict):
    """The `FittedData` stored in a checkpoint."""
    from geoguess.data.fitted import FittedData
    from geoguess.models.module import CHECKPOINT_KEY

    try:
        return FittedData.from_dict(checkpoint[CHECKPOINT_KEY]["fitted"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's fitted data is incomplete ({exc})") from None


def load_for_inference(path: str | Path, device: str = "cpu"):
    """The model of a training checkpoint, in eval mode, and its `FittedData`."""
    from geoguess.models.module import CHECKPOINT_KEY, build_from_spec

    checkpoint = read_checkpoint(path)
    fitted = fitted_of(checkpoint)
    model = build_from_spec(checkpoint[CHECKPOINT_KEY]["spec"], fitted)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path}: its weights do not fit the model it describes ({exc})"
        ) from None
    return model.to(device).eval(), fitted


def check_fit_settings(checkpoint: dict, cfg) -> None:
    """Refuse a checkpoint fitted under other data settings than `cfg` names, saying which."""
    _refuse(_config_differences(checkpoint, cfg, FIT_KEYS), "fitted with other data settings")


def check_training_settings(checkpoint: dict, cfg) -> None:
    """Refuse to continue a checkpoint's training under other optimisation settings."""
    from omegaconf import OmegaConf

    keys = list(TRAINING_KEYS)
    target = str(OmegaConf.select(cfg, "scheduler._target_", default="") or "")
    if any(name in target for name in SCHEDULES_OVER_THE_RUN):
        keys.append("trainer.max_epochs")
    differences = _config_differences(checkpoint, cfg, keys)
    _refuse(differences, "trained with other optimisation settings")


def _config_differences(checkpoint: dict, cfg, keys) -> list[str]:
    """`key: then in the checkpoint, now now` for each of `keys` whose value differs between
    the config stored in the checkpoint and `cfg`."""
    from omegaconf import OmegaConf

    from geoguess.models.module import CHECKPOINT_KEY

    stored = OmegaConf.create(checkpoint[CHECKPOINT_KEY].get("config") or {})
    differences = []
    for key in keys:
        then, now = _plain(OmegaConf.select(stored, key)), _plain(OmegaConf.select(cfg, key))
        if then != now:
            differences.append(f"{key}: {then!r} in the checkpoint, {now!r} now")
    return differences


def check_architecture(checkpoint: dict, spec: dict) -> None:
    """Refuse a checkpoint whose model differs from the one `spec` describes, saying how."""
    from geoguess.models.module import CHECKPOINT_KEY, complete_spec

    stored = complete_spec(checkpoint[CHECKPOINT_KEY]["spec"])
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
    from omegaconf import DictConfig, ListConfig, OmegaConf

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
