"""Generate the embedded synthetic dataset: locations, four rendered views each, the folder format.

Street View images are Google's and cannot ship with the project, so `data=synthetic` trains on
generated locations instead: uniform by area over the country, four rendered views each, in the
folder format of the real data (`data.csv` + `images/<uuid>/{0,90,180,270}.jpg`). The views
carry a location signal taken from the real geography (see `world` and `scene`), mostly in
shapes and layout, under light, weather and camera variation that carries none. Same seed, same
bytes.

The dataset appears atomically: it is written into a hidden sibling folder and renamed into
place at the end, so an interrupted run never leaves something that looks complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from geoguess.data.io import HEADINGS
from geoguess.geo.boundary import Country
from geoguess.geo.sampling import sample_points
from geoguess.synthetic.errors import SynthesizeError
from geoguess.synthetic.render import render_views
from geoguess.synthetic.scene import scene_parameters
from geoguess.synthetic.version import GENERATOR_VERSION
from geoguess.synthetic.world import build_world
from geoguess.utils.io import make_temp_dir
from geoguess.utils.processes import worker_pool

UUID_NAMESPACE = uuid.UUID("5f0c8d3e-7a51-4d0b-9a8e-3c2b1f6e4d27")
CHUNK_SIZE = 25  # locations per pool task
MIN_IMAGE_SIZE = 16
JPEG_QUALITY = (85, 90)  # inclusive range, drawn per location
SAMPLING_STREAM = 0  # the locations' RNG stream
IMAGE_STREAM = 1  # each location's own stream for its drawing (`location_rng`)


def generate(
    root: str | Path,
    *,
    num_locations: int,
    seed: int,
    image_size: int,
    workers: int,
    country: Country | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a synthetic dataset of `num_locations` locations to `root` and return `root`.

    Deterministic: the same settings give byte-identical files. Refuses to replace an existing,
    non-empty `root` unless `overwrite`. `country` None means the shipped Croatia.
    """
    root = Path(root).expanduser()
    num_locations, seed, image_size, workers = _check_settings(
        num_locations, seed, image_size, workers
    )
    _check_target(root, overwrite)
    country = Country.coerce(country)
    world = build_world(country)
    lat, lon = sample_locations(country, num_locations, seed)
    uuids = location_uuids(num_locations, seed)
    scenes = scene_parameters(world, lat, lon)
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = make_temp_dir(root.parent, root.name, ".partial")
    try:
        _render_all(partial, uuids, scenes, seed, image_size, workers, progress)
        _write_csv(partial / "data.csv", uuids, lat, lon)
        _move_into_place(partial, root, overwrite)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return root


def _check_settings(num_locations, seed, image_size, workers) -> tuple[int, int, int, int]:
    checks = (
        ("data.generator.num_locations", num_locations, 1),
        ("data.generator.seed", seed, 0),
        ("data.generator.image_size", image_size, MIN_IMAGE_SIZE),
        ("workers", workers, 1),
    )
    values = []
    for name, value, minimum in checks:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
            raise SynthesizeError(f"{name}={value!r} must be an integer of at least {minimum}")
        values.append(int(value))
    return tuple(values)


def _check_target(root: Path, overwrite: bool) -> None:
    if overwrite or not root.exists():
        return
    if not root.is_dir() or any(root.iterdir()):
        raise SynthesizeError(
            f"{root} already exists; pass overwrite=true to replace it, or choose another data.root"
        )


def sample_locations(country: Country, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` points uniform by area inside the country; a larger `n` extends a smaller one."""
    return sample_points(country, n, np.random.SeedSequence([seed, SAMPLING_STREAM]))


def location_uuids(n: int, seed: int) -> list[str]:
    return [str(uuid.uuid5(UUID_NAMESPACE, f"{GENERATOR_VERSION}/{seed}/{i}")) for i in range(n)]


def location_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of location `index`'s drawing: zone, light, layout, noise, JPEG."""
    return np.random.default_rng([seed, IMAGE_STREAM, index])


def render_location(scene: Mapping[str, np.ndarray], seed: int, index: int, image_size: int):
    """The four views (uint8) and JPEG quality of location `index`: its own RNG, so chunking
    and the number of workers cannot change a byte."""
    rng = location_rng(seed, index)
    views = render_views(scene, image_size, rng)
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    return views, quality


def _render_all(partial: Path, uuids, scenes, seed, image_size, workers, progress) -> None:
    images = partial / "images"
    images.mkdir()
    tasks = [
        (images, seed, image_size, start, uuids[start : start + CHUNK_SIZE],
         {key: value[start : start + CHUNK_SIZE] for key, value in scenes.items()})
        for start in range(0, len(uuids), CHUNK_SIZE)
    ]  # fmt: skip
    bar = tqdm(
        total=len(uuids), desc="rendering synthetic locations", unit="loc", disable=not progress
    )
    with bar:
        if workers == 1 or len(tasks) == 1:
            for task in tasks:
                bar.update(_render_chunk(task))
            return
        with worker_pool(min(workers, len(tasks))) as pool:
            for done in pool.imap_unordered(_render_chunk, tasks):
                bar.update(done)


def _render_chunk(task) -> int:
    """Render and write one chunk of locations."""
    images, seed, image_size, start, uuids, scenes = task
    for offset, name in enumerate(uuids):
        scene = {key: value[offset] for key, value in scenes.items()}
        views, quality = render_location(scene, seed, start + offset, image_size)
        folder = images / name
        folder.mkdir()
        for heading, view in zip(HEADINGS, views, strict=True):
            Image.fromarray(view).save(folder / f"{heading}.jpg", format="JPEG", quality=quality)
    return len(uuids)


def _write_csv(path: Path, uuids, lat, lon) -> None:
    """The competition's layout: a leading unnamed index column. repr() round-trips floats."""
    rows = enumerate(zip(uuids, lat, lon, strict=True))
    lines = [",uuid,latitude,longitude"]
    lines += [f"{i},{u},{float(la)!r},{float(lo)!r}" for i, (u, la, lo) in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _move_into_place(partial: Path, root: Path, overwrite: bool) -> None:
    if overwrite and root.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".old", dir=root.parent))
        os.replace(root, old / root.name)
        try:
            os.rename(partial, root)
        except OSError:
            os.replace(old / root.name, root)  # put the previous dataset back
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(partial, root)  # onto a missing or empty folder only
    except OSError as exc:
        raise SynthesizeError(
            f"{root} appeared while generating ({exc.strerror}); it was not replaced"
        ) from None
