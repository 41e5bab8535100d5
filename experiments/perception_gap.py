"""How much of the landscape zone the drawn objects hold, against how much a frozen backbone reads.

.venv/bin/python experiments/perception_gap.py [--locations 3000] [--seed 0] [--features FILE]

1. Object oracle: for the generator's first `--locations` locations of `--seed`, the renderer's
   own layouts (`geoguess.synthetic.render.compose_scene`, same RNG order as the images) are
   counted: houses and trees by form, landmarks, walls, fences, woods by style, fields by kind,
   within 120 m along the road. A small MLP on log counts predicts each location's most likely zone (80 % train,
   20 % test): what perfect perception of the objects would give, with nothing of the
   geometry (sea, relief). Then the same with one group of objects alone, and without it.
2. The same in km: a small MLP classifies each location into 0.3-degree cells from the object
   counts, from the geometry the renderer draws (per direction: the sea's band and the relief's
   horizon angle) and from both; the guess is the probability-weighted mean of the cells'
   training means, as `head=classification` decodes; mean error on the held-out 20 % beside
   the mean-location baseline. Perfect perception with a model trained on as many locations:
   how far below it no image model on this set should be expected to go.
3. With `--features` (a `features-*.npy` that a run with a frozen backbone cached beside the
   dataset's image cache, `DATA_ROOT/.geoguess-cache/*/`; `experiment=best_cpu_128` makes one): a
   linear zone classifier on those features, the mean over the four views, 5-fold
   cross-validated: what the backbone reads.

The gap between the two is what a better model (or more visible objects) could still gain.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from geoguess.errors import GeoguessError
from geoguess.geo import Country, haversine_km
from geoguess.metrics import baseline_errors
from geoguess.models.feature_cache import feature_file_locations
from geoguess.synthetic.generator import location_rng, sample_locations
from geoguess.synthetic.render import compose_scene
from geoguess.synthetic.scene import scene_parameters
from geoguess.synthetic.style import ZONES
from geoguess.synthetic.world import build_world

REACH_M = 120.0
CELL_DEG = 0.3
# Landmark sprites; the wind screen is a line, matched by its own prefix below.
LANDMARKS = ("kazun", "haystack", "campanile", "onion_tower", "spire", "turbine", "well_sweep",
             "hayrack")  # fmt: skip
GROUPS = {
    "houses": lambda k: k.startswith("house"),
    "trees": lambda k: k.startswith("tree"),
    "woods": lambda k: k.startswith("line:wood"),
    "fields": lambda k: k.startswith("plot"),
    "landmarks": lambda k: k.split(":")[0] in LANDMARKS or k.startswith("line:wind_screen"),
    "walls and fences": lambda k: k.startswith(("line:wall:", "line:fence:", "line:hedge:")),
}


def object_counts(num_locations: int, seed: int) -> tuple[list[dict], np.ndarray]:
    """Per location, the counts of what its layout holds, and its most likely zone."""
    counts, scenes, _ = drawn_locations(num_locations, seed)
    return counts, scenes["zones"].argmax(axis=1)


def drawn_locations(num_locations: int, seed: int) -> tuple[list[dict], dict, np.ndarray]:
    """Per location, the counts of what its layout holds; the scene parameters its position
    gives; its latitude and longitude (`[N, 2]`)."""
    country = Country()
    lat, lon = sample_locations(country, num_locations, seed)
    scenes = scene_parameters(build_world(country), lat, lon)
    counts = []
    for index in range(num_locations):
        scene = {key: value[index] for key, value in scenes.items()}
        _, _, _, layout = compose_scene(scene, location_rng(seed, index))
        found: dict[str, int] = {}
        for kind, along, _, params in layout.sprites:
            if abs(along) <= REACH_M:
                name = f"{kind}:{params.get('form', '')}"
                found[name] = found.get(name, 0) + 1
        for kind, *_, params in layout.lines:
            name = f"line:{kind}:{params.get('style', '')}"
            found[name] = found.get(name, 0) + 1
        for plot in layout.plots:
            found[f"plot:{plot.kind}"] = found.get(f"plot:{plot.kind}", 0) + 1
        counts.append(found)
    return counts, scenes, np.column_stack([lat, lon])


def mlp_accuracy(x: np.ndarray, zone: np.ndarray, seed: int = 0) -> float:
    torch.manual_seed(seed)
    train = np.arange(len(x)) < int(0.8 * len(x))
    xs, ys = torch.tensor(x, dtype=torch.float32), torch.tensor(zone)
    model = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, len(ZONES))
    )
    optimiser = torch.optim.Adam(model.parameters(), 3e-3, weight_decay=1e-4)
    return _trained_accuracy(model, optimiser, xs, ys, torch.tensor(train), 1000)


def _trained_accuracy(model, optimiser, x, y, train, steps: int) -> float:
    """Full-batch cross-entropy on the `train` rows for `steps` steps; accuracy on the others."""
    _fit(model, optimiser, x[train], y[train], steps)
    with torch.no_grad():
        return float((model(x[~train]).argmax(1) == y[~train]).float().mean())


def _fit(model, optimiser, x, y, steps: int, label_smoothing: float = 0.0) -> None:
    """`steps` full-batch steps of cross-entropy of `model(x)` against the classes `y`."""
    for _ in range(steps):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=label_smoothing)
        loss.backward()
        optimiser.step()


def object_oracle(num_locations: int, seed: int) -> dict[str, float]:
    counts, zone = object_counts(num_locations, seed)
    names = sorted({name for found in counts for name in found})
    x = np.log1p([[found.get(name, 0) for name in names] for found in counts])
    figures = {"all objects": mlp_accuracy(x, zone)}
    for group, member in GROUPS.items():
        columns = np.array([member(name) for name in names])
        figures[f"{group} only"] = mlp_accuracy(x[:, columns], zone)
        figures[f"without {group}"] = mlp_accuracy(x[:, ~columns], zone)
    return figures


def perfect_perception_km(
    num_locations: int, seed: int, cell_deg: float = CELL_DEG
) -> dict[str, float]:
    """Mean error (km) on the held-out 20 % of a cell classifier on what was drawn: the
    objects, the geometry (sea and relief per direction), both; and the mean-location baseline."""
    counts, scenes, latlon = drawn_locations(num_locations, seed)
    names = sorted({name for found in counts for name in found})
    objects = np.log1p([[found.get(name, 0) for name in names] for found in counts])
    geometry = np.concatenate(
        [
            scenes["horizon_angle"].reshape(num_locations, -1),
            scenes["sea_band"].reshape(num_locations, -1),
        ],
        axis=1,
    )
    train = np.arange(num_locations) < int(0.8 * num_locations)
    truth = latlon[~train]
    figures = {"baseline": float(baseline_errors(*latlon[train].T, *truth.T).mean())}
    inputs = {
        "objects": objects,
        "geometry": geometry,
        "objects + geometry": np.hstack([objects, geometry]),
    }
    for label, x in inputs.items():
        guess = cell_classifier_guess(x, latlon, train, cell_deg)
        figures[label] = float(haversine_km(*truth.T, *guess.T).mean())
    return figures


def cell_classifier_guess(
    x: np.ndarray, latlon: np.ndarray, train: np.ndarray, cell_deg: float, seed: int = 0
) -> np.ndarray:
    """`[held out, 2]`: the probability-weighted mean of the cells' training means, from a
    small MLP trained on the `train` rows to name each location's cell."""
    cell = np.floor(latlon[train] / cell_deg).astype(int)
    keys, label = np.unique(cell, axis=0, return_inverse=True)
    points = np.array([latlon[train][label == k].mean(axis=0) for k in range(len(keys))])
    x = (x - x[train].mean(axis=0)) / (x[train].std(axis=0) + 1e-6)
    torch.manual_seed(seed)
    xs = torch.tensor(x, dtype=torch.float32)
    model = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 128), torch.nn.ReLU(), torch.nn.Dropout(0.3),
        torch.nn.Linear(128, len(keys)),
    )  # fmt: skip
    optimiser = torch.optim.Adam(model.parameters(), 3e-3, weight_decay=1e-4)
    _fit(model, optimiser, xs[train], torch.tensor(label.ravel()), 600, label_smoothing=0.1)
    model.eval()
    with torch.no_grad():
        probabilities = torch.softmax(model(xs[~train]), dim=1).double().numpy()
    return probabilities @ points


