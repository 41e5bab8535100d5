"""The offline pretrained backbone (EfficientNet-Lite0 from its PyPI package) and the quick
refusal of downloads that cannot work."""

from __future__ import annotations

import socket
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
from hydra.utils import instantiate
from PIL import Image
from timm.data import ImageNetInfo, create_transform, resolve_model_data_config

from geoguess.models import backbones, pretrained
from geoguess.models.backbones import BackboneError
from tests.conf_helpers import from_conf
from tests.train_helpers import composed

# ImageNet classes a Street View frame of Croatia plausibly shows: landscapes, fences and
# walls, vehicles, roadside structures: 42 of the 1000 classes, a top-1 guess lands here by
# chance 1 time in 24. (Randomly initialised, Lite0 answers one or two classes for every image.)
STREET_SCENE = {
    "alp", "cliff", "lakeside", "promontory", "sandbar", "seashore", "valley", "volcano",
    "geyser", "worm fence", "picket fence", "chainlink fence", "stone wall", "dam",
    "breakwater", "suspension bridge", "steel arch bridge", "viaduct", "barn", "thatch",
    "church", "castle", "boathouse", "pole", "street sign", "traffic light", "park bench",
    "mobile home", "trailer truck", "minivan", "pickup", "beach wagon", "convertible",
    "limousine", "moving van", "police van", "tow truck", "sports car", "jeep", "racer",
    "car wheel", "mountain tent",
}  # fmt: skip


