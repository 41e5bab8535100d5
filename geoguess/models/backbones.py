"""Backbones: timm models without their classifier, one feature vector per image.

`BACKBONES` maps the names used in `conf/backbone/*.yaml` to timm architectures; any other timm
model name is accepted as it is (`backbone.name=convnext_tiny`).
"""

from __future__ import annotations

from pathlib import Path

import timm
from torch import nn

from geoguess.errors import GeoguessError

# Config alias -> timm architecture (with the pretrained tag timm picks by default).
BACKBONES: dict[str, str] = {
    "resnext50": "resnext50_32x4d",
    # The original team's winner; timm's default tag `tv_in1k` is torchvision's ImageNet weights.
    "resnext101": "resnext101_32x8d",
    "efficientnet_b0": "efficientnet_b0",
    "efficientnet_b3": "efficientnet_b3",
    # A 0.1 M-parameter EfficientNet for CPU runs and tests, trained from scratch: on 2 CPU
    # cores it trains 5-6x faster per image than resnet10t and learned the synthetic data
    # better per second of training.
    "tiny": "test_efficientnet",
}


class BackboneError(GeoguessError):
    """A backbone that cannot be created (unknown name, weights that cannot be loaded)."""


def timm_name(name: str) -> str:
    """The timm architecture of a config alias or a timm model name."""
    arch = BACKBONES.get(name, name)
    if not timm.is_model(arch.split(".")[0]):
        known = ", ".join(sorted(BACKBONES))
        raise BackboneError(
            f"backbone.name={name!r} is neither one of {known} nor a timm model "
            "(see timm.list_models())"
        )
    return arch


def create_backbone(
    name: str, pretrained: bool = False, pretrained_file: str | None = None
) -> nn.Module:
    """A timm model with `num_classes=0`: `forward` returns `[N, num_features]` pooled features.

    `pretrained_file` loads local weights (a `.pth`/`.safetensors` file of the same architecture)
    through timm's `pretrained_cfg_overlay`, for machines that cannot download them.
    """
    if not isinstance(pretrained, bool):
        raise BackboneError(f"backbone.pretrained={pretrained!r} must be true or false")
    arch = timm_name(name)
    kwargs: dict = {"pretrained": bool(pretrained or pretrained_file), "num_classes": 0}
    if pretrained_file:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise BackboneError(f"backbone.pretrained_file={pretrained_file} does not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        return timm.create_model(arch, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        if not kwargs["pretrained"]:
            raise
        raise BackboneError(_weights_hint(name, arch, pretrained_file, exc)) from exc


def _weights_hint(name: str, arch: str, pretrained_file: str | None, exc: Exception) -> str:
    source = f"from {pretrained_file}" if pretrained_file else "(download failed)"
    return (
        f"cannot load pretrained weights for backbone {name!r} ({arch}) {source}: "
        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n"
        "  - on a machine without internet, download the weights elsewhere (e.g. "
        f"`timm.create_model('{arch}', pretrained=True)` then save its state_dict) and pass "
        "backbone.pretrained_file=/path/to/weights.pth (or .safetensors);\n"
        "  - or train from scratch with backbone.pretrained=false "
        "(then prefer unfreeze=never and a larger optimizer.lr)."
    )


def stage_parameters(backbone: nn.Module) -> list[list[str]]:
    """Parameter names per stage, from the stem to the last stage.

    Stages come from timm's coarse `group_matcher` (stem, then one group per stage); a model
    without one is a single stage.
    """
    from timm.models import group_parameters

    matcher = getattr(backbone, "group_matcher", None)
    if matcher is None:
        return [[name for name, _ in backbone.named_parameters()]]
    groups = group_parameters(backbone, matcher(coarse=True))
    return [list(groups[key]) for key in sorted(groups)]
