"""What the suite refuses to run on: a Lightning outside the supported range (exact resume
relies on its loop order), and a checkpoint that names a hub backbone (loading it would fetch
and build code named by an untrusted file)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning
import pytest
import tomllib
import torch
from packaging.requirements import Requirement

from geoguess import lightning_version
from geoguess.lightning_version import SUPPORTED, UnsupportedLightning, check_lightning
from tests.cli import command_env
from tests.conf_helpers import conf_value
from tests.conftest import REPO_ROOT

# -- Lightning's version ------------------------------------------------------------------------


def test_pyproject_bounds_lightning_as_the_import_check_does():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    (requirement,) = [
        Requirement(r) for r in project["dependencies"] if Requirement(r).name == "lightning"
    ]
    assert requirement.specifier == Requirement(SUPPORTED).specifier
    # An upper bound that is really there, and the installed Lightning inside it.
    assert any(spec.operator == "<" for spec in requirement.specifier)
    assert requirement.specifier.contains(lightning.__version__)
    assert not requirement.specifier.contains(lightning_version.BELOW)
    check_lightning()  # the installed one passes


@pytest.mark.parametrize("version", ["2.7.0", "3.0.1", "2.5.9", "2.7.0rc1"])
def test_an_unsupported_lightning_is_refused_naming_the_range(version, monkeypatch):
    monkeypatch.setattr(lightning, "__version__", version)
    with pytest.raises(
        UnsupportedLightning, match=f"supports lightning>=2.6,<2.7, not lightning {version}"
    ):
        check_lightning()
    monkeypatch.setattr(lightning, "__version__", "2.6.99")
    check_lightning()


@pytest.mark.slow
def test_importing_the_training_command_under_an_unsupported_lightning_fails_clearly(tmp_path):
    """At import of `geoguess.train` (through its callbacks), before any run starts."""
    code = "import lightning; lightning.__version__ = '2.7.0'; import geoguess.train"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("geoguess.lightning_version.UnsupportedLightning: geoguess supports")
    assert "lightning>=2.6,<2.7, not lightning 2.7.0" in last
    assert not list(tmp_path.iterdir())  # nothing written


# -- hub backbones ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A checkpoint as geoguess.train writes one (its description and weights), of a small
    network."""
    from geoguess.data import FittedData
    from geoguess.data.targets import TargetSpace
    from geoguess.geo import Country
    from geoguess.models import backbones
    from geoguess.models.module import GeoguessModule
    from geoguess.models.network import GeoNetwork, input_stats
    from geoguess.models.spec import BackboneSpec, HeadSpec, NetworkSpec
    from tests.conf_helpers import from_conf
    from tests.data_helpers import croatia_points

    country = Country()
    lat, lon = croatia_points(100, seed=1)
    grid = from_conf("grid", "square", spacing=0.8)(country, train_lat=lat, train_lon=lon)
    fitted = FittedData(
        TargetSpace.fit(lat, lon), grid, (0.4, 0.5, 0.45), (0.2, 0.25, 0.22), 32, country
    )
    backbone = from_conf("backbone", "tiny")
    mean, std = input_stats(backbone, fitted, "auto", False)
    spec = NetworkSpec(
        backbone=BackboneSpec(backbones.backbone_name(backbone), backbones.global_pool(backbone)),
        fusion="concat",
        dropout=0.0,
        hidden=0,
        head=HeadSpec(
            kind="classification",
            snap_to_land=True,
            points="clipped",
            smoothing_km=None,
            decode="weighted",
            offset_weight=None,
        ),
        input_mean=mean,
        input_std=std,
        frozen_precision="32",
        channels_last=None,
    )
    module = GeoguessModule(
        GeoNetwork(backbone, spec, fitted),
        check_finite_every=conf_value("model", "default", "check_finite_every"),
    )
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    path = tmp_path_factory.mktemp("ckpt") / "good.ckpt"
    torch.save(checkpoint, path)
    return path


def test_a_checkpoint_naming_a_hub_backbone_is_refused(saved, tmp_path, monkeypatch):
    from geoguess.models import checkpoint as ckpt

    network, stored = ckpt.load_network(saved)  # the untouched file loads
    assert ":" not in stored.spec.backbone.name

    crafted = torch.load(saved, map_location="cpu", weights_only=True)
    crafted[ckpt.CHECKPOINT_KEY]["spec"]["backbone"]["name"] = "hf-hub:x/y"
    path = tmp_path / "hub.ckpt"
    torch.save(crafted, path)

    # Nothing may be fetched or built from the name: timm's factory is never asked.
    import timm

    def no_create(*args, **kwargs):
        raise AssertionError(f"timm.create_model{args} called")

    monkeypatch.setattr(timm, "create_model", no_create)
    refused = r"backbone.name='hf-hub:x/y' is not a timm architecture known here \(hub models"
    with pytest.raises(ckpt.CheckpointError, match=refused) as raised:
        ckpt.load_network(path)
    assert str(path) in str(raised.value)
    with pytest.raises(ckpt.CheckpointError, match=refused):
        ckpt.stored_run(ckpt.read_checkpoint(path), path)
