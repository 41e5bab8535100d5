"""Batch augmentation: torchvision's distributions, torchvision's pixels, pure function of keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from geoguess.data import augment_cpu
from geoguess.data.augment import BatchAugment, TorchvisionViewAugment, sample_params

DRAWS = 4000
S = 64


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance between the empirical distributions."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


# Critical KS distance at alpha = 0.001 for two samples of DRAWS each.
KS_LIMIT = 1.95 * np.sqrt(2 / DRAWS)


def torchvision_draws(height: int, width: int, scale, ratio) -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    crop = v2.RandomResizedCrop(S, scale=scale, ratio=ratio, antialias=True)
    jitter = v2.ColorJitter(brightness=0.2, contrast=0.2)
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    boxes = [crop.make_params([image]) for _ in range(DRAWS)]
    colours = [jitter.make_params([image]) for _ in range(DRAWS)]
    order = [c["fn_idx"].tolist() for c in colours]
    return {
        "top": np.array([p["top"] for p in boxes]),
        "left": np.array([p["left"] for p in boxes]),
        "height": np.array([p["height"] for p in boxes]),
        "width": np.array([p["width"] for p in boxes]),
        "brightness": np.array([c["brightness_factor"] for c in colours]),
        "contrast": np.array([c["contrast_factor"] for c in colours]),
        "contrast_first": np.array([o.index(1) < o.index(0) for o in order]),
    }


def our_draws(height: int, width: int, scale, ratio) -> dict[str, np.ndarray]:
    # DRAWS views: DRAWS / 4 locations of four views each.
    params = sample_params(3, 0, np.arange(DRAWS // 4), 4, height, width, scale, ratio)
    names = ("top", "left", "height", "width", "brightness", "contrast", "contrast_first")
    return {name: getattr(params, name).reshape(-1) for name in names}


def test_crop_and_jitter_parameters_follow_torchvisions_distributions():
    ours = our_draws(S, S, (0.7, 1.0), (0.9, 1.1))
    theirs = torchvision_draws(S, S, (0.7, 1.0), (0.9, 1.1))
    derived = {
        "scale": lambda d: d["height"] * d["width"] / S**2,
        "aspect": lambda d: d["width"] / d["height"],
        "top": lambda d: d["top"],
        "left": lambda d: d["left"],
        "centre_y": lambda d: d["top"] + d["height"] / 2,
        "brightness": lambda d: d["brightness"],
        "contrast": lambda d: d["contrast"],
    }
    for name, value in derived.items():
        distance = ks_statistic(value(ours), value(theirs))
        assert distance < KS_LIMIT, (name, distance)
    for name in ("scale", "aspect", "brightness", "contrast"):
        mine, ref = derived[name](ours), derived[name](theirs)
        assert mine.mean() == pytest.approx(ref.mean(), abs=4 * ref.std() / np.sqrt(DRAWS))
        assert mine.std() == pytest.approx(ref.std(), rel=0.08)
    # The support itself: 70-100 % of the area (up to rounding), factors in [0.8, 1.2].
    assert derived["scale"](ours).min() > 0.68 and derived["scale"](ours).max() <= 1.0
    assert (ours["width"] <= S).all() and (ours["height"] <= S).all()
    assert (ours["top"] + ours["height"] <= S).all() and (ours["left"] >= 0).all()
    assert ours["brightness"].min() >= 0.8 and ours["brightness"].max() <= 1.2
    # Which adjustment comes first: a fair coin in both.
    assert ours["contrast_first"].mean() == pytest.approx(0.5, abs=0.03)
    assert theirs["contrast_first"].mean() == pytest.approx(0.5, abs=0.03)


def test_centre_crop_fallback_matches_torchvision():
    # An aspect range that never fits a square image: every draw falls back to the centre crop.
    ours = our_draws(40, 40, (0.9, 1.0), (1.5, 2.0))
    theirs = torchvision_draws(40, 40, (0.9, 1.0), (1.5, 2.0))
    for name in ("top", "left", "height", "width"):
        assert set(ours[name].tolist()) == set(theirs[name].tolist()), name
    assert set(ours["height"].tolist()) == {27} and set(ours["width"].tolist()) == {40}


def smooth_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 12, 6, 6, generator=generator) * 255
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic")
    noise = torch.rand(batch, 12, size, size, generator=generator) * 20
    images = (fine + noise).round().clamp(0, 255).to(torch.uint8)
    return images.reshape(batch, 4, 3, size, size)


def torchvision_with(params, images: torch.Tensor, size: int = S) -> torch.Tensor:
    """torchvision's functional ops on each view with the given parameters."""
    out = torch.empty_like(images)
    for b in range(images.shape[0]):
        for v in range(images.shape[1]):
            box = [int(getattr(params, k)[b, v]) for k in ("top", "left", "height", "width")]
            x = TF.resized_crop(images[b, v], *box, [size, size], antialias=True)
            bright, contrast = float(params.brightness[b, v]), float(params.contrast[b, v])
            if params.contrast_first[b, v]:
                x = TF.adjust_brightness(TF.adjust_contrast(x, contrast), bright)
            else:
                x = TF.adjust_contrast(TF.adjust_brightness(x, bright), contrast)
            out[b, v] = x
    return out


