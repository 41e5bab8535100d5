"""The image cache: equal to direct decoding, parallel = serial, streamed, keyed by the data."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from PIL import Image

from geoguess.data import cache as cache_mod
from geoguess.data import decode as decode_mod
from geoguess.data.io import image_paths
from geoguess.data.validation import validate_dataset
from tests.data_helpers import croatia, touch_newer, view_path, write_dataset


def full_decode(path, size: int) -> np.ndarray:
    """The original's way: decode at full resolution, then resize (no DCT scaling)."""
    with Image.open(path) as img:
        rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb).transpose(2, 0, 1)


def build(root, tmp_path, size, workers=0):
    report = validate_dataset(
        [root],
        croatia(),
        image_size=size,
        cache_root=tmp_path / "cache",
        workers=workers,
        progress=False,
    )
    assert not report.problems, report.summary()
    return report


def test_cache_equals_direct_decoding_on_real_images(real_sample, tmp_path):
    report = build(real_sample, tmp_path, 224, workers=2)
    cache = report.cache
    assert cache.shape == (100, 4, 3, 224, 224)
    array = cache.open()
    for uuid in report.valid["uuid"][:5]:
        for j, path in enumerate(image_paths(real_sample, uuid)):
            cached = array[cache.index[uuid], j].astype(np.int16)
            direct = full_decode(path, 224).astype(np.int16)
            diff = np.abs(cached - direct)
            # Draft decoding at 1/2 scale differs from a full decode only by resampling noise.
            assert diff.mean() < 3.0 and np.percentile(diff, 99) < 25, (uuid, j, diff.mean())


def test_cache_rows_follow_uuids_and_match_each_file(tmp_path):
    root = tmp_path / "data"
    frame = write_dataset(root, 10, size=64, seed=1)
    cache = build(root, tmp_path, 32).cache
    assert list(cache.uuids) == sorted(frame["uuid"])
    array = cache.open()
    for uuid in frame["uuid"]:
        for j, path in enumerate(image_paths(root, uuid)):
            diff = np.abs(array[cache.index[uuid], j].astype(int) - full_decode(path, 32))
            assert diff.mean() < 4.0
    # Views are distinct images: the heading order is not scrambled into copies.
    first = array[0].astype(int)
    assert all(np.abs(first[0] - first[k]).mean() > 5 for k in (1, 2, 3))


def test_parallel_build_equals_serial_build(tmp_path):
    root = tmp_path / "data"
    write_dataset(root, 24, size=40, seed=2)
    serial = build(root, tmp_path / "serial", 32, workers=0).cache
    parallel = build(root, tmp_path / "parallel", 32, workers=2).cache
    assert serial.uuids == parallel.uuids
    # Workers write their own rows at their offsets: the files are byte-identical.
    assert serial.data_path.read_bytes() == parallel.data_path.read_bytes()


def test_cache_is_a_npy_holding_exactly_the_decoded_views(tmp_path):
    """Round trip: the .npy loads without the manifest, and each row is decode_location of
    that uuid's files (the cache's own decoder, so bytes equal)."""
    root = tmp_path / "data"
    frame = write_dataset(root, 11, size=48, seed=12)  # 11: the last pwrite is a short one
    cache = build(root, tmp_path, 24, workers=2).cache
    assert cache.data_path.suffix == ".npy"
    assert cache.data_path.stat().st_mode & 0o777 == 0o644  # like any file, not mkstemp's 0600
    loaded = np.load(cache.data_path)
    assert loaded.dtype == np.uint8 and loaded.shape == (11, 4, 3, 24, 24)
    assert cache.offset + loaded.nbytes == cache.data_path.stat().st_size
    for uuid in frame["uuid"]:
        paths = [str(p) for p in image_paths(root, uuid)]
        views, failures = decode_mod.decode_location(paths, 24)
        assert not failures
        assert loaded[cache.index[uuid]].tobytes() == views.tobytes()
    assert isinstance(cache.open(), np.memmap)


