"""The layout of one location in metres around the camera: the road, the fields along both
sides, and every object placed once (walls, woods, rows of vines and trees, houses, poles,
signs, the zone's landmarks), drawn from the location's shares and chances (`style`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoguess.synthetic.render.colours import PLASTERS, ROOFS, SHUTTERS
from geoguess.synthetic.render.light import Palette
from geoguess.synthetic.style import FIELD_KINDS, HOUSE_FORMS, TREE_FORMS

# The edge of a wood, by the tree form that makes it up.
WOOD_STYLES = {"cypress": "cypresses", "pine": "umbrella", "olive": "macchia", "fir": "conifer",
               "deciduous": "round", "poplar": "poplars", "palm": "macchia"}  # fmt: skip

# Trees planted in rows along roads (poplars inland, cypresses and palms on the southern coast):
# a row appears with this multiple of the form's share.
ROW_FORMS = {"poplar": 2.5, "cypress": 1.0, "palm": 2.0}


@dataclass
class Plot:
    """A field beside the road: its side (+1 left, -1 right), stretch along it and kind."""

    side: float
    along0: float
    along1: float
    kind: str
    depth: float  # how far from the road it reaches


@dataclass
class Layout:
    bearing: float  # the road's direction, degrees clockwise from north (it runs both ways)
    curve: float  # 1/m: the road's lateral offset is curve * along * |along| (an S-bend)
    half_width: float
    gravel: bool
    verge: float  # grass or gravel between the road and the fields
    plots: list[Plot]
    lines: list  # (kind, across, along0, along1, height, params) structures along the road
    sprites: list  # (kind, along, across, params) things standing on the ground


PLOT_REACH_M = 230.0  # plots cover the road's sides this far each way
PLOT_LENGTH_M = (35.0, 90.0)


def draw_layout(scene, palette: Palette, rng: np.random.Generator) -> Layout:
    gravel = bool(rng.random() < scene["gravel"])
    half = float(rng.uniform(2.0, 2.6) if gravel else rng.uniform(2.8, 3.8))
    layout = Layout(
        bearing=_road_bearing(scene, rng),
        curve=float(rng.normal(0, 1) * 0.0025 * scene["road_curve"]),
        half_width=half,
        gravel=gravel,
        verge=float(rng.uniform(0.8, 4.0)),
        plots=[],
        lines=[],
        sprites=[],
    )
    edge = half + layout.verge
    for side in (1.0, -1.0):
        along = -PLOT_REACH_M - rng.uniform(0, PLOT_LENGTH_M[1])
        while along < PLOT_REACH_M:
            end = along + rng.uniform(*PLOT_LENGTH_M)
            kind = FIELD_KINDS[weighted_choice(rng, scene["field_kinds"])]
            plot = Plot(side, along, end, kind, float(rng.uniform(25, 120)))
            layout.plots.append(plot)
            _place_plot(layout, scene, palette, plot, edge, rng)
            along = end
    _place_road_furniture(layout, scene, edge, rng)
    _place_houses(layout, scene, edge, rng)
    _place_trees(layout, scene, edge, rng)
    _place_landmarks(layout, scene, edge, rng)
    return layout


def _place_landmarks(layout: Layout, scene, edge: float, rng) -> None:
    """A region's own things (`style.ZONE_EXTRAS`), each with its zone's chance."""
    if rng.random() < scene["kazun"]:
        for _ in range(int(rng.integers(2, 5))):
            _put_near_road(layout, "kazun", edge, rng, 40, (2, 12), {})
    if rng.random() < scene["haystacks"]:
        for _ in range(1 + rng.poisson(3)):
            _put_near_road(layout, "haystack", edge, rng, 80, (3, 40),
                           {"height": rng.uniform(2.8, 4.2)})  # fmt: skip
    for kind in ("campanile", "onion_tower", "spire"):
        if rng.random() < scene[kind]:  # the village church, among the houses by the road
            params = {"height": rng.uniform(28, 40), "width": rng.uniform(4.5, 6.5),
                      "plaster": int(rng.integers(len(PLASTERS))), "shade": rng.uniform(0.85, 1.1)}  # fmt: skip
            along = rng.choice((1.0, -1.0)) * rng.uniform(25, 90)
            across = rng.choice((1.0, -1.0)) * (edge + rng.uniform(3, 10))
            layout.sprites.append((kind, along, across, params))
    if rng.random() < scene["wind_farm"]:  # a row of turbines along a ridge
        along, side = rng.uniform(-300, 300), rng.choice((1.0, -1.0))
        across, spacing = side * rng.uniform(120, 300), rng.uniform(110, 180)
        for k in range(int(rng.integers(2, 7))):
            params = {"hub": rng.uniform(90, 120), "phase": rng.uniform(0, 2 * np.pi / 3)}
            layout.sprites.append(("turbine", along + k * spacing, across, params))
    if rng.random() < scene["wind_screen"]:  # the bura's barrier, close to the road
        a0 = -rng.uniform(20, 120)
        across = rng.choice((1.0, -1.0)) * (layout.half_width + rng.uniform(1.0, 2.0))
        height = rng.uniform(3.0, 4.5)
        layout.lines.append(("wind_screen", across, a0, a0 + rng.uniform(80, 240), height, {}))
    if rng.random() < scene["well_sweep"]:
        for _ in range(int(rng.integers(2, 4))):
            params = {"tilt": rng.uniform(20, 40), "mirror": rng.choice((1.0, -1.0))}
            _put_near_road(layout, "well_sweep", edge, rng, 50, (3, 15), params)
    if rng.random() < scene["hayrack"]:
        for _ in range(int(rng.integers(2, 4))):
            params = {"width": rng.uniform(7, 12), "bays": int(rng.integers(2, 5))}
            _put_near_road(layout, "hayrack", edge, rng, 50, (3, 15), params)


def _put_near_road(layout: Layout, kind: str, edge: float, rng, reach: float, off, params):
    """One sprite within `reach` metres along the road, `off` metres beyond its edge."""
    side = rng.choice((1.0, -1.0))
    across = side * (edge + rng.uniform(*off))
    layout.sprites.append((kind, rng.uniform(-reach, reach), across, params))


def _road_bearing(scene, rng: np.random.Generator) -> float:
    """Along the coast or the valleys, on the plain's grid, or any way."""
    if rng.random() < scene["road_follows_axis"]:
        return float(scene["road_axis"] + rng.normal(0, 12)) % 180
    if rng.random() < scene["road_grid"]:
        return float(rng.choice((0.0, 90.0)) + rng.normal(0, 8)) % 180
    return float(rng.uniform(0, 180))


