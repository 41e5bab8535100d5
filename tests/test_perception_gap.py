"""experiments/perception_gap.py: the rendered objects carry the landscape zone."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).parents[1] / "experiments" / "perception_gap.py"


def _script():
    spec = importlib.util.spec_from_file_location("perception_gap", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_objects_around_a_location_name_its_zone():
    gap = _script()
    counts, zone = gap.object_counts(400, seed=0)
    names = sorted({name for found in counts for name in found})
    assert {"house:stone", "tree:cypress", "plot:maize", "campanile:"} <= set(names)
    x = np.log1p([[found.get(name, 0) for name in names] for found in counts])
    majority = np.bincount(zone[320:]).max() / len(zone[320:])
    # Perfect perception of the objects alone (no sea, no relief) names most zones.
    assert gap.mlp_accuracy(x, zone) > max(0.6, 3 * majority)
