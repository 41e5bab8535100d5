"""Unit tests of the model parts, the config groups and the metrics (no Trainer)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from geoguess import metrics
from geoguess.builders import build_module as build_model
from geoguess.builders import build_trainer
from geoguess.errors import GeoguessError
from geoguess.geo import Country, haversine_km
from geoguess.models import backbones, fusion, heads, unfreeze
from geoguess.models.module import GeoguessModule, NonFiniteLossError
from geoguess.models.network import GeoNetwork, input_stats
from geoguess.models.spec import BackboneSpec, HeadSpec, InferenceSpec, NetworkSpec, SpecError
from geoguess.predictor import InferenceExtras, Predictor
from tests.conf_helpers import conf_value, from_conf
from tests.train_helpers import CONF, composed

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)

CHECK_FINITE_EVERY = conf_value("model", "default", "check_finite_every")


@pytest.fixture(scope="module")
def country() -> Country:
    return Country()


@pytest.fixture(scope="module")
def fitted(country):
    """What the data module fits on train, made from 300 random locations in Croatia."""
    from geoguess.data import FittedData
    from geoguess.data.targets import TargetSpace
    from tests.data_helpers import croatia_points

    lat, lon = croatia_points(300, seed=1)
    grid = from_conf("grid", "square", spacing=0.8)(country, train_lat=lat, train_lon=lon)
    targets = TargetSpace.fit(lat, lon)
    return FittedData(targets, grid, (0.4, 0.5, 0.45), (0.2, 0.25, 0.22), 32, country)


def batch_of(fitted, n: int = 6, size: int = 32, seed: int = 0) -> dict:
    """A hand-made batch following docs/data-interface.md."""
    from tests.data_helpers import croatia_points

    lat, lon = croatia_points(n, seed=seed + 10)
    generator = torch.Generator().manual_seed(seed)
    return {
        "images": torch.randint(
            0, 256, (n, 4, 3, size, size), dtype=torch.uint8, generator=generator
        ),
        "latlon": torch.tensor(np.column_stack([lat, lon]), dtype=torch.float64),
        "target": torch.tensor(fitted.targets.normalize(lat, lon), dtype=torch.float32),
        "class_id": torch.tensor(fitted.grid.assign(lat, lon), dtype=torch.int64),
        "uuid": [f"loc{i}" for i in range(n)],
        "index": torch.arange(n),
    }


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# -- config groups ----------------------------------------------------------------------------


def test_every_group_option_of_the_issue_exists():
    assert options("backbone") == [
        "efficientnet_b0",
        "efficientnet_b3",
        "efficientnet_lite0",
        "resnext101",
        "resnext50",
        "tiny",
    ]
    assert options("head") == ["classification", "hybrid", "regression"]
    assert options("optimizer") == ["adam", "adamw"]
    assert options("scheduler") == ["cosine", "none", "onecycle", "plateau"]
    assert options("unfreeze") == ["at_epoch", "frozen", "gradual", "never"]
    assert options("trainer") == ["cpu", "ddp", "gpu"]
    assert options("image") == ["112px", "128px", "224px", "288px", "56px", "64px"]
    assert options("callbacks") == ["default", "with_early_stopping"]
    assert options("grid") == ["adaptive", "square"]
    assert options("logger") == ["csv", "many_loggers", "none", "tensorboard", "wandb"]
    assert options("experiment") == [
        "best_cpu",
        "best_cpu_128",
        "original",
        "quickstart",
        "smoke",
        "study_finetune",
        "study_frozen",
    ]


@pytest.mark.parametrize("name", options("backbone"))
def test_backbone_options_instantiate(name, tmp_path):
    from hydra.utils import instantiate

    with composed([f"backbone={name}"], tmp_path) as cfg:
        # No download here: the architecture is what the option chooses.
        model = instantiate(cfg.backbone, pretrained=False)
    expected = {
        "resnext50": "resnext50_32x4d",
        "resnext101": "resnext101_32x8d",
        "efficientnet_b0": "efficientnet_b0",
        "efficientnet_b3": "efficientnet_b3",
        "efficientnet_lite0": "tf_efficientnet_lite0",
        "tiny": "test_efficientnet",
    }[name]
    assert model.default_cfg["architecture"] == expected
    assert cfg.backbone.pretrained is (name != "tiny")
    features = model.eval()(torch.zeros(1, 3, 32, 32))
    assert features.shape == (1, model.num_features)


@pytest.mark.parametrize("head", options("head"))
@pytest.mark.parametrize("fusion_name", ["concat", "mean", "attention"])
def test_head_and_model_options_build_a_module(head, fusion_name, fitted, tmp_path):
    overrides = ["backbone=tiny", f"head={head}", f"model.fusion={fusion_name}"]
    with composed(overrides, tmp_path) as cfg:
        module = build_model(cfg, fitted)
    output = module(batch_of(fitted, 3)["images"])
    c = fitted.grid.num_classes
    width = {"classification": c, "hybrid": 3 * c, "regression": 2}[head]
    assert output.shape == (3, width)
    assert module.head.num_classes == (None if head == "regression" else c)


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_optimizer_and_scheduler_options_instantiate(optimizer, scheduler, fitted, tmp_path):
    overrides = ["backbone=tiny", f"optimizer={optimizer}", f"scheduler={scheduler}"]
    with composed(overrides, tmp_path) as cfg:
        module = build_model(cfg, fitted)
    module.trainer = _FakeTrainer()  # what the schedulers read from the trainer
    configured = module.configure_optimizers()
    opt = configured["optimizer"] if isinstance(configured, dict) else configured
    assert type(opt).__name__ == {"adam": "Adam", "adamw": "AdamW"}[optimizer]
    groups = {g["name"]: g for g in opt.param_groups}
    # unfreeze=at_epoch (default): the backbone trains at unfreeze.backbone_lr
    warmup = 1 / 25 if scheduler == "onecycle" else 1
    for name, group in groups.items():
        lr = cfg.unfreeze.backbone_lr if name.startswith("backbone") else cfg.optimizer.lr
        assert group["lr"] == pytest.approx(lr * warmup)
    # Every parameter once; no weight decay on biases and normalisation weights (timm's rule).
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in module.parameters())
    names = {id(p): n for n, p in module.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            one_d = p.ndim <= 1 or names[id(p)].endswith(".bias")
            assert group["weight_decay"] == (0.0 if one_d else cfg.optimizer.weight_decay)
    if optimizer == "adamw":
        assert {"head", "head/no_decay", "backbone", "backbone/no_decay"} == set(groups)
    if scheduler == "none":
        assert cfg.scheduler is None and not isinstance(configured, dict)
    else:
        kind = {
            "plateau": "ReduceLROnPlateau",
            "onecycle": "OneCycleLR",
            "cosine": "CosineAnnealingLR",
        }
        assert type(configured["lr_scheduler"]["scheduler"]).__name__ == kind[scheduler]


class _FakeTrainer:
    max_epochs = 3
    estimated_stepping_batches = 30


@pytest.mark.parametrize("name", options("unfreeze"))
def test_unfreeze_options_instantiate(name, tmp_path):
    from hydra.utils import instantiate

    with composed([f"unfreeze={name}"], tmp_path) as cfg:
        callback = instantiate(cfg.unfreeze)
    assert isinstance(callback, unfreeze.BackboneUnfreeze)
    assert callback.backbone_lr == (None if name in ("never", "frozen") else 1e-4)


def test_trainer_options_instantiate_or_say_why(tmp_path):
    with composed(["trainer=cpu"], tmp_path) as cfg:
        trainer = build_trainer(cfg, logger=False, enable_checkpointing=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    with composed(["trainer=gpu"], tmp_path) as cfg:
        assert cfg.trainer.precision == "bf16-mixed"
        if torch.cuda.is_available():
            build_trainer(cfg, logger=False)
        else:
            with pytest.raises(GeoguessError, match="(?i)trainer=gpu needs a CUDA GPU"):
                build_trainer(cfg, logger=False)
    with composed(["trainer=ddp", "trainer.devices=2"], tmp_path) as cfg:
        trainer = build_trainer(cfg, logger=False, enable_checkpointing=False)
    assert type(trainer.strategy).__name__ == "DDPStrategy"
    assert trainer.num_devices == 2
    if not torch.cuda.is_available():  # gloo processes on CPU, without GPU-only options
        assert trainer.strategy._process_group_backend in (None, "gloo")
        assert type(trainer.accelerator).__name__ == "CPUAccelerator"
        assert trainer.precision == "32-true"


@pytest.mark.parametrize("name", options("logger"))
def test_logger_options_instantiate(name, tmp_path, monkeypatch):
    from geoguess.models.loggers import build_loggers, finish

    monkeypatch.setenv("WANDB_MODE", "offline")
    with composed([f"logger={name}"], tmp_path) as cfg:
        if name == "none":
            assert cfg.logger is None
            return
        (logger, *_) = build_loggers(cfg)
        logger.log_metrics({"val/haversine_km": 1.0}, step=0)
        finish([logger])
    assert logger.save_dir and Path(logger.save_dir) == tmp_path
    if name == "tensorboard":
        assert list(tmp_path.rglob("events.out.tfevents*")), "no TensorBoard event file written"


def test_wandb_run_is_named_grouped_and_kept_for_resumes(tmp_path, monkeypatch):
    from geoguess.models.loggers import RUN_ID_FILE, build_loggers, finish, run_name, sweep_name

    monkeypatch.setenv("WANDB_MODE", "offline")
    with composed([], tmp_path):
        assert sweep_name() is None
        assert run_name([], tmp_path) == tmp_path.name
    overrides = ["hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path}/sweep-7"]
    with composed([*overrides, "grid.spacing=0.3", "head=regression"], tmp_path) as cfg:
        assert sweep_name() == "train-multirun-sweep-7"
        (logger,) = build_loggers(cfg)
        assert logger.swept == {"overrides": {"grid.spacing": 0.3, "head": "regression"}}
        first = logger.experiment.id
        assert logger.experiment.name == "grid.spacing=0.3 head=regression"
        finish([logger])
        (again,) = build_loggers(cfg)  # a resumed run in the same folder
        assert again.experiment.id == first == (tmp_path / RUN_ID_FILE).read_text().strip()
        finish([again])


def _importable(*modules: str) -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in modules)


@pytest.mark.parametrize("name", options("experiment"))
def test_experiments_compose(name, tmp_path):
    with composed([f"experiment={name}"], tmp_path) as cfg:
        pass
    if name == "original":
        assert cfg.backbone.name == "resnext101"
        assert cfg.grid.spacing == 0.21
        assert cfg.image.size == 224
        assert cfg.data.batch_size == 8
        assert cfg.optimizer.lr == 2e-5
        assert cfg.optimizer._target_ == "torch.optim.Adam"
        assert cfg.scheduler._target_.endswith("plateau")
        assert cfg.unfreeze.epoch == 1
        assert cfg.trainer.max_epochs == 22
        assert cfg.trainer.precision == "bf16-mixed"
    elif name in ("quickstart", "smoke"):
        assert cfg.backbone.pretrained is False
        assert cfg.image.size == 64
    else:  # the methods study's budgets and its winner: the offline pretrained Lite0
        assert cfg.backbone.name == "efficientnet_lite0" and cfg.backbone.pretrained is True
        sizes = {"study_finetune": 64, "best_cpu": 288}
        assert cfg.image.size == sizes.get(name, 128)
        assert cfg.data.generator.image_size == (288 if name == "best_cpu" else 128)
        assert cfg.model.frozen_precision == ("bf16" if name == "best_cpu" else "32")
        assert cfg.data.augment is False


@pytest.mark.parametrize("size", [56, 64, 112, 224, 288])
def test_image_options_are_names_that_work_in_every_command(size, tmp_path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        for command in ("train", "validate"):
            assert compose(command, overrides=[f"image={size}px"]).image.size == size


@pytest.mark.parametrize(
    "override, error",
    [
        ("model.fusion=sum", "model.fusion='sum' is not one of concat, mean, attention"),
        ("head.points=middle", "head.points='middle'"),
        ("optimizer.lr=fast", "AdamW refuses optimizer.lr='fast'"),
        ("optimizer.lr=-1", "AdamW refuses optimizer.lr=-1"),
        ("unfreeze=at_epoch unfreeze.epoch=soon", "unfreeze.epoch='soon' must be an integer"),
        ("backbone.pretrained=maybe", "backbone.pretrained='maybe' must be true or false"),
        ("grid.spacing=9", "a classifier needs at least 2"),
    ],
)
def test_bad_values_are_one_clear_error(override, error, tiny_data, tmp_path):
    from tests.train_helpers import FAST, folder_data, run_training

    overrides = [*FAST, *folder_data(tiny_data), "optimizer=adamw", *override.split()]
    with pytest.raises(GeoguessError) as info:
        run_training(overrides, tmp_path)
    assert error in str(info.value)
    assert not (tmp_path / "checkpoints").exists()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from tests.train_helpers import dataset

    return dataset(tmp_path_factory.getbasetemp(), num_locations=40, image_size=32)


# -- backbones ----------------------------------------------------------------------------------


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(GeoguessError, match="neither one of"):
        from_conf("backbone", "tiny", name="resnet_from_mars")


def test_pretrained_file_loads_local_weights(tmp_path):
    reference = from_conf("backbone", "tiny")
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    loaded = from_conf("backbone", "tiny", pretrained_file=str(path))
    other = from_conf("backbone", "tiny")
    key = next(iter(reference.state_dict()))
    assert torch.equal(loaded.state_dict()[key], reference.state_dict()[key])
    assert not torch.equal(other.state_dict()[key], reference.state_dict()[key])


def test_missing_weights_say_how_to_pass_them(tmp_path):
    with pytest.raises(GeoguessError, match="pretrained_file=.*does not exist"):
        from_conf("backbone", "tiny", pretrained_file=str(tmp_path / "nope.pth"))
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not weights")
    with pytest.raises(GeoguessError) as info:
        from_conf("backbone", "tiny", pretrained_file=str(broken))
    assert "backbone.pretrained_file" in str(info.value)
    assert "backbone.pretrained=false" in str(info.value)


# -- fusion -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["concat", "mean", "attention"])
def test_fusion_shapes_and_heading_order(name):
    module = fusion.create_fusion(name, 8)
    x = torch.randn(5, 4, 8)
    out = module(x)
    assert out.shape == (5, module.out_features)
    if name == "concat":
        assert torch.equal(out[:, 8:16], x[:, 1])  # heading 90 keeps its place
    if name == "mean":
        assert torch.allclose(out, x.mean(1))
    if name == "attention":
        # A convex combination of the (heading-embedded) views: zero views give zero.
        assert torch.allclose(module(torch.zeros(2, 4, 8)), torch.zeros(2, 8), atol=1e-6)
        assert sum(p.numel() for p in module.parameters()) > 0


# -- heads --------------------------------------------------------------------------------------


def test_classification_decodes_to_the_weighted_mean_of_class_points(fitted):
    head = heads.ClassificationHead(16, fitted.grid, fitted.targets, fitted.country)
    lat, lon = fitted.grid.points("clipped")
    logits = torch.full((1, head.num_classes), -1e4)
    logits[0, 3] = 0.0
    plat, plon = head.to_latlon(logits)
    assert haversine_km(plat, plon, lat[3], lon[3])[0] < 1e-3  # a sure class is its point
    logits[0, 5] = 0.0  # two equally likely classes: halfway between them, in metres
    xy = head.to_projected(logits).numpy()[0]
    expected = fitted.targets.project(lat[[3, 5]], lon[[3, 5]]).mean(axis=0)
    assert np.allclose(xy, expected, atol=1e-3)


def test_class_point_kinds(fitted):
    for kind in ("clipped", "centroid", "train_mean"):
        head = heads.ClassificationHead(4, fitted.grid, fitted.targets, fitted.country, points=kind)
        lat, lon = fitted.grid.points(kind)
        assert np.allclose(head.class_latlon.numpy(), np.column_stack([lat, lon]))


def test_label_smoothing_prefers_near_classes(fitted):
    head = heads.ClassificationHead(4, fitted.grid, fitted.targets, fitted.country, smoothing_km=20)
    lat, lon = fitted.grid.points("clipped")
    latlon = torch.tensor([[lat[7], lon[7]]], dtype=torch.float64)
    soft = head.soft_targets(latlon)[0].numpy()
    assert soft.sum() == pytest.approx(1.0, abs=1e-5)
    assert soft.argmax() == 7
    d = haversine_km(lat, lon, lat[7], lon[7])
    # exp(-(d_i - d_min) / tau), normalised
    expected = np.exp(-(d - d.min()) / 20)
    assert np.allclose(soft, expected / expected.sum(), atol=1e-6)
    batch = {"latlon": latlon, "class_id": torch.tensor([7])}
    near, far = torch.full((1, head.num_classes), -5.0), torch.full((1, head.num_classes), -5.0)
    near[0, 7] = 5.0
    far[0, int(d.argmax())] = 5.0
    assert head.loss(near, batch) < head.loss(far, batch)
    with pytest.raises(GeoguessError):
        heads.ClassificationHead(4, fitted.grid, fitted.targets, fitted.country, smoothing_km=0)


def test_regression_clamps_predictions_but_not_the_loss(fitted):
    head = heads.RegressionHead(4, fitted.targets, country=fitted.country)
    output = torch.tensor([[1.7, -0.4]])
    xy = head.to_projected(output).numpy()[0]
    t = fitted.targets
    assert xy == pytest.approx([t.x_max, t.y_min])
    loss = head.loss(output, {"target": torch.tensor([[0.5, 0.5]])})
    assert loss.item() == pytest.approx(((1.2**2) + (0.9**2)) / 2, rel=1e-5)


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_heads_decode_within_50_metres_of_float32_under_bf16_autocast(kind, fitted):
    spec = dataclasses_replace(CLASSIFICATION, snap_to_land=False)
    if kind == "regression":
        spec = HeadSpec(kind, False, None, None, None, None)
    head = heads.build_head(
        spec,
        64,
        grid=fitted.grid,
        targets=fitted.targets,
        country=fitted.country,
    )
    torch.manual_seed(0)
    with torch.no_grad():
        head.linear.weight.normal_(0, 0.5)
    features = torch.randn(256, 64)
    reference = head.to_latlon(head(features))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # What a bf16 backbone hands over: bf16 features.
        mixed = head.to_latlon(head(features.bfloat16()))
    exact_input = head.to_latlon(head(features.bfloat16().float()))
    # The head itself adds nothing under autocast: its float32 layer sees the same numbers.
    assert haversine_km(*mixed, *exact_input).max() < 0.05
    # ... while a bf16 linear layer would cost kilometres on the regression head.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw = torch.nn.functional.linear(
            features.bfloat16(), head.linear.weight.bfloat16(), head.linear.bias.bfloat16()
        )
    if kind == "regression":
        assert haversine_km(*head.to_latlon(raw.float()), *reference).max() > 0.05


def test_predictions_off_land_snap_to_the_nearest_point_of_the_country(fitted, country):
    import shapely

    head = heads.RegressionHead(4, fitted.targets, country=country)
    at_sea = np.array([[43.0, 16.0], [44.5, 14.0], [45.8, 15.98]])  # Adriatic, Adriatic, Zagreb
    xy = fitted.targets.project(at_sea[:, 0], at_sea[:, 1])
    lat, lon, moved = head.decode(xy)
    assert moved.tolist() == [True, True, False]
    assert country.contains(lat, lon).all()
    assert (lat[2], lon[2]) == (pytest.approx(45.8), pytest.approx(15.98))
    # The nearest point: as far as the boundary is from the sea point (plus the 25 m margin).
    x, y = country.projector.forward(at_sea[:2, 0], at_sea[:2, 1])
    to_border = shapely.distance(country.projected_geometry, shapely.points(x, y)) / 1000
    moved_km = haversine_km(lat[:2], lon[:2], at_sea[:2, 0], at_sea[:2, 1])
    assert moved_km == pytest.approx(to_border + 0.025, abs=0.05)
    plain = heads.RegressionHead(4, fitted.targets, country=country, snap_to_land=False)
    assert not plain.decode(xy)[2].any()


# -- module -------------------------------------------------------------------------------------


CLASSIFICATION = HeadSpec(
    kind="classification",
    snap_to_land=True,
    points="clipped",
    smoothing_km=None,
    decode="weighted",
    offset_weight=None,
)


def _network(
    fitted, backbone=None, pretrained: bool = False, normalize: str = "auto", **changes
) -> GeoNetwork:
    """A network as `build_module` makes one, with the spec's fields in `changes`."""
    import dataclasses

    backbone = backbone if backbone is not None else from_conf("backbone", "tiny")
    mean, std = input_stats(backbone, fitted, normalize, pretrained)
    spec = NetworkSpec(
        backbone=BackboneSpec(backbones.backbone_name(backbone), backbones.global_pool(backbone)),
        fusion="concat",
        dropout=0.0,
        hidden=0,
        head=CLASSIFICATION,
        input_mean=mean,
        input_std=std,
        frozen_precision="32",
        channels_last=None,
    )
    return GeoNetwork(backbone, dataclasses.replace(spec, **changes), fitted)