def weighted_choice(rng: np.random.Generator, shares: np.ndarray) -> int:
    return int(np.searchsorted(np.cumsum(shares), rng.random() * float(np.sum(shares))))


def _place_plot(layout: Layout, scene, palette: Palette, plot: Plot, edge: float, rng) -> None:
    lines, sprites, sign = layout.lines, layout.sprites, plot.side
    a0, a1, kind = plot.along0, plot.along1, plot.kind
    start = edge + rng.uniform(0.5, 3.0)
    if kind == "maize" and palette.maize_height > 0.6:
        height = palette.maize_height * rng.uniform(0.85, 1.1)
        lines.append(("maize", sign * start, a0, a1, height, {}))
    elif kind == "vineyard":
        spacing = rng.uniform(2.2, 3.0)
        for row in range(int(rng.integers(4, 8))):
            across = sign * (start + row * spacing)
            lines.append(("vine", across, a0, a1, rng.uniform(1.1, 1.5), {"row": row}))
    elif kind == "olive_grove":
        spacing = rng.uniform(6.0, 8.0)
        for row in range(4):
            for along in np.arange(a0 + rng.uniform(1, spacing), a1 - 1, spacing):
                jitter = rng.normal(0, 0.4, 2)
                sprites.append(
                    ("olive", along + jitter[0], sign * (start + 2 + row * spacing) + jitter[1],
                     {"height": rng.uniform(3.5, 6.0)})
                )  # fmt: skip
    elif kind == "wood":
        lines.append(_wood(scene, sign * (start + rng.uniform(0.5, 5)), a0, a1, rng))
    elif kind == "karst":
        for _ in range(rng.poisson(0.25 * (a1 - a0))):
            sprites.append(
                ("shrub", rng.uniform(a0, a1), sign * (start + rng.exponential(10)),
                 {"height": rng.uniform(0.6, 1.6)})
            )  # fmt: skip
    if kind != "wood" and rng.random() < 0.6:  # a wood closes the field
        lines.append(_wood(scene, sign * plot.depth, a0, a1, rng))


def _wood(scene, across: float, along0: float, along1: float, rng) -> tuple:
    """The edge of a wood along the road: mostly of the location's main tree form."""
    form = scene["wood_form"] if rng.random() < 0.8 else weighted_choice(rng, scene["tree_forms"])
    style = WOOD_STYLES[TREE_FORMS[form]]
    low, high = {"conifer": (12, 22), "round": (10, 18), "umbrella": (10, 16),
                 "cypresses": (10, 18), "poplars": (14, 22), "macchia": (7, 11)}[style]  # fmt: skip
    return ("wood", across, along0, along1, rng.uniform(low, high), {"style": style})