@pytest.mark.parametrize(
    "backend,mean_limit,max_limit", [("per_view", 0.15, 3), ("batched", 0.4, 8)]
)
def test_pixels_match_torchvision_given_the_same_parameters(backend, mean_limit, max_limit):
    images = smooth_images(6, S)
    indices = torch.arange(10, 16)
    augment = BatchAugment(seed=2, backend=backend)
    out = augment(images, indices, epoch=1)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    reference = torchvision_with(augment.params(indices, 1, 4, S, S), images)
    diff = (out.int() - reference.int()).abs().float()
    assert diff.mean() < mean_limit and diff.max() <= max_limit, (diff.mean(), diff.max())
    # And it did something: the views differ from the input by far more than that.
    assert (out.int() - images.int()).abs().float().mean() > 5


@pytest.mark.parametrize("backend", ["per_view", "batched"])
def test_output_is_a_pure_function_of_seed_epoch_and_index(backend):
    images = smooth_images(5, S, seed=1)
    indices = torch.tensor([7, 3, 99, 0, 42])
    augment = BatchAugment(seed=0, backend=backend)
    out = augment(images, indices, epoch=4)
    assert torch.equal(out, BatchAugment(seed=0, backend=backend)(images, indices, epoch=4))
    # Batch size and composition do not matter: an item alone comes out the same.
    for k in range(5):
        alone = augment(images[k : k + 1], indices[k : k + 1], epoch=4)
        assert torch.equal(alone[0], out[k])
    # Nor does global RNG state; epoch, index and seed do.
    torch.manual_seed(123)
    np.random.seed(123)
    assert torch.equal(augment(images, indices, epoch=4), out)
    assert not torch.equal(augment(images, indices, epoch=5), out)
    assert not torch.equal(augment(images, indices + 1, epoch=4), out)
    assert not torch.equal(BatchAugment(seed=1, backend=backend)(images, indices, 4), out)


def test_empty_batch_and_bad_input():
    augment = BatchAugment()
    empty = torch.zeros(0, 4, 3, S, S, dtype=torch.uint8)
    assert augment(empty, torch.zeros(0, dtype=torch.int64), 0).shape == empty.shape
    with pytest.raises(ValueError, match="uint8"):
        augment(empty.float(), torch.zeros(0), 0)
    with pytest.raises(ValueError, match="indices"):
        augment(smooth_images(2, S), torch.arange(3), 0)
    with pytest.raises(ValueError, match="backend"):
        BatchAugment(backend="gpu")


def test_per_view_kernel_leaves_torchs_thread_count_alone():
    before = torch.get_num_threads()
    BatchAugment(backend="per_view")(smooth_images(2, S), torch.arange(2), 0)
    assert torch.get_num_threads() == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    images = smooth_images(4, S)
    indices = torch.arange(4)
    augment = BatchAugment(seed=0)
    on_gpu = augment(images.cuda(), indices.cuda(), 0)
    assert on_gpu.is_cuda and on_gpu.dtype == torch.uint8
    on_cpu = augment(images, indices, 0)
    assert (on_gpu.cpu().int() - on_cpu.int()).abs().float().mean() < 0.5


def test_reference_augmentation_is_torchvisions():
    views = smooth_images(1, S)[0]
    torch.manual_seed(0)
    out = TorchvisionViewAugment(S)(views)
    assert out.shape == views.shape and out.dtype == torch.uint8
    assert not torch.equal(out, views)