def _module(fitted, tta: str = "none", **changes) -> GeoguessModule:
    inference = dataclasses_replace(InferenceSpec.plain(), tta=tta)
    return GeoguessModule(
        _network(fitted, **changes), inference=inference, check_finite_every=CHECK_FINITE_EVERY
    )


def dataclasses_replace(spec, **changes):
    import dataclasses

    return dataclasses.replace(spec, **changes)


def test_module_normalises_uint8_views_with_fitted_statistics(fitted):
    """From scratch: the training split's statistics; pretrained: the backbone's own."""
    module = _module(fitted).eval()
    seen = {}
    module.backbone.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    images = torch.full((2, 4, 3, 8, 8), 255, dtype=torch.uint8)
    module(images)
    x = seen["x"]
    assert x.shape == (8, 3, 8, 8)  # the four views of each location through one backbone
    expected = (1.0 - torch.tensor(fitted.image_mean)) / torch.tensor(fitted.image_std)
    assert torch.allclose(x[0, :, 0, 0], expected)
    pretrained = _network(fitted, pretrained=True)
    imagenet = (torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225)))
    assert torch.allclose(pretrained.input_mean.flatten(), imagenet[0])
    assert torch.allclose(pretrained.input_std.flatten(), imagenet[1])
    forced = _network(fitted, pretrained=True, normalize="dataset")
    assert torch.allclose(forced.input_mean.flatten(), torch.tensor(fitted.image_mean))
    with pytest.raises(GeoguessError, match="model.normalize"):
        _network(fitted, normalize="imagenet")