def _place_road_furniture(layout: Layout, scene, edge: float, rng) -> None:
    lines, sprites = layout.lines, layout.sprites
    for sign in (1.0, -1.0):
        if rng.random() < scene["fences"]:
            a0 = -rng.uniform(10, 150)
            across = sign * (edge + rng.uniform(0.2, 1.5))
            lines.append(
                ("fence", across, a0, a0 + rng.uniform(20, 250), rng.uniform(1.0, 1.5), {})
            )
        elif rng.random() < 0.2:  # a clipped hedge
            a0 = -rng.uniform(10, 150)
            across = sign * (edge + rng.uniform(0.2, 1.5))
            lines.append(
                ("hedge", across, a0, a0 + rng.uniform(20, 200), rng.uniform(1.4, 2.4), {})
            )
        if rng.random() < scene["walls"]:
            lines.append(
                ("wall", sign * (edge + rng.uniform(0.2, 1.5)), -rng.uniform(20, 200),
                 rng.uniform(20, 200), rng.uniform(0.9, 1.5), {})
            )  # fmt: skip
            for plot in layout.plots:  # walls between the plots, away from the road
                if plot.side == sign and abs(plot.along0) < 100 and rng.random() < 0.7:
                    start = edge + rng.uniform(0.5, 2)
                    t0, t1 = sorted((sign * start, sign * min(plot.depth, start + 80)))
                    height, params = rng.uniform(0.9, 1.4), {"across_road": True}
                    lines.append(("wall", plot.along0, t0, t1, height, params))
        if rng.random() < scene["guardrail"]:
            a0 = -rng.uniform(10, 150)
            lines.append(("guardrail", sign * (layout.half_width + 0.6), a0, a0 + 160, 0.75, {}))
    if rng.random() < 0.6:  # delineator posts: everywhere in the country
        for along in np.arange(-rng.uniform(0, 50), 200, 50.0):
            for sign in (1.0, -1.0):
                sprites.append(
                    ("post", along * rng.choice((1, -1)), sign * (layout.half_width + 0.8), {})
                )
    if rng.random() < scene["poles"]:
        sign, spacing = rng.choice((1.0, -1.0)), rng.uniform(35, 50)
        across = sign * (edge + rng.uniform(0.5, 4))
        for along in np.arange(-200 + rng.uniform(0, spacing), 200, spacing):
            sprites.append(("pole", along, across, {"height": rng.uniform(7, 9)}))
    for _ in range(rng.poisson(0.7)):
        sprites.append(
            ("sign", rng.uniform(-80, 80), rng.choice((1.0, -1.0)) * (layout.half_width + 1.2),
             {"shape": int(rng.integers(3)), "colour": int(rng.integers(3))})
        )  # fmt: skip


def _place_houses(layout: Layout, scene, edge: float, rng) -> None:
    count = rng.poisson(2.0 + 8.0 * float(scene["settlement"]))
    for _ in range(count):
        form = HOUSE_FORMS[weighted_choice(rng, scene["house_forms"])]
        along = rng.uniform(-100, 100)
        across = rng.choice((1.0, -1.0)) * (edge + rng.uniform(3, 14))
        params = {
            "form": form,
            "width": rng.uniform(7, 11) if form != "long" else rng.uniform(6, 7.5),
            "storeys": int(rng.integers(1, 3)),
            "plaster": int(rng.integers(len(PLASTERS))),
            "roof": int(rng.integers(len(ROOFS))),
            "shutter": int(rng.integers(len(SHUTTERS))),
            "shade": rng.uniform(0.85, 1.1),
        }
        layout.sprites.append(("house", along, across, params))


def _place_trees(layout: Layout, scene, edge: float, rng) -> None:
    count = rng.poisson(6.0 + 30.0 * float(scene["tree_density"]))
    for _ in range(count):
        form = TREE_FORMS[weighted_choice(rng, scene["tree_forms"])]
        along = rng.uniform(-110, 110)
        across = rng.choice((1.0, -1.0)) * (edge + 1 + rng.exponential(14))
        layout.sprites.append(("tree", along, across, _tree_params(form, rng)))
    for form, keenness in ROW_FORMS.items():
        share = float(scene["tree_forms"][TREE_FORMS.index(form)])
        if share > 0.15 and rng.random() < keenness * share:  # planted in a row by the road
            across = rng.choice((1.0, -1.0)) * (edge + rng.uniform(1, 5))
            for along in np.arange(-150 + rng.uniform(0, 9), 150, rng.uniform(7, 10)):
                layout.sprites.append(("tree", along, across, _tree_params(form, rng)))


def _tree_params(form: str, rng) -> dict:
    heights = {"cypress": (7, 14), "pine": (8, 15), "olive": (2.8, 5), "fir": (12, 24),
               "deciduous": (7, 16), "poplar": (15, 24), "palm": (5, 10)}  # fmt: skip
    return {"form": form, "height": rng.uniform(*heights[form]), "shade": rng.uniform(0.8, 1.15)}
