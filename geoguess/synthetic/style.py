"""Croatia's landscapes as the renderer draws them: what grows, what is built, by zone.

Each location belongs to one zone, drawn per location from the zone weights that its position
gives (`regions.zones`; they blend near a zone's border). The zone decides the shares of tree
forms, field kinds and house forms, and how often dry-stone walls, wooden fences and the
zone's landmarks line the road; the renderer then draws every tree, field and house from those
shares, so no single object decides the zone, and no zone decides a colour. Numpy only: the
render workers import it.
"""

from __future__ import annotations

import numpy as np

TREE_FORMS = ("cypress", "pine", "olive", "fir", "deciduous", "poplar", "palm")
FIELD_KINDS = ("meadow", "maize", "vineyard", "olive_grove", "karst", "wood", "ploughed")
HOUSE_FORMS = ("stone", "gable", "alpine", "long")
ZONES = (
    "istria", "kvarner", "north_dalmatia", "central_dalmatia", "south_dalmatia", "zagora",
    "lika", "gorski_kotar", "northwest", "central", "podravina", "west_slavonia",
    "east_slavonia",
)  # fmt: skip
# A wood and a ploughed field are equally likely everywhere (what differs is what grows there),
# so that the amount of woodland says nothing; the rest is the zone's crops and pastures.
WOOD_SHARE, PLOUGHED_SHARE = 0.25, 0.15
# The tables' shares are raised to this power (and renormalised): a zone's main tree, crop and
# house forms dominate its locations, its minor ones stay as noise.
STYLE_SHARPNESS = 3.0