def test_inference_runs_the_backbone_in_bounded_chunks_with_the_same_features(fitted):
    """Evaluation splits a batch into the feature cache's blocks of locations (peak memory
    bounded whatever the batch size); training keeps one pass (batch norm's batch statistics)."""
    from geoguess.models.feature_cache import BATCH_LOCATIONS

    block = 4 * BATCH_LOCATIONS  # views per pass

    module = _network(fitted)
    passes = []
    module.backbone.register_forward_pre_hook(lambda m, args: passes.append(len(args[0])))
    images = torch.randint(0, 256, (40, 4, 3, 16, 16), dtype=torch.uint8)
    module.eval()
    with torch.no_grad():
        chunked = module.encode_views(images)
        assert passes == [block, block, 160 - 2 * block]
        whole = module.backbone(
            (images.flatten(0, 1).float() / 255 - module.input_mean) / module.input_std
        )
    assert torch.allclose(chunked, whole.reshape(40, 4, -1), atol=1e-6)
    passes.clear()
    module.train()
    module.encode_views(images)
    assert passes == [160]
    passes.clear()
    module.eval()
    module.encode_views(images)  # gradients wanted for the backbone: one pass
    assert passes == [160]


def test_frozen_precision_bf16_runs_only_the_passes_no_gradient_flows_through(fitted):
    """model.frozen_precision=bf16: the feature cache, evaluation and a frozen backbone's steps
    in bf16 autocast (float32 features, close to the float32 ones); a pass whose gradients
    train the backbone stays in float32."""
    torch.manual_seed(0)
    full = _network(fitted).eval()
    half = _network(fitted, frozen_precision="bf16").eval()
    half.load_state_dict(full.state_dict())
    images = batch_of(fitted, 8)["images"]
    with torch.no_grad():
        exact, fast = full.encode_views(images), half.encode_views(images)
        assert torch.equal(fast, half.encode_views(images))  # cached and live: the same bits
    assert fast.dtype == torch.float32 and not torch.equal(fast, exact)
    assert (fast - exact).norm() / exact.norm() < 0.02
    assert torch.equal(half.encode_views(images), exact)  # the backbone trains: float32
    half.backbone.requires_grad_(False)
    assert torch.equal(half.encode_views(images), fast)  # frozen: no gradient flows through
    with pytest.raises(GeoguessError, match="model.frozen_precision='16'"):
        _network(fitted, frozen_precision="16")


