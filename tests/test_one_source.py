"""Every setting's default is written once, in the YAML under conf/ (issue 24): the code that
takes a setting (a data module, a scheduler, a settings dataclass, anything conf/ names by
`_target_`) declares its type but no default of its own, which could drift from the YAML's."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from geoguess.bench.config import BenchSettings
from geoguess.collect.settings import CollectSettings
from geoguess.collect.streetview import RetryPolicy
from geoguess.data.datamodule import FolderDataModule
from geoguess.serve.__main__ import PROCESS_KEYS
from geoguess.serve.app import Settings
from geoguess.synthetic import SyntheticDataModule
from tests.conf_helpers import from_conf
from tests.conftest import REPO_ROOT
from tests.data_helpers import data_settings

CONF = REPO_ROOT / "conf"
# The run config's keys a data module takes besides the `data` group's (builders/train.py).
RUN_KEYS = {"image_size", "seed"}
# `_target_`s of conf/ whose defaults are still written in code too. Anything else conf/ builds
# must have none; this list only shrinks.
# `Country`: its defaults are no run's setting but the description of the outline shipped inside
# the package (geoguess/geo/data/croatia.geojson, package data; its name and metric CRS), which
# the library needs where no config exists: `Country.coerce(None)`, the synthetic world's
# `country=None`, checkpoints, scripts and two dozen tests. conf/ is not package data, so the
# package cannot read conf/country/croatia.yaml for it; that YAML picks the same shipped outline
# (`boundary: null`) and restates its name and CRS, and
# test_the_shipped_country_is_the_croatia_option pins the two equal so they cannot drift.
STILL_TWICE = {
    "geoguess.geo.Country",
}


def defaulted_parameters(function) -> set[str]:
    """The parameters of `function` (a class: its constructor, inherited ones included) that
    have a default."""
    parameters = dict(inspect.signature(function).parameters)
    if isinstance(function, type):
        for base in function.__mro__[1:]:
            init = base.__dict__.get("__init__")
            if init is not None and base.__module__.startswith("geoguess"):
                parameters = {**inspect.signature(init).parameters, **parameters}
    return {
        name
        for name, p in parameters.items()
        if p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD
    }


def defaulted_fields(cls) -> set[str]:
    return {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }


def yaml_block(name: str, block: str) -> DictConfig:
    return OmegaConf.load(CONF / f"{name}.yaml")[block]


@pytest.mark.parametrize(
    ("kind", "module"), [("folder", FolderDataModule), ("synthetic", SyntheticDataModule)]
)
def test_data_modules_take_their_settings_without_defaults(kind, module):
    keys = set(data_settings(kind)) | {"root"} | RUN_KEYS
    assert {"split", "batch_size", "num_workers"} <= keys  # the YAML was read
    assert not defaulted_parameters(module) & keys


@pytest.mark.parametrize("path", sorted((CONF / "scheduler").glob("*.yaml")), ids=lambda p: p.stem)
def test_schedulers_take_their_settings_without_defaults(path: Path):
    node = OmegaConf.load(path)
    if "_target_" not in node:  # scheduler=none
        return
    keys = {k for k in node if not str(k).startswith("_")}
    assert keys and not defaulted_parameters(get_object(node._target_)) & keys


@pytest.mark.parametrize(
    ("cls", "yaml", "not_fields"),
    [
        (BenchSettings, yaml_block("bench", "bench"), {"quick"}),
        (CollectSettings, yaml_block("collect", "collect"), set()),
        (Settings, yaml_block("serve", "serve"), set(PROCESS_KEYS)),
    ],
    ids=["bench", "collect", "serve"],
)
def test_settings_dataclasses_are_the_yaml_keys_without_defaults(cls, yaml, not_fields):
    names = {f.name for f in dataclasses.fields(cls)}
    # Each key of the YAML is a field and each field a key: neither side holds a setting alone.
    assert names == set(yaml) - not_fields
    assert not defaulted_fields(cls)


def test_the_retry_policy_is_collect_keys_without_defaults():
    names = {f.name for f in dataclasses.fields(RetryPolicy)}
    assert names <= set(yaml_block("collect", "collect")) and not defaulted_fields(RetryPolicy)


def _targets(node, where: str):
    if isinstance(node, dict):
        target = node.get("_target_")
        if isinstance(target, str) and target.startswith("geoguess."):
            yield where, target, {k for k in node if not str(k).startswith("_")}
        for key, value in node.items():
            yield from _targets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _targets(item, f"{where}[{i}]")


def test_nothing_conf_builds_repeats_a_yaml_default():
    found = {}
    for path in sorted(CONF.rglob("*.yaml")):
        plain = OmegaConf.to_container(OmegaConf.load(path))
        for where, target, keys in _targets(plain, str(path.relative_to(CONF))):
            twice = defaulted_parameters(get_object(target)) & keys
            if twice and target not in STILL_TWICE:
                found[where] = (target, sorted(twice))
    assert not found, f"defaults written in code as well as in conf/: {found}"


def test_prediction_takes_the_commands_settings_without_defaults():
    """`inference.predict` gets what conf/predict.yaml holds from `geoguess.predict`."""
    predict = get_object("geoguess.inference.predict")
    node = OmegaConf.load(CONF / "predict.yaml")
    keys = (set(node) | set(node.data)) & set(inspect.signature(predict).parameters)
    assert {"batch_size", "num_workers", "device", "tta", "refine"} <= keys
    assert not defaulted_parameters(predict) & keys


@pytest.mark.parametrize(
    "target", ["geoguess.geo.build_region_grid", "geoguess.geo.geocells.with_training_locations"]
)
def test_the_grids_helpers_take_the_grid_settings_without_defaults(target):
    """What the grids of conf/grid/ call with their settings (`drop_empty`) defaults none."""
    keys = set().union(*(OmegaConf.load(p) for p in (CONF / "grid").glob("*.yaml")))
    assert "drop_empty" in keys
    assert not defaulted_parameters(get_object(target)) & keys


def test_the_shipped_country_is_the_croatia_option():
    """`Country()` (the shipped outline) and `country=croatia` are one country, field by field."""
    country = get_object("geoguess.geo.Country")
    keys = set(OmegaConf.load(CONF / "country" / "croatia.yaml")) - {"_target_"}
    assert keys == defaulted_parameters(country) - {"geojson"}
    assert from_conf("country", "croatia") == country()


def test_the_generator_takes_the_data_groups_settings_without_defaults():
    """`synthetic.generate` gets `data.generator.*` and `data.num_workers` from its callers."""
    generate = get_object("geoguess.synthetic.generate")
    keys = set(data_settings("synthetic")["generator"]) | {"workers"}
    assert keys == {"num_locations", "seed", "image_size", "workers"}  # the YAML was read
    assert not defaulted_parameters(generate) & keys


def test_the_training_module_takes_the_model_groups_settings_without_defaults():
    """`GeoguessModule` gets `model.check_finite_every` from the builders, not a default."""
    module = get_object("geoguess.models.module.GeoguessModule")
    keys = set(OmegaConf.load(CONF / "model" / "default.yaml"))
    assert "check_finite_every" in keys  # the YAML was read
    assert not defaulted_parameters(module) & keys