def test_failed_location_is_stored_as_zeros_and_listed(tmp_path):
    root = tmp_path / "data"
    frame = write_dataset(root, 9, size=32, seed=13)
    broken = view_path(root, frame["uuid"][4], 270)
    broken.write_bytes(broken.read_bytes()[:200])
    rows = frame.assign(root=str(root), latitude_raw="0", longitude_raw="0")
    cache = cache_mod.build_cache(tmp_path / "c", "f" * 64, rows, 16, workers=2, progress=False)
    assert list(cache.failed) == [cache_mod.view_key(broken)]
    assert "does not decode" in cache.failed[cache_mod.view_key(broken)]
    array = cache.open()
    assert not array[cache.index[frame["uuid"][4]]].any()
    assert all(array[cache.index[u]].any() for u in frame["uuid"] if u != frame["uuid"][4])
    assert cache_mod.load_verdicts(tmp_path / "c", "f" * 64) == cache.failed
    reloaded = cache_mod.ImageCache.load(tmp_path / "c", "f" * 64, 16)
    assert reloaded == cache


def test_default_workers_are_every_core(monkeypatch):
    monkeypatch.setattr(cache_mod.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert cache_mod.worker_count(None) == 3
    assert cache_mod.worker_count(0) == 0


def test_build_streams_with_flat_memory(tmp_path):
    root = tmp_path / "data"
    frame = write_dataset(root, 72, size=16, seed=3)
    rows = frame.assign(root=str(root), latitude_raw="0", longitude_raw="0")
    size = 96
    row_bytes = 4 * 3 * size * size

    def peak_of(n: int) -> int:
        tracemalloc.start()
        try:
            cache_mod.build_cache(
                tmp_path / f"cache-{n}", "k" * 64, rows[:n], size, workers=0, progress=False
            )
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak_of(24), peak_of(72)
    # Holding the array would need n rows; the build holds WRITE_ROWS of them, whatever n.
    assert large < 72 * row_bytes / 4, (large, 72 * row_bytes)
    assert large < 1.25 * small, (small, large)


def test_any_pil_readable_mode_and_size(tmp_path):
    rng = np.random.default_rng(4)
    folder = tmp_path / "views"
    folder.mkdir()
    pixels = rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert("L").save(folder / "gray.jpg")
    Image.fromarray(pixels).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(pixels).convert("RGBA").save(folder / "rgba.jpg", format="PNG")
    Image.fromarray(pixels).convert("P").save(folder / "palette.jpg", format="PNG")
    Image.fromarray(pixels).save(folder / "large.jpg")
    for path in sorted(folder.iterdir()):
        view = decode_mod.decode_image(path, 24)
        assert view.shape == (3, 24, 24) and view.dtype == np.uint8, path.name
    gray = decode_mod.decode_image(folder / "gray.jpg", 24)
    assert np.array_equal(gray[0], gray[1]) and np.array_equal(gray[1], gray[2])


def test_truncated_image_is_caught_even_if_pil_was_told_to_accept_them(tmp_path, monkeypatch):
    from PIL import ImageFile

    root = tmp_path / "data"
    frame = write_dataset(root, 4, size=64, seed=5)
    data = view_path(root, frame["uuid"][0], 0).read_bytes()
    view_path(root, frame["uuid"][0], 0).write_bytes(data[:-2])  # only the end marker is lost
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    report = validate_dataset(
        [root], croatia(), image_size=32, cache_root=tmp_path / "cache", workers=0, progress=False
    )
    assert [p.file for p in report.problems] == [str(view_path(root, frame["uuid"][0], 0))]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for whoever set it


def test_changed_file_gives_a_new_cache_with_its_pixels(tmp_path):
    root = tmp_path / "data"
    frame = write_dataset(root, 6, size=32, seed=6)
    first = build(root, tmp_path, 32).cache
    path = view_path(root, frame["uuid"][2], 90)
    Image.fromarray(np.full((32, 32, 3), 250, np.uint8)).save(path)
    touch_newer(path)
    second = build(root, tmp_path, 32).cache
    assert second.key != first.key and second.data_path != first.data_path
    view = second.open()[second.index[frame["uuid"][2]], 1]
    assert np.abs(view.astype(int) - 250).max() <= 3
    # The old cache is untouched (another run may still be reading it).
    assert first.data_path.exists()
    # Another size of the same data is a separate file under the same key.
    assert build(root, tmp_path, 16).cache.data_path.parent == second.data_path.parent


def test_incomplete_cache_is_rebuilt(tmp_path):
    root = tmp_path / "data"
    write_dataset(root, 5, size=32, seed=7)
    cache = build(root, tmp_path, 16).cache
    with open(cache.data_path, "r+b") as f:
        f.truncate(100)
    assert cache_mod.ImageCache.load(tmp_path / "cache", cache.key, 16) is None
    rebuilt = build(root, tmp_path, 16).cache
    assert rebuilt.data_path.stat().st_size == rebuilt.offset + int(np.prod(rebuilt.shape))
    # A cache of the old format (raw bytes, version 1) is not taken for this one.
    manifest = rebuilt.data_path.with_suffix(".json")
    old = manifest.read_text().replace('"version": 2', '"version": 1')
    manifest.write_text(old)
    assert cache_mod.ImageCache.load(tmp_path / "cache", rebuilt.key, 16) is None


def test_default_cache_location(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    assert cache_mod.default_cache_root(root) == root / ".geoguess-cache"
    # Where the data folder cannot hold the cache (here a file blocks it), the user cache is used.
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / ".geoguess-cache").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_mod.default_cache_root(blocked) == tmp_path / "xdg" / "geoguess"
    # A read-only dataset folder is left untouched (also when running as root).
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        assert cache_mod.default_cache_root(read_only) == tmp_path / "xdg" / "geoguess"
        assert not (read_only / ".geoguess-cache").exists()
    finally:
        read_only.chmod(0o755)


def test_verify_pass_matches_cache_verdicts(tmp_path):
    root = tmp_path / "data"
    frame = write_dataset(root, 6, size=48, seed=8)
    path = view_path(root, frame["uuid"][1], 180)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with_cache = validate_dataset(
        [root], croatia(), image_size=56, cache_root=tmp_path / "a", workers=0, progress=False
    )
    without = validate_dataset(
        [root], croatia(), cache_root=tmp_path / "b", workers=0, progress=False
    )
    assert (
        [p.file for p in with_cache.problems] == [p.file for p in without.problems] == [str(path)]
    )


def test_unwritable_cache_folder_is_a_clear_error(tmp_path):
    from geoguess.data.io import DataError

    root = tmp_path / "data"
    write_dataset(root, 3, size=16, seed=9)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(DataError, match="cannot write the image cache .* data.cache_dir"):
        validate_dataset(
            [root], croatia(), image_size=16, cache_root=tmp_path / "a-file" / "cache", workers=0
        )


def float_moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The former float64 sums: a float copy of the pixels, squared into another."""
    values = images.reshape(-1, 3, images.shape[-2] * images.shape[-1]).astype(np.float64)
    return values.sum(axis=(0, 2)), np.square(values).sum(axis=(0, 2)), values[:, 0].size


def test_integer_statistics_equal_the_float64_ones(tmp_path):
    from geoguess.data import stats as stats_mod

    rng = np.random.default_rng(14)
    array = rng.integers(0, 256, (150, 4, 3, 20, 20), dtype=np.uint8)
    array[:10] = 255  # extreme values: squares at their largest
    rows = rng.choice(150, 101, replace=False)
    moments = stats_mod.ChannelMoments()
    for start in range(0, 101, 7):
        moments.add(array[np.sort(rows)[start : start + 7]])
    total, total_sq, count = float_moments(array[rows])
    assert moments.count == count
    assert np.array_equal(moments.total.astype(np.float64), total)
    assert np.array_equal(moments.total_sq.astype(np.float64), total_sq)
    # The mean and std, as the float version computed them, bit for bit.
    mean = total / count
    std = np.maximum(np.sqrt(np.maximum(total_sq / count - mean**2, 0.0)), 1.0)
    assert stats_mod.stats_from_memmap(array, rows) == (
        tuple(float(v) for v in mean / 255.0),
        tuple(float(v) for v in std / 255.0),
    )
    with pytest.raises(TypeError, match="uint8"):
        moments.add(array[:2].astype(np.float32))


def cached_dataset(root, tmp_path, size=16):
    from geoguess.data.dataset import GeoguesserDataset

    report = build(root, tmp_path, size)
    frame = report.valid.sample(frac=1.0, random_state=0).reset_index(drop=True)
    targets = np.random.default_rng(0).random((len(frame), 2)).astype(np.float32)
    class_ids = np.arange(len(frame)) % 3
    return GeoguesserDataset(frame, size, targets, class_ids, cache=report.cache)


def test_read_batch_equals_the_collated_items(tmp_path):
    import torch

    root = tmp_path / "data"
    write_dataset(root, 12, size=32, seed=15)
    dataset = cached_dataset(root, tmp_path)
    indices = [7, 2, 11, 2, 0]
    batch = dataset.read_batch(indices)
    items = dataset.collate([dataset[i] for i in indices])
    assert batch.keys() == items.keys()
    for key in batch:
        if key == "uuid":
            assert batch[key] == items[key] == [dataset.uuids[i] for i in indices]
        else:
            assert batch[key].dtype == items[key].dtype, key
            assert torch.equal(batch[key], items[key]), key
    assert batch["index"].tolist() == indices
    array = dataset.cache.open()
    assert np.array_equal(batch["images"].numpy(), array[dataset.rows[indices]])
    empty = dataset.read_batch([])
    assert empty["images"].shape == (0, 4, 3, 16, 16) and empty["index"].shape == (0,)


def test_batch_loader_reads_every_location_once_per_epoch(tmp_path, monkeypatch):
    from geoguess.data import dataset as dataset_mod
    from geoguess.data.sampler import BlockShuffle, LocationShuffle

    root = tmp_path / "data"
    write_dataset(root, 23, size=32, seed=16)
    dataset = cached_dataset(root, tmp_path)
    advised = []
    real = dataset_mod.os.posix_fadvise
    monkeypatch.setattr(
        dataset_mod.os,
        "posix_fadvise",
        lambda fd, offset, length, advice: (
            advised.append((offset, length)) or real(fd, offset, length, advice)
        ),
    )
    for sampler in (LocationShuffle(23, seed=1), BlockShuffle(dataset.rows, 1, block_size=5)):
        loader = dataset_mod.batch_loader(dataset, sampler, batch_size=4, read_ahead=True)
        loader.sampler.set_epoch(3)  # as Lightning does
        batches = list(loader)
        seen = [i for b in batches for i in b["index"].tolist()]
        assert seen == list(sampler.rank_order(3)) and sorted(seen) == list(range(23))
        assert [len(b["uuid"]) for b in batches] == [4] * 5 + [3]
    # Only the block sampler reads ahead: each block's span of the file once, in row units.
    cache = dataset.cache
    assert len(advised) == len(BlockShuffle(dataset.rows, 1, block_size=5).blocks) == 5
    assert all((offset - cache.offset) % cache.row_bytes == 0 for offset, _ in advised)
    assert sum(length for _, length in advised) == 23 * cache.row_bytes


def test_in_process_batches_are_read_one_ahead_in_a_thread_that_stops(tmp_path, monkeypatch):
    import gc

    from geoguess.data import dataset as dataset_mod
    from geoguess.data.sampler import LocationShuffle

    root = tmp_path / "data"
    write_dataset(root, 12, size=32, seed=16)
    dataset = cached_dataset(root, tmp_path)
    loader = dataset_mod.batch_loader(dataset, LocationShuffle(12, seed=2), batch_size=4)
    iterator = iter(loader)
    first = next(iterator)
    thread = iterator._iterator._thread  # the read-ahead started at the first batch
    assert thread.is_alive() and thread.daemon
    # The batches are the sampler's, whatever thread read them.
    expected = dataset.read_batch(LocationShuffle(12, seed=2).rank_order(0)[:4])
    assert first["uuid"] == expected["uuid"] and first["images"].equal(expected["images"])
    # An epoch cut short: dropping the iterator stops its thread.
    del iterator
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()
    # A failed read is raised in the consumer, not lost in the thread.
    monkeypatch.setattr(dataset, "read_batch", lambda indices: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        next(iter(loader))