def test_training_step_and_nan_loss(fitted):
    module = _module(fitted)
    batch = batch_of(fitted)
    module.log = lambda *a, **k: None  # no Trainer attached
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss) and loss.requires_grad
    with torch.no_grad():
        module.head.linear.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="loss became nan"):
        module.training_step(batch, 0)  # checked on the host every check_finite_every steps
    module.training_step(batch, 1)  # no host sync here ...
    with pytest.raises(NonFiniteLossError, match="not finite in one of the last 25 steps"):
        module.on_train_epoch_end()  # ... but the epoch cannot end on it
    module.training_step(batch, 2)
    with pytest.raises(NonFiniteLossError, match="not finite in one of the last 25 steps"):
        module.on_validation_epoch_start()  # nor validate (it runs before the epoch's end)


def test_checkpoint_extras_are_plain_data_that_rebuild_the_network(fitted):
    import json

    backbone = from_conf("backbone", "tiny", global_pool="catavgmax")
    network = _network(fitted, backbone=backbone, fusion="attention", hidden=24, dropout=0.3)
    module = GeoguessModule(
        network, config={"backbone": {"name": "tiny"}}, check_finite_every=CHECK_FINITE_EVERY
    ).eval()
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    extra = checkpoint["geoguess"]
    assert extra["version"] == 3
    assert extra["spec"]["backbone"] == {"name": "test_efficientnet", "global_pool": "catavgmax"}
    assert (extra["spec"]["hidden"], extra["spec"]["dropout"]) == (24, 0.3)
    assert extra["spec"]["head"]["kind"] == "classification"
    assert extra["inference"] == InferenceSpec.plain().to_dict()
    assert json.loads(json.dumps(extra)) == extra
    from geoguess.data import FittedData

    spec = NetworkSpec.from_dict(extra["spec"])
    assert spec == network.spec  # the description read back through the same types
    rebuilt = GeoNetwork.from_spec(spec, FittedData.from_dict(extra["fitted"])).eval()
    rebuilt.load_state_dict(network.state_dict())  # strict: the same layers, the same shapes
    images = batch_of(fitted, 3)["images"]
    assert torch.allclose(rebuilt(images), module(images))