# Rows: ZONES. Tree forms in the order of TREE_FORMS.
ZONE_TREES = np.array(
    [
        [0.05, 0.35, 0.20, 0.00, 0.40, 0.00, 0.00],
        [0.05, 0.50, 0.10, 0.00, 0.30, 0.00, 0.05],
        [0.15, 0.20, 0.55, 0.00, 0.10, 0.00, 0.00],
        [0.30, 0.45, 0.15, 0.00, 0.00, 0.00, 0.10],
        [0.55, 0.10, 0.10, 0.00, 0.00, 0.00, 0.25],
        [0.10, 0.15, 0.10, 0.05, 0.60, 0.00, 0.00],
        [0.00, 0.05, 0.00, 0.30, 0.65, 0.00, 0.00],
        [0.00, 0.00, 0.00, 0.85, 0.15, 0.00, 0.00],
        [0.00, 0.00, 0.00, 0.10, 0.85, 0.05, 0.00],
        [0.00, 0.00, 0.00, 0.10, 0.75, 0.15, 0.00],
        [0.00, 0.00, 0.00, 0.00, 0.45, 0.55, 0.00],
        [0.00, 0.00, 0.00, 0.05, 0.75, 0.20, 0.00],
        [0.00, 0.00, 0.00, 0.00, 0.25, 0.75, 0.00],
    ]
)
# Crops and pastures: meadow, maize, vineyard, olive grove, stony pasture (FIELD_KINDS[:5]).
ZONE_CROPS = np.array(
    [
        [0.15, 0.05, 0.45, 0.20, 0.15],
        [0.20, 0.00, 0.10, 0.15, 0.55],
        [0.05, 0.00, 0.20, 0.50, 0.25],
        [0.05, 0.00, 0.30, 0.35, 0.30],
        [0.05, 0.00, 0.35, 0.40, 0.20],
        [0.25, 0.05, 0.10, 0.05, 0.55],
        [0.75, 0.05, 0.00, 0.00, 0.20],
        [0.90, 0.00, 0.00, 0.00, 0.10],
        [0.35, 0.20, 0.45, 0.00, 0.00],
        [0.70, 0.25, 0.05, 0.00, 0.00],
        [0.35, 0.55, 0.10, 0.00, 0.00],
        [0.30, 0.35, 0.35, 0.00, 0.00],
        [0.05, 0.85, 0.10, 0.00, 0.00],
    ]
)
# House forms: stone with a low tiled roof, plastered gable, alpine, Slavonian long house.
ZONE_HOUSES = np.array(
    [
        [0.85, 0.15, 0.00, 0.00],
        [0.80, 0.20, 0.00, 0.00],
        [0.85, 0.15, 0.00, 0.00],
        [0.90, 0.10, 0.00, 0.00],
        [0.90, 0.10, 0.00, 0.00],
        [0.45, 0.55, 0.00, 0.00],
        [0.05, 0.45, 0.50, 0.00],
        [0.00, 0.25, 0.75, 0.00],
        [0.00, 0.95, 0.05, 0.00],
        [0.00, 0.90, 0.00, 0.10],
        [0.00, 0.60, 0.00, 0.40],
        [0.00, 0.50, 0.00, 0.50],
        [0.00, 0.15, 0.00, 0.85],
    ]
)
# Per zone: the chance of a dry-stone wall along a side of the road, of a wooden fence (where
# there is no wall: a side of the road is rarely bare anywhere), of the zone's landmarks, and
# how bare and rocky the karst is. The landmarks are what a player looks for: the kazun (the
# round stone hut of Istria), the coast's stone bell towers (campanile), the continental
# north's baroque onion domes, Slavonia's tall neo-Gothic spires and its well sweeps (đeram),
# the wind farms on the ridges behind Dalmatia, hayracks (kozolec) in Gorski kotar and
# haystacks in the mountain meadows, the bura's wind screens along the roads of Kvarner and
# under Velebit. Each is shared by neighbouring zones and missing from
# many of a zone's locations: a strong hint, never a decision.
#                        ist   kva   ndal  cdal  sdal  zag   lika  gor   nw    cen   podr  wsl   esl
ZONE_EXTRAS = {
    "walls":       np.array([0.6,  0.8,  0.85, 0.6,  0.5,  0.8,  0.35, 0.05, 0,    0,    0,    0,    0]),
    "fences":      np.array([0.1,  0.05, 0.05, 0.1,  0.1,  0.1,  0.45, 0.5,  0.6,  0.6,  0.6,  0.6,  0.6]),
    "kazun":       np.array([0.85, 0.05, 0.15, 0,    0,    0,    0,    0,    0,    0,    0,    0,    0]),
    "haystacks":   np.array([0,    0,    0,    0,    0,    0.05, 0.85, 0.3,  0.05, 0.2,  0.05, 0,    0]),
    "rock":        np.array([0.3,  0.8,  0.6,  0.7,  0.5,  0.7,  0.4,  0,    0,    0,    0,    0,    0]),
    "campanile":   np.array([0.5,  0.4,  0.3,  0.8,  0.6,  0.2,  0,    0,    0,    0,    0,    0,    0]),
    "onion_tower": np.array([0,    0,    0,    0,    0,    0,    0.1,  0.2,  0.85, 0.6,  0.5,  0.15, 0]),
    "spire":       np.array([0,    0,    0,    0,    0,    0,    0,    0,    0,    0.1,  0.2,  0.7,  0.85]),
    "wind_farm":   np.array([0,    0.1,  0.5,  0.2,  0,    0.8,  0.05, 0,    0,    0,    0,    0,    0]),
    "wind_screen": np.array([0,    0.8,  0.2,  0,    0,    0,    0.1,  0,    0,    0,    0,    0,    0]),
    "well_sweep":  np.array([0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0.5,  0.3,  0.7]),
    "hayrack":     np.array([0,    0.05, 0,    0,    0,    0,    0.2,  0.85, 0.3,  0.05, 0,    0,    0]),
}  # fmt: skip


def zone_style(zone: int) -> dict[str, np.ndarray | float]:
    """The shares and chances of one zone (an index into `ZONES`)."""
    fields = np.append(
        (1 - WOOD_SHARE - PLOUGHED_SHARE) * _sharpen(ZONE_CROPS[zone]),
        [WOOD_SHARE, PLOUGHED_SHARE],
    )
    style = {
        "tree_forms": _sharpen(ZONE_TREES[zone]),
        "field_kinds": fields,
        "house_forms": _sharpen(ZONE_HOUSES[zone]),
    }
    return style | {key: float(table[zone]) for key, table in ZONE_EXTRAS.items()}


def _sharpen(shares: np.ndarray) -> np.ndarray:
    """A zone's shares with its main forms made more common (`STYLE_SHARPNESS`)."""
    sharp = np.asarray(shares, np.float64) ** STYLE_SHARPNESS
    return sharp / sharp.sum()


def expected_style(zone_weights: np.ndarray) -> dict[str, np.ndarray]:
    """Per location (rows of `zone_weights`), the shares averaged over its possible zones."""
    styles = [zone_style(zone) for zone in range(len(ZONES))]
    return {key: zone_weights @ np.array([s[key] for s in styles]) for key in styles[0]}
