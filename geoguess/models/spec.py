"""The description of a trained network and of how it answers, as typed plain values.

`NetworkSpec` (backbone, fusion, neck, head, input statistics, numerics) is what a checkpoint
rebuilds its network from, and `InferenceSpec` (test-time augmentation, refinement) how the run
was tested. The run's config builds them (the `head` group is a `HeadSpec`; the other
settings are read from their groups by `network_spec` / `inference_spec`); a checkpoint stores
them with `to_dict` and reads them back with `from_dict`, through the same type checks, so a
value that a config could not give is refused in a checkpoint too. The defaults are the YAML's:
these classes hold types and allowed values only.

Checkpoints written by older versions pass through `migrate`, one step per format version.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

import timm

from geoguess.errors import GeoguessError
from geoguess.models.backbones import POOLS, backbone_name, global_pool
from geoguess.models.fusion import FUSIONS
from geoguess.models.heads import DECODES, HEADS
from geoguess.models.refinement import REFINE, TTA

CHECKPOINT_KEY = "geoguess"
CHECKPOINT_VERSION = 3
# Precision of the backbone's passes while none of it trains (model.frozen_precision).
FROZEN_PRECISIONS = ("32", "bf16")


class SpecError(GeoguessError):
    """A description whose value has the wrong type or is not one of the allowed ones."""


def _check(spec: Any, where: str) -> None:
    """Every field of the dataclass `spec` of its declared type (ints pass as floats and are
    converted; nested specs checked in turn)."""
    hints = typing.get_type_hints(type(spec))
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        kind = hints[field.name]
        name = f"{where}.{field.name}"
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, kind):
                raise SpecError(f"{name} must be a {kind.__name__}, not {value!r}")
            continue
        object.__setattr__(spec, field.name, _typed(value, kind, name))


def _typed(value: Any, kind: Any, name: str) -> Any:
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if value is None:
        if type(None) in options:
            return None
        raise SpecError(f"{name} must be given, not null")
    for option in options:
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option in (str, bool) and type(value) is option:
            return value
        if typing.get_origin(option) is tuple and isinstance(value, list | tuple):
            items = tuple(_typed(v, typing.get_args(option)[0], name) for v in value)
            if len(items) == 3:
                return items
    raise SpecError(f"{name}={value!r} is not a {_type_name(kind)}")


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind)).replace("NoneType", "null")


def _one_of(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise SpecError(f"{name}={value!r} is not one of {', '.join(map(str, allowed))}")


@dataclass
class BackboneSpec:
    """The timm architecture (its registered name: never a hub path) and its pooling."""

    name: str
    global_pool: str

    def __post_init__(self) -> None:
        _check(self, "backbone")
        _one_of("backbone.global_pool", self.global_pool, POOLS)
        if ":" in self.name or not timm.is_model(self.name):
            raise SpecError(
                f"backbone.name={self.name!r} is not a timm architecture known here (hub "
                "models such as hf-hub:... are not loaded from checkpoints)"
            )


@dataclass
class HeadSpec:
    """The `head` group: its kind and the settings of that kind (the classification settings
    are accepted, unused, by a regression head so that one sweep can set them for both)."""

    kind: str
    snap_to_land: bool
    points: str | None
    smoothing_km: float | None
    decode: str | None
    offset_weight: float | None

    def __post_init__(self) -> None:
        _check(self, "head")
        _one_of("head.kind", self.kind, tuple(HEADS))
        if self.kind == "regression":
            return
        if not isinstance(self.points, str):
            raise SpecError(f"head.points must be given for a {self.kind} head")
        _one_of("head.decode", self.decode, DECODES)
        if self.smoothing_km is not None and not self.smoothing_km > 0:
            raise SpecError(f"head.smoothing_km={self.smoothing_km} must be positive, or null")
        if self.kind == "hybrid" and self.offset_weight is None:
            raise SpecError("head.offset_weight must be given for a hybrid head")


@dataclass
class NetworkSpec:
    """Everything that rebuilds a trained network besides its weights and the fitted data."""

    backbone: BackboneSpec
    fusion: str
    dropout: float
    hidden: int
    head: HeadSpec
    input_mean: tuple[float, ...]
    input_std: tuple[float, ...]
    # These change the backbone's numbers a little: prediction runs as the test did.
    frozen_precision: str
    channels_last: bool | None
    # Locations per backbone pass without gradients; null: by device (network.py). The one
    # field with a default here: a spec written before it existed reads as null, which on the
    # CPU is the 16 it ran (on CUDA its passes then take larger blocks: last bits only), so
    # that such a checkpoint resumes under today's default.
    inference_block: int | None = None

    def __post_init__(self) -> None:
        _check(self, "model")
        _one_of("model.fusion", self.fusion, tuple(FUSIONS))
        _one_of("model.frozen_precision", self.frozen_precision, FROZEN_PRECISIONS)
        if self.inference_block is not None and self.inference_block < 1:
            raise SpecError(f"model.inference_block={self.inference_block} must be >= 1, or null")
        if self.hidden < 0 or not 0.0 <= self.dropout < 1.0:
            raise SpecError(
                f"model.hidden={self.hidden} must be >= 0 and model.dropout={self.dropout} "
                "in [0, 1)"
            )

    def to_dict(self) -> dict:
        """Plain containers (lists, not tuples), as they read back from any format."""
        spec = dataclasses.asdict(self)
        spec["input_mean"], spec["input_std"] = list(self.input_mean), list(self.input_std)
        return spec

    @classmethod
    def from_dict(cls, data: Any) -> NetworkSpec:
        data = _mapping(data, "model")
        return _build(
            cls,
            {
                **data,
                "backbone": _build(BackboneSpec, _mapping(data.get("backbone"), "backbone")),
                "head": _build(HeadSpec, _mapping(data.get("head"), "head")),
            },
        )


@dataclass
class InferenceSpec:
    """How the run's guesses are made at test (and, unless overridden, by predict)."""

    tta: str
    refine: str
    refine_k: int
    refine_cells: int
    refine_temperature: float

    def __post_init__(self) -> None:
        _check(self, "inference")
        _one_of("tta", self.tta, TTA)
        _one_of("model.refine", self.refine, REFINE)
        if self.refine_k < 1 or self.refine_cells < 1 or not self.refine_temperature > 0:
            raise SpecError("model.refine_k and refine_cells must be >= 1, temperature > 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def plain(cls) -> InferenceSpec:
        """Guesses as the network gives them: no TTA, no refinement."""
        return cls(**TESTED_AS_IN_V2)

    @classmethod
    def from_dict(cls, data: Any) -> InferenceSpec:
        return _build(cls, _mapping(data, "inference"))

    def replace(self, **changes: Any) -> InferenceSpec:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _mapping(data: Any, where: str) -> dict:
    if not isinstance(data, dict):
        raise SpecError(f"the checkpoint's {where} description is not a mapping: {data!r}")
    return data


def _build(cls, data: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SpecError(f"unknown {cls.__name__} settings: {', '.join(unknown)}")
    try:
        return cls(**data)
    except TypeError as exc:  # a required field is missing
        raise SpecError(f"{cls.__name__}: {exc}") from None


@dataclass
class ModelSettings:
    """The `model` group (`conf/model/default.yaml` gives each setting and its default): the
    network around the backbone, how its guesses are refined, and two training knobs."""

    fusion: str
    dropout: float
    hidden: int
    normalize: str
    channels_last: bool | None
    frozen_precision: str
    inference_block: int | None
    compile: bool
    check_finite_every: int
    feature_cache: bool
    refine: str
    refine_k: int
    refine_cells: int
    refine_temperature: float

    def __post_init__(self) -> None:
        _check(self, "model")

    def network_spec(self, backbone, head: HeadSpec, input_stats) -> NetworkSpec:
        """The network these settings describe around `backbone` (built from the `backbone`
        group), with `head` and the input statistics chosen for it."""
        mean, std = input_stats
        return NetworkSpec(
            backbone=BackboneSpec(backbone_name(backbone), global_pool(backbone)),
            fusion=self.fusion,
            dropout=self.dropout,
            hidden=self.hidden,
            head=head,
            input_mean=tuple(mean),
            input_std=tuple(std),
            frozen_precision=self.frozen_precision,
            channels_last=self.channels_last,
            inference_block=self.inference_block,
        )

    def inference_spec(self, tta: str) -> InferenceSpec:
        """How the run's test guesses are made: `tta` (a top-level setting) and refinement."""
        return InferenceSpec(
            tta=tta,
            refine=self.refine,
            refine_k=self.refine_k,
            refine_cells=self.refine_cells,
            refine_temperature=self.refine_temperature,
        )


# -- older checkpoints ------------------------------------------------------------------------


def _from_v2(extras: dict) -> dict:
    """Format 2 (up to stop 22): a partial spec (keys of later options absent, meaning what ran
    before they existed), head settings only for the kind, the weights without the `network.`
    prefix, no inference settings (tested with none), extras beside the file."""
    spec = dict(extras.get("spec") or {})
    backbone = {"global_pool": "avg", **(spec.get("backbone") or {})}
    head = dict(spec.get("head") or {})
    unused = {"points": None, "smoothing_km": None, "decode": None, "offset_weight": None}
    if head.get("kind") in ("classification", "hybrid"):
        unused.update(points="clipped", decode="weighted")
    if head.get("kind") == "hybrid":
        unused["offset_weight"] = 1.0
    head = {**unused, **head}
    spec = {
        "hidden": 0,
        "frozen_precision": "32",
        "channels_last": None,
        **spec,
        "backbone": backbone,
        "head": head,
    }
    return {**extras, "version": 3, "spec": spec, "inference": dict(TESTED_AS_IN_V2)}


# Format 2 stored no test settings; predict then defaulted to these.
TESTED_AS_IN_V2 = {
    "tta": "none",
    "refine": "none",
    "refine_k": 16,
    "refine_cells": 3,
    "refine_temperature": 0.05,
}
MIGRATIONS = {2: _from_v2}


def migrate(extras: Any, state_dict: dict | None = None) -> dict:
    """A checkpoint's `geoguess` entry brought to the current format, step by step; refuses a
    format it does not know. `state_dict` (the checkpoint's weights) is renamed in place where
    a format stored them under other names."""
    if not isinstance(extras, dict):
        raise SpecError("the checkpoint has no geoguess description")
    version = extras.get("version")
    while version != CHECKPOINT_VERSION:
        step = MIGRATIONS.get(version) if isinstance(version, int) else None
        if step is None:
            raise SpecError(
                f"checkpoint format {version!r} is not one this version of geoguess reads "
                f"(it reads {', '.join(map(str, sorted(MIGRATIONS)))} and {CHECKPOINT_VERSION})"
            )
        if version == 2 and state_dict is not None:
            for key in list(state_dict):
                state_dict[f"network.{key}"] = state_dict.pop(key)
        extras = step(extras)
        version = extras["version"]
    return extras