def test_a_checkpoint_description_is_read_through_the_configs_types(fitted):
    """What a config could not give is refused in a checkpoint too, naming the setting."""
    spec = _network(fitted).spec.to_dict()
    bad = {
        "frozen_precision": ("fp8", "model.frozen_precision='fp8'"),
        "hidden": ("1024", "model.hidden='1024' is not a int"),
        "channels_last": ("yes", "model.channels_last='yes'"),
        "fusion": ("sum", "model.fusion='sum'"),
        "unknown": (1, "unknown NetworkSpec settings: unknown"),
    }
    for key, (value, message) in bad.items():
        with pytest.raises(SpecError, match=message.replace("(", r"\(")):
            NetworkSpec.from_dict({**spec, key: value})
    with pytest.raises(SpecError, match="global_pool='gem'"):
        NetworkSpec.from_dict({**spec, "backbone": {**spec["backbone"], "global_pool": "gem"}})
    with pytest.raises(SpecError, match="hub models"):
        NetworkSpec.from_dict({**spec, "backbone": {**spec["backbone"], "name": "hf-hub:x/y"}})
    with pytest.raises(SpecError, match="head.decode='best'"):
        NetworkSpec.from_dict({**spec, "head": {**spec["head"], "decode": "best"}})
    half = NetworkSpec.from_dict({**spec, "frozen_precision": "bf16", "channels_last": True})
    assert half.frozen_precision == "bf16" and half.channels_last is True