def test_per_view_pivot_from_sampled_rows_is_within_about_a_grey_level():
    # Views with what makes a row sample miss: sky-to-road gradients, bands, texture.
    size = 112
    rows = torch.linspace(0, 1, size).view(1, 1, size, 1)
    bands = (torch.arange(size).view(1, 1, size, 1) // 9 % 2) * 40.0
    base = smooth_images(4, size, seed=3).float().reshape(16, 3, size, size)
    images = (base * 0.5 + 180 * (1 - rows) + bands).clamp(0, 255).to(torch.uint8)
    weights = np.array(augment_cpu.GRAY_WEIGHTS)
    for view in images.permute(0, 2, 3, 1).numpy():
        counts = augment_cpu._pivot_histograms(np.ascontiguousarray(view))
        assert counts.shape == (3, 256) and (counts.sum(1) >= size * 32).all()
        sampled = weights @ (counts @ np.arange(256)) / counts[0].sum()
        full = weights @ view.reshape(-1, 3).mean(0)
        assert abs(sampled - full) < 1.5, (sampled, full)
    # Against torchvision (the whole view's pivot) on such views, as on the smooth ones.
    images = images.reshape(4, 4, 3, size, size)
    augment = BatchAugment(seed=5, backend="per_view")
    params = augment.params(torch.arange(4), 0, 4, size, size)
    out = augment_cpu.augment_per_view(images, params)
    diff = (out.int() - torchvision_with(params, images, size).int()).abs().float()
    assert diff.mean() < 0.15 and diff.max() <= 3, (diff.mean(), diff.max())


def test_per_view_kernel_is_the_same_with_and_without_opencv(monkeypatch):
    pytest.importorskip("cv2")
    images = smooth_images(3, S, seed=4)
    indices = torch.tensor([5, 1, 8])
    augment = BatchAugment(seed=1, backend="per_view")
    with_opencv = augment(images, indices, epoch=2)
    monkeypatch.setattr(augment_cpu, "_opencv", lambda: None)
    without = augment(images, indices, epoch=2)
    assert torch.equal(with_opencv, without)
    assert (with_opencv.int() - images.int()).abs().float().mean() > 5


def _augment_in_child(images, indices, queue) -> None:
    params = BatchAugment(seed=3).params(indices, 0, 4, S, S)
    # As numpy (pickled by value): a tensor would be sent as a handle to this process's memory.
    queue.put(augment_cpu.augment_per_view(images, params, threads=2).numpy())


def test_per_view_threads_work_in_a_forked_child():
    import multiprocessing

    images, indices = smooth_images(2, S, seed=6), torch.arange(2)
    params = BatchAugment(seed=3).params(indices, 0, 4, S, S)
    here = augment_cpu.augment_per_view(images, params, threads=2)  # this process's threads
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_augment_in_child, args=(images, indices, results))
    child.start()
    there = torch.from_numpy(results.get(timeout=60))
    child.join(timeout=60)
    assert child.exitcode == 0 and torch.equal(there, here)


def test_the_resize_without_torchs_private_op_gives_the_same_bytes():
    """augment writes through torch's private `_upsample_bilinear2d_aa.out`; where a torch
    lacks it, the public F.interpolate runs instead, byte for byte the same."""
    from geoguess.data.augment_cpu import _RESIZE_OUT, resize_into

    crop = np.random.default_rng(0).integers(0, 256, (37, 51, 3), dtype=np.uint8)
    fast, public = (np.zeros((64, 64, 3), np.uint8) for _ in range(2))
    resize_into(crop, fast)
    resize_into(crop, public, write_op=None)
    assert _RESIZE_OUT is not None  # this torch has it: the fast path is what runs
    assert np.array_equal(fast, public)
    ramp = np.broadcast_to(np.linspace(0, 255, 51).astype(np.uint8)[None, :, None], (37, 51, 3))
    resize_into(np.ascontiguousarray(ramp), fast)
    assert (np.diff(fast[32, :, 0].astype(int)) >= 0).all()  # a resize: the ramp stays a ramp
    assert fast[:, 0].max() < 10 and fast[:, -1].min() > 245


def test_packed_parameters_round_trip_exactly():
    from geoguess.data.augment import PARAM_COLUMNS, pack_params, unpack_params

    params = BatchAugment(seed=4).params(torch.tensor([9, 2, 40]), 3, 4, S, S)
    packed = pack_params(params)
    assert packed.dtype == torch.float64 and tuple(packed.shape) == (3, 4, len(PARAM_COLUMNS))
    back = unpack_params(packed)
    for name in PARAM_COLUMNS:
        original, restored = getattr(params, name), getattr(back, name)
        assert restored.dtype == original.dtype and np.array_equal(restored, original), name


@pytest.mark.parametrize("backend", ["batched", "per_view"])
def test_parameters_prepared_on_the_host_give_the_same_bytes(backend):
    """The loader's path (parameters drawn before the batch moves, handed over packed) and the
    kernels fed `ViewParams` directly, as they were before packing, agree byte for byte."""
    from geoguess.data.augment import augment_batched

    images, indices = smooth_images(5, S, seed=8), torch.tensor([7, 0, 3, 12, 5])
    augment = BatchAugment(seed=2, backend=backend)
    drawn_here = augment(images, indices, 6)
    prepared = augment.prepare(indices, 6, images.shape)
    handed_over = augment(images, None, 6, params=prepared)
    params = augment.params(indices, 6, 4, S, S)
    kernel = augment_batched if backend == "batched" else augment_cpu.augment_per_view
    direct = kernel(images, params)
    assert torch.equal(drawn_here, handed_over) and torch.equal(drawn_here, direct)
    assert not torch.equal(drawn_here, images)
    with pytest.raises(ValueError, match="parameters"):
        augment(images[:4], None, 6, params=prepared)
