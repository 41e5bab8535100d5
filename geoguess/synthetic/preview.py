"""A contact sheet of a generated dataset: a few locations per landscape, four views each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from geoguess.data.io import HEADINGS
from geoguess.geo.boundary import Country
from geoguess.synthetic.regions import regions, zones
from geoguess.synthetic.style import ZONES
from geoguess.synthetic.world import build_world
from geoguess.utils.io import atomic_write

LANDSCAPES = ("coast", "mountains", "plains")
PER_LANDSCAPE = 2
MIN_TILE = 128  # small images are enlarged so that the sheet stays legible
LABEL_WIDTH = 150


def landscape_of(country: Country, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, list]:
    """Per location: 'coast', 'mountains', 'plains' or '' (hills and the rest), and the name of
    its most likely zone (`style.ZONES`)."""
    world = build_world(country)
    x, y = country.projector.forward(lat, lon)
    sea_km, elevation = world.sea_km.sample(x, y), world.elevation.sample(x, y)
    region = regions(lat, lon, sea_km, elevation)
    names = np.full(len(lat), "", dtype=object)
    names[(region["fields"] + region["lush"] > 0.7) & (elevation < 200)] = "plains"
    names[(region["mountain"] > 0.5) | (region["high"] > 0.7)] = "mountains"
    names[region["med"] > 0.7] = "coast"
    zone = [ZONES[i].replace("_", " ") for i in zones(lat, lon, sea_km, elevation).argmax(axis=1)]
    return names, zone


def write_preview(root: str | Path, path: str | Path, country: Country | None = None) -> Path:
    """Write `path` (PNG): two locations of each landscape, their four views in a row, labelled
    with the landscape, the zone and the position. Returns `path`."""
    root, country = Path(root), country or Country()
    frame = pd.read_csv(root / "data.csv", index_col=0)
    lat, lon = frame["latitude"].to_numpy(float), frame["longitude"].to_numpy(float)
    names, zone = landscape_of(country, lat, lon)
    rows = [
        (name, index)
        for name in LANDSCAPES
        for index in np.flatnonzero(names == name)[:PER_LANDSCAPE]
    ]
    if not rows:  # a tiny or foreign set: show its first locations
        rows = [("", index) for index in range(min(len(frame), 3))]
    with Image.open(root / "images" / frame["uuid"].iloc[0] / f"{HEADINGS[0]}.jpg") as first:
        tile = max(first.size[0], MIN_TILE)
    sheet = Image.new("RGB", (LABEL_WIDTH + 4 * tile, len(rows) * tile + 20), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for column, heading in enumerate(HEADINGS):
        draw.text((LABEL_WIDTH + column * tile + 4, 4), f"{heading} deg", fill=(0, 0, 0))
    for row, (name, index) in enumerate(rows):
        top = 20 + row * tile
        label = f"{name or 'location'}\n({zone[index]})\n{lat[index]:.3f} N\n{lon[index]:.3f} E"
        draw.multiline_text((6, top + 6), label, fill=(0, 0, 0))
        for column, heading in enumerate(HEADINGS):
            with Image.open(root / "images" / frame["uuid"].iloc[index] / f"{heading}.jpg") as im:
                view = im.convert("RGB").resize((tile, tile), Image.Resampling.NEAREST)
            sheet.paste(view, (LABEL_WIDTH + column * tile, top))
    return atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"), overwrite=True)