def feature_probe(features: Path) -> float:
    """5-fold accuracy of a linear zone classifier on a dataset's cached backbone features."""
    table = feature_file_locations(features)
    scenes = scene_parameters(
        build_world(Country()), table.latitude.to_numpy(), table.longitude.to_numpy()
    )
    x = torch.tensor(np.load(features), dtype=torch.float32).mean(dim=1)
    y = torch.tensor(scenes["zones"].argmax(axis=1))
    fold = np.arange(len(y)) % 5
    accuracies = []
    for k in range(5):
        torch.manual_seed(k)
        train = torch.tensor(fold != k)
        xn = (x - x[train].mean(0)) / (x[train].std(0) + 1e-4)
        model = torch.nn.Linear(x.shape[1], len(ZONES))
        optimiser = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=1e-2)
        accuracies.append(_trained_accuracy(model, optimiser, xn, y, train, 200))
    return float(np.mean(accuracies))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--locations", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", type=Path, help="a cached features-*.npy of a dataset")
    args = parser.parse_args(argv)
    figures = object_oracle(args.locations, args.seed)
    for name, accuracy in figures.items():
        print(f"zone accuracy, object oracle, {name:24s} {100 * accuracy:5.1f} %")
    kilometres = perfect_perception_km(args.locations, args.seed)
    for name, km in kilometres.items():
        print(f"mean error, perfect perception, {name:22s} {km:6.1f} km")
    figures |= {f"{name} km": km for name, km in kilometres.items()}
    if args.features:
        figures["frozen features"] = feature_probe(args.features)
        print(
            f"zone accuracy, linear on cached features       {100 * figures['frozen features']:5.1f} %"
        )
    return figures


if __name__ == "__main__":
    try:
        main()
    except GeoguessError as exc:
        raise SystemExit(f"error: {exc}") from None