@pytest.fixture(autouse=True)
def weights_cache(tmp_path_factory, monkeypatch) -> Path:
    """Mapped weights go to one temporary cache folder for the whole module."""
    folder = tmp_path_factory.getbasetemp() / "geoguess-cache"
    monkeypatch.setenv(pretrained.CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def imagenet_model() -> torch.nn.Module:
    """Lite0 with its ImageNet classifier, weights loaded straight from the mapped state_dict."""
    model = timm.create_model(pretrained.LITE0_ARCH, pretrained=False)
    model.load_state_dict(pretrained.lite0_state_dict(), strict=True)
    return model.eval()


def top_classes(model: torch.nn.Module, images: list[Image.Image], k: int = 5) -> list[list[str]]:
    transform = create_transform(**resolve_model_data_config(model))
    batch = torch.stack([transform(image.convert("RGB")) for image in images])
    with torch.no_grad():
        indices = model(batch).topk(k, dim=-1).indices
    info = ImageNetInfo()
    return [[info.index_to_description(int(i)).split(",")[0] for i in row] for row in indices]


# -- the mapping ------------------------------------------------------------------------------


def test_the_package_tensors_map_onto_timm_in_order_shape_for_shape():
    source_file = pretrained.lite0_package_file()
    source = torch.load(source_file, map_location="cpu", weights_only=True)
    target = timm.create_model(pretrained.LITE0_ARCH, pretrained=False).state_dict()
    mapped = pretrained.lite0_state_dict()
    assert len(source) == len(target) == len(mapped) == pretrained.LITE0_TENSORS == 296
    assert list(mapped) == list(target)
    for (src_key, src), (key, tensor) in zip(source.items(), mapped.items(), strict=True):
        assert tensor.shape == target[key].shape, key
        assert torch.equal(tensor, src.to(tensor.dtype)), (src_key, key)
    # Spot checks of the naming, independent of the position pairing.
    assert torch.equal(mapped["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(mapped["bn2.running_var"], source["_bn1.running_var"])
    assert torch.equal(mapped["classifier.weight"], source["_fc.weight"])
    # timm's tf_ variant keeps the TF conventions the weights were trained with.
    model = timm.create_model(pretrained.LITE0_ARCH, pretrained=False)
    assert type(model.conv_stem).__name__ == "Conv2dSame"
    assert model.bn1.eps == pytest.approx(1e-3)


def test_converting_the_weights_leaves_the_random_generator_alone():
    """The first run on a machine converts the weights; it must draw the same numbers as the
    runs after it (before, `experiment=best_cpu` gave 64.35 km cold and 64.99 km warm)."""
    torch.manual_seed(7)
    pretrained.lite0_state_dict()
    after_conversion = torch.rand(4)
    torch.manual_seed(7)
    assert torch.equal(after_conversion, torch.rand(4))


def test_a_mapping_that_does_not_fit_fails_and_says_where():
    target = OrderedDict(
        [("a.weight", torch.zeros(3, 2)), ("a.bias", torch.zeros(3)), ("b.weight", torch.zeros(4))]
    )
    good = OrderedDict(
        [("x.w.weight", torch.ones(3, 2)), ("x.bias", torch.ones(3)), ("y.weight", torch.ones(4))]
    )
    assert list(pretrained.map_in_order(good, target)) == list(target)
    short = OrderedDict(list(good.items())[:2])
    with pytest.raises(pretrained.PretrainedWeightsError, match="2 tensors cannot map onto .* 3"):
        pretrained.map_in_order(short, target)
    wrong_shape = OrderedDict(good, **{"y.weight": torch.ones(5)})
    with pytest.raises(pretrained.PretrainedWeightsError, match=r"tensor 2 y.weight \(5,\)"):
        pretrained.map_in_order(wrong_shape, target)
    # Same shapes, but a bias where a weight belongs: refused as well.
    swapped = OrderedDict(
        [("x.weight", torch.ones(3, 2)), ("x.weight2", torch.ones(3)), ("y.weight", torch.ones(4))]
    )
    with pytest.raises(pretrained.PretrainedWeightsError, match="tensor 1 x.weight2"):
        pretrained.map_in_order(swapped, target)


def test_a_corrupt_package_file_is_refused(tmp_path):
    fake = tmp_path / "efficientnet-lite0-57934424.pth"
    fake.write_bytes(b"not the weights")
    with pytest.raises(pretrained.PretrainedWeightsError, match="corrupt"):
        pretrained.check_file_hash(fake)


# -- the backbone -----------------------------------------------------------------------------


def test_backbone_option_loads_the_shipped_weights_offline(
    tmp_path, weights_cache, monkeypatch, no_network
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with composed(["backbone=efficientnet_lite0"], tmp_path) as cfg:
        assert cfg.backbone.pretrained is True
        model = instantiate(cfg.backbone).eval()
    cached = sorted((weights_cache / "weights").glob("tf_efficientnet_lite0-*.safetensors"))
    assert len(cached) == 1
    written = cached[0].stat().st_mtime_ns
    assert model.pretrained_cfg["architecture"] == pretrained.LITE0_ARCH
    assert model.num_features == 1280
    # Pretrained normalisation is Lite0's own, not ImageNet's usual statistics.
    config = resolve_model_data_config(model)
    assert config["mean"] == config["std"] == (0.5, 0.5, 0.5)
    mapped = pretrained.lite0_state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, mapped[key]), key
    # A second backbone reuses the cached file, and both give the same features.
    again = from_conf("backbone", "efficientnet_lite0").eval()
    assert cached[0].stat().st_mtime_ns == written
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        features, features_again = model(x), again(x)
        scratch = from_conf("backbone", "efficientnet_lite0", pretrained=False).eval()(x)
    assert features.shape == (2, 1280)
    torch.testing.assert_close(features, features_again, rtol=0, atol=0)
    # The features are those of the weights (a regression value, measured once).
    assert float(features.mean()) == pytest.approx(0.24077, abs=1e-3)
    assert not torch.allclose(features, scratch)


def test_pretrained_file_still_overrides_the_shipped_weights(tmp_path):
    scratch = timm.create_model(pretrained.LITE0_ARCH, pretrained=False, num_classes=0)
    path = tmp_path / "mine.pth"
    torch.save(scratch.state_dict(), path)
    model = from_conf("backbone", "efficientnet_lite0", pretrained_file=str(path))
    assert torch.equal(model.conv_stem.weight, scratch.conv_stem.weight)


def test_it_recognises_a_well_known_photo():
    from matplotlib import cbook

    path = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    with Image.open(path) as image:
        (top,) = top_classes(imagenet_model(), [image], k=3)
    # Grace Hopper in uniform: the classic ImageNet example.
    assert "military uniform" in top, top


def test_it_sees_street_scenes_in_real_street_view_frames(real_sample):
    paths = sorted(real_sample.glob("images/*/0.jpg"))[:12]
    assert len(paths) == 12
    images = [Image.open(p) for p in paths]
    tops = top_classes(imagenet_model(), images)
    best = [top[0] for top in tops]
    # Measured: 9 of 12 top-1 classes are street scenes, 11 distinct ones.
    assert sum(c in STREET_SCENE for c in best) >= 6, best
    assert len(set(best)) >= 6, best


# -- downloads that cannot work fail at once --------------------------------------------------


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No Hugging Face or torch hub weights cached; timm must not even be asked."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(*args, **kwargs):
        raise AssertionError("timm.create_model called: the download would have been tried")

    monkeypatch.setattr(backbones.timm, "create_model", no_download)
    return tmp_path


def test_offline_download_is_refused_at_once_with_the_ways_out(empty_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError) as info:
        from_conf("backbone", "resnext50")
    message = str(info.value)
    assert "resnext50_32x4d" in message and "HF_HUB_OFFLINE" in message
    assert "backbone.pretrained_file" in message
    assert "backbone=efficientnet_lite0" in message
    assert "backbone.pretrained=false" in message


def test_an_unreachable_hub_is_refused_at_once(empty_caches, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    asked = []
    monkeypatch.setattr(pretrained, "host_reachable", lambda host: asked.append(host) or False)
    with pytest.raises(BackboneError, match="huggingface.co is unreachable"):
        from_conf("backbone", "efficientnet_b0")
    assert asked == ["huggingface.co"]
    # With a proxy the probe cannot tell: timm is left to try.
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert pretrained.weights_unavailable("efficientnet_b0") is None


def test_weights_in_the_hub_cache_count_as_available(empty_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pretrained.weights_unavailable("test_efficientnet") is not None
    # The layout huggingface_hub writes: refs/main names the snapshot holding the file.
    repo = empty_caches / "hf" / "models--timm--test_efficientnet.r160_in1k"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "snapshots" / revision / "model.safetensors").write_bytes(b"")
    assert pretrained.weights_unavailable("test_efficientnet") is None
    # An unknown pretrained tag is for timm to report, not a refusal here.
    assert pretrained.weights_unavailable("resnet10t.no_such_tag") is None


def test_the_probe_tells_an_open_port_from_a_closed_one():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert pretrained.host_reachable.__wrapped__("127.0.0.1", port, timeout=2.0)
    # The port is closed now: the connection is refused.
    assert not pretrained.host_reachable.__wrapped__("127.0.0.1", port, timeout=2.0)
    assert not pretrained.host_reachable.__wrapped__("no-such-host.invalid", 443, timeout=2.0)
