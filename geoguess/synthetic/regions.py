"""The regional fields: smooth functions of position, distance to the sea and elevation that say
which of Croatia's landscapes (`regions`) and landscape zones (`zones`, in the order of
`style.ZONES`) a place belongs to, and the world's fixed smooth noise (`smooth_noise`)."""

from __future__ import annotations

import numpy as np

WORLD_SEED = 20_240_605


def smooth_noise(x, y, wavelengths_km=(20, 35, 60), salt: int = 0) -> np.ndarray:
    """A fixed smooth field in about [-1, 1]: cosines of random direction and phase."""
    rng = np.random.default_rng([WORLD_SEED, salt])
    total = np.zeros(np.shape(x), np.float64)
    for wavelength in wavelengths_km:
        angle, phase = rng.uniform(0, 2 * np.pi, 2)
        k = 2 * np.pi / (wavelength * 1000.0)
        total += np.cos(k * (np.cos(angle) * x + np.sin(angle) * y) + phase)
    return total / np.sqrt(len(wavelengths_km) / 2.0)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def zones(lat, lon, sea_km, elevation) -> np.ndarray:
    """(n, 13) smooth weights of the landscape zones (`style.ZONES`) at each location.

    Istria (the whole peninsula, coast and interior) and Gorski kotar (the wooded highlands
    between Rijeka and Karlovac) are cut out first; the rest is the coast from north to south,
    the karst hinterland (Zagora, then Lika) and the continental north.
    """
    region = regions(lat, lon, sea_km, elevation)
    med, karst, istria = region["med"], region["karst"], region["istria"]
    gorski = (
        sigmoid((lat - 45.17) / 0.06) * sigmoid((15.4 - lon) / 0.08) * sigmoid((lon - 14.4) / 0.05)
    )
    coast = _split(
        [sigmoid((lat - 44.5) / 0.12), sigmoid((lat - 43.62) / 0.1), sigmoid((lat - 43.1) / 0.1)]
    )  # Kvarner, northern, central and southern Dalmatia
    hinterland = _split([sigmoid((44.2 - lat) / 0.15)])  # Zagora, then Lika
    northwest = sigmoid((lat - 45.7) / 0.1) * sigmoid((16.7 - lon) / 0.2)
    east = sigmoid((lon - 18.2) / 0.15)
    podravina = sigmoid((lat - 45.75) / 0.12)
    west = sigmoid((lon - 17.0) / 0.2)
    north = _split([northwest, east, podravina, west])  # the rest is central
    north = north[[0, 4, 2, 3, 1]]  # in the order of style.ZONES
    mainland = 1 - istria
    inland = mainland * (1 - med) * (1 - gorski)
    weights = np.concatenate(
        [
            istria[None],
            mainland * med * coast,
            inland * karst * hinterland,
            (mainland * (1 - med) * gorski)[None],
            inland * (1 - karst) * north,
        ]
    )
    return (weights / weights.sum(axis=0)).T


def _split(chances: list[np.ndarray]) -> np.ndarray:
    """(k + 1, n): take each share in turn from what the previous ones left."""
    left = np.ones_like(chances[0])
    parts = []
    for chance in chances:
        parts.append(left * chance)
        left = left * (1 - chance)
    return np.stack([*parts, left])


def regions(lat, lon, sea_km, elevation) -> dict[str, np.ndarray]:
    """Smooth 0..1 weights of Croatia's landscapes at each location.

    `med`, `mountain`, `fields`, `lush` sum to 1 (Mediterranean coast and islands, Dinaric
    mountains, the Slavonian plain, the green continental hills); the others overlap them:
    `karst` (the Dinaric limestone belt: coast, Zagora, Lika), `south` (southern Dalmatia),
    `high` (above about 500 m), `istria` and `zagorje` (the vineyard hills north of Zagreb).
    """
    med = sigmoid((18.0 - sea_km) / 7.0 + (44.3 - lat) * 1.2)
    mountain = sigmoid((elevation - 600.0) / 120.0)
    fields = sigmoid((lon - 17.2) / 0.3) * sigmoid((lat - 44.95) / 0.1)
    rest = 1.0 - med
    return {
        "med": med,
        "mountain": rest * mountain,
        "fields": rest * (1 - mountain) * fields,
        "lush": rest * (1 - mountain) * (1 - fields),
        "karst": dinaric_belt(lat, sea_km),
        "south": sigmoid((43.9 - lat) / 0.25),
        "high": sigmoid((elevation - 500.0) / 100.0),
        "istria": sigmoid((14.25 - lon) / 0.1) * sigmoid((lat - 44.8) / 0.1),
        "zagorje": sigmoid((lat - 45.85) / 0.1) * sigmoid((16.7 - lon) / 0.2),
    }


def dinaric_belt(lat, sea_km) -> np.ndarray:
    """The karst belt parallel to the coast, fading north of about 45.35° N."""
    return np.exp(-((np.maximum(sea_km - 35.0, 0.0) / 40.0) ** 2)) * sigmoid((45.35 - lat) / 0.15)