def test_a_format_2_checkpoint_migrates_and_rebuilds_as_it_ran(fitted):
    """Format 2 (stop 22 and before): partial specs whose missing keys mean what ran before the
    option existed (average pooling, no hidden layer, float32), weights without the `network.`
    prefix, no test settings; they load and run as they did, and resume compares them so."""
    from geoguess.models.checkpoint import CheckpointError, check_architecture
    from geoguess.models.spec import migrate

    network = _network(fitted, dropout=0.1).eval()
    spec = network.spec.to_dict()
    old_spec = {
        "backbone": {"name": spec["backbone"]["name"]},
        "fusion": "concat",
        "dropout": 0.1,
        "head": {
            "kind": "classification",
            "snap_to_land": True,
            "points": "clipped",
            "smoothing_km": None,
            "decode": "weighted",
        },
        "input_mean": list(spec["input_mean"]),
        "input_std": list(spec["input_std"]),
    }
    weights = {k: v.clone() for k, v in network.state_dict().items()}
    state = dict(weights)
    migrated = migrate({"version": 2, "spec": old_spec, "fitted": {}}, state)
    assert migrated["version"] == 3 and set(state) == {f"network.{k}" for k in weights}
    assert NetworkSpec.from_dict(migrated["spec"]) == network.spec
    assert migrated["inference"] == InferenceSpec.plain().to_dict()
    check_architecture({"geoguess": migrated, "state_dict": state}, network.spec)
    wider = _network(fitted, dropout=0.1, hidden=24).spec
    with pytest.raises(CheckpointError, match="hidden: 0 in the checkpoint, 24 now"):
        check_architecture({"geoguess": migrated, "state_dict": state}, wider)
    with pytest.raises(SpecError, match="checkpoint format 1 is not one"):
        migrate({"version": 1, "spec": old_spec})


@pytest.mark.parametrize("pool, width", [("avg", 256), ("max", 256), ("catavgmax", 512)])
def test_global_pool_sets_what_the_backbone_returns(pool, width):
    backbone = from_conf("backbone", "tiny", global_pool=pool).eval()
    x = torch.rand(2, 3, 32, 32)
    features = backbone(x)
    assert features.shape == (2, width) == (2, backbones.feature_size(backbone))
    assert backbones.global_pool(backbone) == pool
    maps = backbone.forward_head(backbone.forward_features(x), pre_logits=True)
    assert torch.equal(features, maps)
    if pool == "max":  # the largest activation of each channel, however small its region
        expected = backbone.forward_features(x).amax(dim=(2, 3))
        torch.testing.assert_close(features, expected)
    with pytest.raises(backbones.BackboneError, match="global_pool='gem'"):
        from_conf("backbone", "tiny", global_pool="gem")


def test_a_hidden_layer_combines_features_a_linear_head_cannot():
    """XOR of two features: no linear head separates it, one hidden layer does. The default
    (hidden 0, no dropout) adds nothing: the write-up's linear head."""
    assert list(fusion.Neck(8).parameters()) == [] and fusion.Neck(8).out_features == 8
    assert fusion.Neck(8, hidden=4).out_features == 4
    x = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]]).repeat(8, 1)
    y = (x[:, 0] * x[:, 1] > 0).long()

    def accuracy(hidden: int) -> float:
        torch.manual_seed(0)
        neck = fusion.Neck(2, hidden=hidden)
        model = torch.nn.Sequential(neck, torch.nn.Linear(neck.out_features, 2))
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(300):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        return (model(x).argmax(1) == y).float().mean().item()

    assert accuracy(hidden=16) == 1.0
    assert accuracy(hidden=0) <= 0.75
    with pytest.raises(GeoguessError, match="model.hidden=-1"):
        fusion.Neck(8, hidden=-1)


# -- unfreezing ---------------------------------------------------------------------------------


def test_schedules():
    assert [
        from_conf("unfreeze", "at_epoch", epoch=2).trainable_stages(e, 5) for e in range(4)
    ] == [0, 0, 5, 5]
    assert [from_conf("unfreeze", "gradual", every=2).trainable_stages(e, 3) for e in range(9)] == [
        0,
        0,
        1,
        1,
        2,
        2,
        3,
        3,
        3,
    ]
    assert from_conf("unfreeze", "never").trainable_stages(0, 4) == 4
    assert [from_conf("unfreeze", "frozen").trainable_stages(e, 4) for e in range(3)] == [0, 0, 0]
    with pytest.raises(GeoguessError):
        from_conf("unfreeze", "gradual", every=0)


def test_apply_schedule_freezes_stages_and_their_batchnorm():
    backbone = from_conf("backbone", "tiny").train()
    stages = backbones.stage_parameters(backbone)
    assert len(stages) > 2
    unfreeze.apply_schedule(backbone, 1)
    params = dict(backbone.named_parameters())
    assert all(params[n].requires_grad for n in stages[-1])
    assert not any(params[n].requires_grad for s in stages[:-1] for n in s)
    bns = {
        n: m
        for n, m in backbone.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    }
    last = {n.rsplit(".", 1)[0] for n in stages[-1]}
    assert any(bn.training for n, bn in bns.items() if n in last)
    assert not any(bn.training for n, bn in bns.items() if n not in last)
    unfreeze.apply_schedule(backbone, len(stages))
    assert all(p.requires_grad for p in backbone.parameters())
    assert all(bn.training for bn in bns.values())


