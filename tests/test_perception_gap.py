"""experiments/perception_gap.py: the rendered objects carry the landscape zone."""

from __future__ import annotations

import numpy as np

from tests.cli import experiment_script


def test_the_objects_around_a_location_name_its_zone():
    gap = experiment_script("perception_gap")
    counts, zone = gap.object_counts(400, seed=0)
    names = sorted({name for found in counts for name in found})
    assert {"house:stone", "tree:cypress", "plot:maize", "campanile:"} <= set(names)
    x = np.log1p([[found.get(name, 0) for name in names] for found in counts])
    majority = np.bincount(zone[320:]).max() / len(zone[320:])
    # Perfect perception of the objects alone (no sea, no relief) names most zones.
    assert gap.mlp_accuracy(x, zone) > max(0.6, 3 * majority)


def test_perfect_perception_locates_far_better_than_the_mean():
    """The km bound: a cell classifier on what was drawn beats the mean-location baseline by
    far; the sea and relief alone, much less (on 320 training locations: 63 km from objects and
    geometry, 103 from geometry alone, against 130)."""
    figures = experiment_script("perception_gap").perfect_perception_km(400, seed=0, cell_deg=0.5)
    assert figures["objects + geometry"] < 0.6 * figures["baseline"]
    assert figures["objects"] < 0.6 * figures["baseline"] < figures["geometry"]
    assert figures["geometry"] < 0.9 * figures["baseline"]
    assert 90 < figures["baseline"] < 160  # Croatia's mean distance to its own centre
