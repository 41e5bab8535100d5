"""The config files themselves: experiments one level deep, loggers that combine."""

from __future__ import annotations

import pytest
import yaml

from tests.train_helpers import CONF

EXPERIMENTS = sorted((CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_overrides_the_defaults_directly(path):
    """Reading one experiment file tells what runs: its defaults only swap groups of the
    primary config (`override /group: option`), never pull in another experiment."""
    defaults = yaml.safe_load(path.read_text()).get("defaults", [])
    for entry in defaults:
        assert isinstance(entry, dict) and len(entry) == 1, f"{path.name}: {entry!r}"
        (key,) = entry
        assert key.startswith("override /"), f"{path.name} includes {key!r}"
