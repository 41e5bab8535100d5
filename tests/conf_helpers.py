"""Objects built from one conf/ group option as training builds them, with a few keys over
its YAML (where every default is written: the code has none of its own)."""

from __future__ import annotations

from omegaconf import OmegaConf

from geoguess.utils.cli import instantiate
from tests.conftest import REPO_ROOT


def conf_value(group: str, option: str, key: str):
    """One key of conf/<group>/<option>.yaml."""
    return OmegaConf.load(REPO_ROOT / "conf" / group / f"{option}.yaml")[key]


def from_conf(group: str, option: str, **overrides):
    """conf/<group>/<option>.yaml instantiated as the run does, `overrides` over its keys."""
    node = OmegaConf.load(REPO_ROOT / "conf" / group / f"{option}.yaml")
    return instantiate(OmegaConf.merge(node, overrides))