# -- metrics ------------------------------------------------------------------------------------


def test_error_stats_and_geoguessr_score(country):
    stats = metrics.error_stats(np.array([0.5, 10.0, 50.0, 200.0]))
    assert stats == {
        "haversine_km": pytest.approx(65.125),
        "median_km": pytest.approx(30.0),
        "acc_1km": 0.25,
        "acc_25km": 0.5,
        "acc_100km": 0.75,
    }
    d = country.diagonal_km
    assert metrics.geoguessr_score(np.array([0.0]), d) == pytest.approx(5000)
    assert metrics.geoguessr_score(np.array([d]), d) == pytest.approx(5000 * np.exp(-10))


def test_baseline_is_the_error_of_the_training_mean():
    lat, lon = np.array([45.0, 45.0]), np.array([15.0, 16.0])
    mlat, mlon = metrics.mean_location(lat, lon)
    assert mlat == pytest.approx(45.0, abs=0.01) and mlon == pytest.approx(15.5, abs=1e-3)
    errors = metrics.baseline_errors(lat, lon, np.array([45.0]), np.array([15.5]))
    assert errors[0] < 2.0  # the mean of two points on a parallel bulges north a little


# -- hybrid head, refinement, test-time augmentation, confidence --------------------------------


def test_hybrid_head_decodes_points_plus_offsets(fitted):
    head = heads.HybridHead(8, fitted.grid, fitted.targets, fitted.country, snap_to_land=False)
    c = head.num_classes
    output = torch.zeros(2, 3 * c, dtype=torch.float64)
    output[:, :c] = -1e4
    output[0, 3], output[1, 5] = 0.0, 0.0
    output[0, c + 2 * 3 : c + 2 * 3 + 2] = torch.tensor([0.5, -0.25])  # class 3's offset
    xy = head.to_projected(output).numpy()
    points = head.class_xy.numpy()
    scale = head.offset_scale_m
    assert xy[0] == pytest.approx(points[3] + scale * np.array([0.5, -0.25]), abs=1e-6)
    assert xy[1] == pytest.approx(points[5], abs=1e-6)  # no offset: the class point
    # Two equally likely cells: "weighted" lands between, "top" on the first one.
    output[1, 7] = 0.0
    assert head.to_projected(output)[1].numpy() == pytest.approx(
        (points[5] + points[7]) / 2, abs=1e-6
    )
    top = heads.HybridHead(8, fitted.grid, fitted.targets, fitted.country, decode="top")
    assert top.to_projected(output)[1].numpy() == pytest.approx(points[5], abs=1e-6)
    # The loss trains the true cell's offset towards the location.
    batch = batch_of(fitted, 4)
    output = torch.zeros(4, 3 * c, requires_grad=True)
    head.loss(output, batch).backward()
    ids = batch["class_id"]
    offset_grad = output.grad[:, c:].reshape(4, c, 2)
    assert offset_grad[torch.arange(4), ids].abs().sum() > 0
    others = offset_grad.clone()
    others[torch.arange(4), ids] = 0
    assert others.abs().sum() == 0


def test_median_decode_minimises_the_expected_distance_the_mean_does_not(fitted):
    """The spatial median against a brute-force search over a 1 km lattice of the expected
    distance; a hesitation between two far cells puts the mean between them, the median on
    the likelier one."""
    head = heads.ClassificationHead(
        8, fitted.grid, fitted.targets, fitted.country, snap_to_land=False, decode="median"
    )
    points = head.class_xy.numpy()
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(3, head.num_classes, generator=generator, dtype=torch.float64)
    far = np.argmax(np.linalg.norm(points - points[0], axis=1))
    logits[2] = -1e4
    logits[2, 0], logits[2, far] = np.log(0.6), np.log(0.4)
    median = head.to_projected(logits).numpy()
    p = torch.softmax(logits, -1).numpy()

    def expected_km(xy: np.ndarray, row: int) -> np.ndarray:
        return (np.linalg.norm(points[None] - xy[:, None], axis=-1) @ p[row]) / 1000

    for row in range(3):
        east, north = np.meshgrid(*(np.arange(-30e3, 30e3, 1e3) + median[row][k] for k in (0, 1)))
        lattice = np.column_stack([east.ravel(), north.ravel()])
        assert expected_km(median[row : row + 1], row)[0] <= expected_km(lattice, row).min() + 1e-3
    assert median[2] == pytest.approx(points[0], abs=2.0)
    head.decode_mode = "weighted"
    mean = head.to_projected(logits).numpy()
    assert mean[2] == pytest.approx(0.6 * points[0] + 0.4 * points[far], abs=1e-6)
    assert expected_km(mean[2:], 2)[0] > expected_km(median[2:], 2)[0] + 10
    with pytest.raises(GeoguessError, match="head.decode='middle'"):
        heads.ClassificationHead(8, fitted.grid, fitted.targets, fitted.country, decode="middle")


def test_mirror_swaps_east_and_west_and_flips_each_view():
    from geoguess.models.refinement import mirror_views

    images = torch.arange(2 * 4 * 3 * 2 * 3).reshape(2, 4, 3, 2, 3)
    mirrored = mirror_views(images)
    assert torch.equal(mirrored[:, 1], images[:, 3].flip(-1))
    assert torch.equal(mirrored[:, 3], images[:, 1].flip(-1))
    assert torch.equal(mirrored[:, 0], images[:, 0].flip(-1))
    assert torch.equal(mirror_views(mirrored), images)


def test_retrieval_moves_to_similar_training_locations_in_likely_cells():
    from geoguess.models.refinement import Retrieval

    embeddings = torch.nn.functional.normalize(torch.eye(4)[:, :3] + 0.01, dim=-1)
    xy = torch.tensor([[0.0, 0.0], [1000.0, 0.0], [0.0, 1000.0], [5e5, 5e5]], dtype=torch.float64)
    classes = torch.tensor([0, 0, 1, 2])
    retrieval = Retrieval(embeddings, xy, classes, k=1, cells=1, temperature=0.05)
    query = embeddings[[1]]
    # Class 0 likeliest: its most similar location is #1.
    refined, found = retrieval.refine(query, torch.tensor([[0.8, 0.1, 0.1]]))
    assert found.item() and refined[0].tolist() == [1000.0, 0.0]
    # Class 2 likeliest: only location #3 is a candidate, however dissimilar.
    refined, _ = retrieval.refine(query, torch.tensor([[0.1, 0.1, 0.8]]))
    assert refined[0].tolist() == [5e5, 5e5]
    # k=2 within class 0: the softmax-weighted mean of #0 and #1, by similarity.
    retrieval.k = 2
    refined, _ = retrieval.refine(query, torch.tensor([[0.8, 0.1, 0.1]]))
    sims = (embeddings[[0, 1]] @ query[0]).double()
    weights = torch.softmax(sims / 0.05, dim=0)
    assert refined[0].numpy() == pytest.approx((weights[:, None] * xy[[0, 1]]).sum(0).numpy())


def test_confidence_radius_holds_the_mass_and_calibrates_to_its_quantile(fitted):
    from geoguess.models.heads import mass_radius_km
    from geoguess.models.refinement import radius_scale

    places = torch.tensor([[[0.0, 0.0], [3000.0, 0.0], [0.0, 10_000.0]]], dtype=torch.float64)
    probabilities = torch.tensor([[0.4, 0.3, 0.3]], dtype=torch.float64)
    at = torch.zeros(1, 2, dtype=torch.float64)
    assert mass_radius_km(probabilities, places, at, 0.5).item() == pytest.approx(3.0)
    assert mass_radius_km(probabilities, places, at, 0.9).item() == pytest.approx(10.0)
    rng = np.random.default_rng(0)
    errors = rng.exponential(30, 2000)
    raw = rng.uniform(1, 3, (2000, 2))
    scale = radius_scale(errors, raw)
    for i, q in enumerate((0.5, 0.9)):
        assert np.mean(errors <= raw[:, i] * scale[i]) == pytest.approx(q, abs=0.002)


def test_the_calibrated_90_percent_circle_never_falls_inside_the_50_percent_one(fitted):
    """Each quantile's scale comes from its own validation ratios; a small or odd validation
    split can make the 50 % factor the larger, which must not put r90 inside r50."""
    predictor = Predictor(_network(fitted).eval(), extras=InferenceExtras((1.0, 1.0)))
    batch = batch_of(fitted)
    plain = predictor.guess(batch["images"])
    assert (plain["radius90"] >= plain["radius50"]).all()
    predictor.extras.radius_scale = (50.0, 0.01)  # r50 scaled far past r90
    odd = predictor.guess(batch["images"])
    assert torch.equal(odd["radius50"], plain["radius50"] * 50.0)
    assert torch.equal(odd["radius90"], odd["radius50"])


def test_mirror_tta_applies_at_test_not_in_the_epochs_validation(fitted, monkeypatch):
    """The mirrored pass costs a second backbone pass: validation (checkpoint choice) skips it,
    the test and the calibration pass (`guess` called directly) use it."""
    import geoguess.predictor as module_mod

    module = _module(fitted, tta="mirror").eval()
    module.log = lambda *a, **k: None  # no Trainer attached
    mirrored = []
    real_mirror = module_mod.mirror_views
    monkeypatch.setattr(
        module_mod, "mirror_views", lambda images: mirrored.append(1) or real_mirror(images)
    )
    batch = batch_of(fitted)
    with torch.no_grad():
        module._outputs["val"], module._outputs["test"] = [], []
        module.validation_step(batch, 0)
        assert mirrored == []
        module.test_step(batch, 0)
        assert mirrored == [1]
        plain = module.predictor.guess(batch["images"], tta=False)["xy"]
        both = module.predictor.guess(batch["images"])["xy"]
    assert len(mirrored) == 2
    flipped = module.head.to_projected(module(real_mirror(batch["images"])))
    torch.testing.assert_close(both, (plain + flipped) / 2)


@pytest.mark.parametrize("name", ["tiny", "lcnet_050", "mobilenetv3_small_050"])
def test_any_timm_backbone_fits_the_fusion_whatever_follows_its_pooling(name, fitted):
    """LCNet and MobileNetV3 end in a hidden layer after the pooling (1,280 features, not
    `num_features`): the fusion must be built for what the backbone really returns."""
    backbone = from_conf("backbone", "tiny", name=name)
    module = GeoguessModule(
        _network(fitted, backbone=backbone), check_finite_every=CHECK_FINITE_EVERY
    )
    width = backbone.eval()(torch.zeros(2, 3, 32, 32)).shape[-1]
    assert backbones.feature_size(backbone) == width
    assert module.network.fusion.out_features == 4 * width
    scores = module.eval()(torch.zeros((2, 4, 3, 32, 32), dtype=torch.uint8))
    assert scores.shape[0] == 2


def test_make_train_runs_best_cpu():
    """The README's `make train` is `experiment=best_cpu` (issue 10: the default run at about 4
    CPU minutes must halve the mean-location baseline; the tiny CNN from scratch does not)."""
    makefile = (CONF.parent / "Makefile").read_text()
    recipe = makefile.split("\ntrain:", 1)[1].split("\n\n", 1)[0]
    assert "-m geoguess.train experiment=best_cpu $(ARGS)" in recipe
