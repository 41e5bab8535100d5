"""Draw the four street views of one synthetic location with numpy (no per-pixel Python loops).

Each location is one small 3-D scene around a camera standing on a road, seen in four
directions: objects and walls are placed once in metres and projected into every view that
faces them, with a depth buffer, so the views agree with each other and the heading matters.

What the location decides (`scene`, from `world.scene_parameters`): the sea band and the
mountain and island silhouettes on the horizon per direction, and the shares of tree forms,
field kinds and house forms, dry-stone walls, rock, guard rails, poles and road curvature.
What it does not decide: light, weather and season (time of day, sun direction, clear or
overcast sky, haze, the colour of grass and foliage), camera exposure and white balance, which
are drawn per location from the image RNG alone. Colour therefore says little about where a
location is; shapes and layout say more, each only in part.

Only numpy here: the pool workers that run it never import shapely or torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from geoguess.data.io import HEADINGS
from geoguess.data.synthetic.style import FIELD_KINDS, HOUSE_FORMS, TREE_FORMS, zone_style

RAYS_PER_VIEW = 5  # rays at -45, -22.5, 0, 22.5, 45 degrees of a 90-degree view
RAYS_TOTAL = 16
# (4, 5) indices into the 16 compass rays (22.5 degrees apart), left to right for each heading.
VIEW_RAYS = (np.arange(4)[:, None] * 4 + np.arange(-2, 3)[None, :]) % RAYS_TOTAL
VERTICAL_FOV_RAD = np.pi / 2
RELIEF_EXAGGERATION = 3.0  # real slopes are a few degrees: invisible at 128 px
CAMERA_HEIGHT_M = 2.5
SENSOR_NOISE = 4.0  # standard deviation in 0..255 units
NOISE_SEED = 7_771  # fixed noise tiles; each use takes a random window of them
FAR = np.float32(1e6)  # depth of the sky
SEA_DEPTH = np.float32(5e4)

# The edge of a wood, by the tree form that makes it up.
WOOD_STYLES = {"cypress": "cypresses", "pine": "umbrella", "olive": "macchia", "fir": "conifer",
               "deciduous": "round", "poplar": "poplars", "palm": "macchia"}  # fmt: skip
# Trees planted in rows along roads (poplars inland, cypresses and palms on the southern coast):
# a row appears with this multiple of the form's share.
ROW_FORMS = {"poplar": 2.5, "cypress": 1.0, "palm": 2.0}
# Season keyframes (0 early spring, 0.25 early summer, 0.5 late summer, 0.7 autumn, 0.85
# winter; cyclic) of the colours that change through the year.
SEASON_KEYS = np.array([0.0, 0.25, 0.5, 0.7, 0.85, 1.0])
GRASS = np.array(
    [[104, 150, 62], [92, 138, 52], [158, 150, 84], [132, 124, 70], [118, 110, 84], [104, 150, 62]],
    np.float32,
)
FOLIAGE = np.array(
    [[118, 160, 72], [62, 108, 46], [72, 104, 48], [176, 118, 52], [112, 96, 80], [118, 160, 72]],
    np.float32,
)
MAIZE = np.array(
    [[118, 146, 70], [78, 132, 52], [96, 130, 56], [190, 170, 104], [150, 128, 92], [118, 146, 70]],
    np.float32,
)
MAIZE_HEIGHT_M = np.array([0.3, 1.6, 2.5, 2.2, 0.0, 0.3], np.float32)
CONIFER_RGB = np.array([44, 74, 50], np.float32)
PINE_RGB = np.array([64, 96, 56], np.float32)
OLIVE_RGB = np.array([118, 132, 100], np.float32)
DRY_GRASS_RGB = np.array([168, 156, 104], np.float32)
SOILS = np.array([[128, 100, 74], [146, 96, 70], [132, 122, 104], [110, 92, 72]], np.float32)
ROCK_RGB = np.array([190, 188, 178], np.float32)
STONE_WALL_RGB = np.array([176, 170, 154], np.float32)
PLASTERS = np.array(
    [[236, 232, 224], [232, 216, 176], [228, 204, 128], [222, 184, 172], [226, 176, 126],
     [196, 196, 190], [214, 222, 200]],
    np.float32,
)  # fmt: skip
ROOFS = np.array(
    [[170, 78, 52], [150, 70, 50], [186, 98, 64], [112, 70, 56], [84, 84, 90]], np.float32
)
TIMBER_RGB = np.array([108, 76, 52], np.float32)
SHUTTERS = np.array([[70, 110, 70], [110, 80, 56], [120, 120, 116], [60, 90, 120]], np.float32)
ASPHALT_RGB = np.array([88, 88, 92], np.float32)
GRAVEL_RGB = np.array([180, 172, 152], np.float32)
LINE_RGB = np.array([232, 232, 226], np.float32)
METAL_RGB = np.array([168, 172, 176], np.float32)
SEA_DEEP_RGB = np.array([28, 78, 124], np.float32)
SKY_CLEAR_RGB = np.array([74, 126, 206], np.float32)
SKY_OVERCAST_RGB = np.array([178, 182, 188], np.float32)
HAZE_RGB = np.array([214, 220, 228], np.float32)
WARM_RGB = np.array([240, 196, 150], np.float32)  # low sun
CLOUD_RGB = np.array([240, 241, 244], np.float32)


# ---------------------------------------------------------------------------------------------
# Weather and light: drawn per location, independent of where it is


@dataclass
class Light:
    season: float  # 0..1, cyclic
    overcast: float  # 0 clear .. 1 fully overcast
    visibility_km: float
    sun_azimuth: float  # degrees, clockwise from north
    sun_elevation: float  # degrees
    direct: float  # strength of direct sunlight
    tint: np.ndarray  # (3,) colour of the light
    zenith: np.ndarray  # (3,) sky colour overhead
    haze: np.ndarray  # (3,) sky colour at the horizon


def draw_light(rng: np.random.Generator) -> Light:
    overcast = float(rng.beta(0.7, 1.1))
    elevation = float(rng.uniform(4, 68))
    low = math.exp(-elevation / 12.0)  # 1 at sunrise, ~0 at noon
    tint = np.float32(1) + (WARM_RGB / 255 / 0.92 - 1) * low * (1 - overcast) * 0.8
    haze = HAZE_RGB + (WARM_RGB - HAZE_RGB) * (0.6 * low * (1 - overcast))
    haze = haze * rng.normal(1.0, 0.03, 3).astype(np.float32)
    zenith = SKY_CLEAR_RGB * rng.uniform(0.85, 1.12, 3).astype(np.float32)
    zenith = zenith + (SKY_OVERCAST_RGB * rng.uniform(0.8, 1.1) - zenith) * overcast**0.7
    return Light(
        season=float(rng.random()),
        overcast=overcast,
        visibility_km=float(np.exp(rng.uniform(np.log(8.0), np.log(80.0)))),
        sun_azimuth=float(rng.uniform(0, 360)),
        sun_elevation=elevation,
        direct=(1 - overcast) * (0.35 + 0.65 * math.sin(math.radians(elevation))),
        tint=tint.astype(np.float32),
        zenith=zenith.astype(np.float32),
        haze=haze.astype(np.float32),
    )


def seasonal(table: np.ndarray, season: float) -> np.ndarray:
    """Interpolate a keyframe table (rows at `SEASON_KEYS`) at `season`."""
    out = [np.interp(season, SEASON_KEYS, table[:, k]) for k in range(table.shape[1])]
    return np.asarray(out, np.float32)


@dataclass
class Palette:
    grass: np.ndarray
    foliage: np.ndarray  # deciduous leaves, with the season
    evergreen: np.ndarray  # conifers, pines, cypresses and olives, whatever the season
    bare: bool  # deciduous trees without leaves
    maize: np.ndarray
    maize_height: float
    grassed: float  # how much grass grows between vines and olive trees
    soil: np.ndarray
    sea: np.ndarray


def make_palette(scene, light: Light, rng: np.random.Generator) -> Palette:
    """Colours of this location's vegetation: mostly the season's, a little the region's."""
    jitter = lambda: rng.normal(1.0, 0.06, 3).astype(np.float32)  # noqa: E731
    grass = seasonal(GRASS, light.season) * jitter()
    grass = grass + (DRY_GRASS_RGB - grass) * (0.15 * float(scene["dryness"]) * rng.random())
    season = light.season
    sea = SEA_DEEP_RGB + (light.zenith - SEA_DEEP_RGB) * (0.25 + 0.5 * light.overcast)
    return Palette(
        grass=grass,
        foliage=seasonal(FOLIAGE, season) * jitter(),
        evergreen=(CONIFER_RGB + (PINE_RGB - CONIFER_RGB) * rng.uniform(-0.2, 1.6)) * jitter(),
        bare=0.76 < season < 0.97,
        maize=seasonal(MAIZE, season) * jitter(),
        maize_height=float(np.interp(season, SEASON_KEYS, MAIZE_HEIGHT_M)),
        grassed=float(rng.uniform(0.1, 0.9)),
        soil=SOILS[rng.integers(len(SOILS))] * jitter(),
        sea=sea.astype(np.float32),
    )


# ---------------------------------------------------------------------------------------------
# Layout: the road, the fields beside it and the objects, in metres around the camera


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
            kind = FIELD_KINDS[_choice(rng, scene["field_kinds"])]
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


def _choice(rng: np.random.Generator, shares: np.ndarray) -> int:
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
    form = scene["wood_form"] if rng.random() < 0.8 else _choice(rng, scene["tree_forms"])
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
        form = HOUSE_FORMS[_choice(rng, scene["house_forms"])]
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
        form = TREE_FORMS[_choice(rng, scene["tree_forms"])]
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


# ---------------------------------------------------------------------------------------------
# Rendering


@dataclass
class View:
    """One camera: heading, image size, horizon row; world <-> camera helpers."""

    heading: float
    size: int
    horizon: float

    @property
    def focal(self) -> float:
        return self.size / 2.0

    def camera(self, east, north):
        """World metres (east, north) -> (depth ahead, offset to the right)."""
        t = math.radians(self.heading)
        return east * math.sin(t) + north * math.cos(t), east * math.cos(t) - north * math.sin(t)

    def ray_directions(self):
        """Per column, the world direction (east, north) of the ray with unit forward depth."""
        t = math.radians(self.heading)
        x = (np.arange(self.size, dtype=np.float64) + 0.5 - self.size / 2) / self.focal
        return math.sin(t) + x * math.cos(t), math.cos(t) - x * math.sin(t)


def compose_scene(scene: dict[str, np.ndarray], rng: np.random.Generator):
    """One location's drawn zone style, light, palette and layout, in the renderer's RNG order.

    Returns `(scene, light, palette, layout)`: `scene` with the drawn zone's shares and chances
    added. `render_views` draws from it; `experiments/perception_gap.py` counts its objects.
    """
    scene = {**scene, **zone_style(_choice(rng, scene["zones"]))}
    scene["wood_form"] = _choice(rng, scene["tree_forms"])  # woods here are mostly of it
    light = draw_light(rng)
    palette = make_palette(scene, light, rng)
    return scene, light, palette, draw_layout(scene, palette, rng)


def render_views(scene: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """The four views (headings 0, 90, 180, 270) of one location: uint8 (4, size, size, 3).

    `scene` holds one location's entries of `world.scene_parameters`.
    """
    s = int(size)
    scene, light, palette, layout = compose_scene(scene, rng)
    horizon = s * (0.5 + float(rng.normal(0.0, 0.03)))
    horizon = min(max(horizon, s * 0.38), s * 0.62)
    columns = _column_weights(s).T  # rays -> image columns
    mountain_px = _mountain_profile(scene["horizon_angle"][VIEW_RAYS] @ columns, s, rng)
    sea_px = s * (scene["sea_band"][VIEW_RAYS] @ columns)  # (4, S)
    image = np.empty((4, s, s, 3), np.float32)
    depth = np.empty((4, s, s), np.float32)
    sky_seed = int(rng.integers(2**31))
    for index, heading in enumerate(HEADINGS):
        view = View(float(heading), s, horizon)
        canvas, zbuf = image[index], depth[index]
        _paint_sky(canvas, zbuf, view, light, np.random.default_rng([sky_seed, index]))
        _paint_mountains(canvas, zbuf, view, mountain_px[index], scene, light, rng)
        land_limit = _paint_ground(canvas, zbuf, view, layout, palette, light, sea_px[index], rng)
        for line in layout.lines:
            _paint_line(canvas, zbuf, view, layout, line, palette, light, land_limit)
        _paint_sprites(canvas, zbuf, view, layout, palette, light, land_limit)
    return _finish(image, rng)


@lru_cache(maxsize=8)
def _column_weights(size: int) -> np.ndarray:
    """(S, 5): linear interpolation of each image column between the view's five rays."""
    offset = 2.0 * (np.arange(size) + 0.5) / size - 1.0
    position = (np.degrees(np.arctan(offset)) + 45.0) / 22.5  # 0..4 across the view
    low = np.clip(np.floor(position).astype(int), 0, RAYS_PER_VIEW - 2)
    frac = position - low
    weights = np.zeros((size, RAYS_PER_VIEW), np.float32)
    weights[np.arange(size), low] = 1 - frac
    weights[np.arange(size), low + 1] = frac
    return weights


@lru_cache(maxsize=64)
def _interpolation_matrix(cells: int, size: int) -> np.ndarray:
    """(size, cells): smooth interpolation of a coarse random grid onto `size` pixels."""
    position = np.clip((np.arange(size) + 0.5) / size * cells - 0.5, 0, cells - 1.001)
    low = position.astype(int)
    frac = position - low
    frac = frac * frac * (3 - 2 * frac)  # smoothstep: no creases at the coarse nodes
    matrix = np.zeros((size, cells), np.float32)
    matrix[np.arange(size), low] = 1 - frac
    matrix[np.arange(size), low + 1] = frac
    return matrix


def _smooth_noise(rng: np.random.Generator, cells: tuple[int, int], shape: tuple[int, int]):
    """(rows, cols) smooth noise in [0, 1): a coarse random grid, upsampled."""
    coarse = rng.random(cells, dtype=np.float32)
    rows = _interpolation_matrix(cells[0], shape[0])
    cols = _interpolation_matrix(cells[1], shape[1])
    return rows @ coarse @ cols.T


@lru_cache(maxsize=4)
def _lattice() -> np.ndarray:
    """A fixed 64 x 64 tile of uniform noise for textures in world coordinates."""
    return np.random.default_rng(NOISE_SEED + 1).random((64, 64), dtype=np.float32)


def _hash_noise(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Blocky noise in [0, 1) at integer cells of (u, v), repeating every 64 cells."""
    return _lattice()[np.floor(u).astype(np.int64) % 64, np.floor(v).astype(np.int64) % 64]


def _mountain_profile(angle: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Silhouette height in pixels per column, (4, S): relief plus a rough ridge line."""
    height = np.clip(RELIEF_EXAGGERATION * angle / VERTICAL_FOV_RAD, 0, 0.42) * s
    ridge = 0.7 * _ridge_noise(rng, 6, s) + 0.3 * _ridge_noise(rng, 17, s)  # in [0, 1)
    return height * (0.85 + 0.3 * ridge) + 2.0 * ridge * (height > 0.5)


def _ridge_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    return rng.random((4, cells), dtype=np.float32) @ _interpolation_matrix(cells, size).T


def _paint_sky(canvas, zbuf, view: View, light: Light, rng) -> None:
    """Sky over the whole canvas: haze at the horizon, the zenith colour above, clouds, sun."""
    s, horizon = view.size, view.horizon
    rows = np.arange(s, dtype=np.float32)
    up = np.clip((horizon - rows) / (horizon + 0.35 * s), 0, 1) ** 0.55
    sky = light.haze + (light.zenith - light.haze) * up[:, None]  # (S, 3)
    sky = np.broadcast_to(sky[:, None, :], (s, s, 3)).copy()
    cover = min(max(light.overcast * 1.1 + rng.normal(0, 0.08), 0.0), 1.0)
    high = max(int(math.ceil(horizon)), 1)  # clouds only above the horizon
    puffs = 0.6 * _smooth_noise(rng, (4, 6), (high, s)) + 0.4 * _smooth_noise(
        rng, (8, 13), (high, s)
    )
    fade = np.clip(up[:high] * 2.5, 0, 1)[:, None]  # thin towards the horizon, into the haze
    clouds = np.clip((puffs - (1 - cover) * 0.85) * 4, 0, 1) * fade
    shading = 1.0 - 0.35 * light.overcast * _smooth_noise(rng, (5, 8), (high, s))
    grey = CLOUD_RGB * shading[..., None]
    sky[:high] += (grey - sky[:high]) * clouds[..., None]
    relative = (light.sun_azimuth - view.heading + 180) % 360 - 180
    if abs(relative) < 60 and light.direct > 0.1:  # the sun in or near this view: glare
        col = s / 2 + view.focal * math.tan(math.radians(relative))
        row = horizon - view.focal * math.tan(math.radians(light.sun_elevation))
        cols = np.arange(s, dtype=np.float32)
        d2 = ((cols[None, :] - col) ** 2 + (rows[:, None] - row) ** 2) / (0.35 * s) ** 2
        glare = light.direct * 0.8 * np.exp(-d2)[..., None]
        sky += (np.array([255, 248, 232], np.float32) - sky) * glare
    canvas[:] = sky * light.tint
    zbuf[:] = FAR


def _paint_mountains(canvas, zbuf, view: View, profile, scene, light: Light, rng) -> None:
    """Silhouettes of relief and islands over the sky, fading into the haze with distance."""
    s, horizon = view.size, view.horizon
    if profile.max() < 0.5:
        return
    top = int(max(math.floor(horizon - profile.max()), 0))
    bottom = int(math.ceil(horizon)) + 1
    rows = np.arange(top, bottom, dtype=np.float32)[:, None] + 0.5
    mask = (rows >= horizon - profile[None, :]) & (rows < horizon + 1)
    clearness = math.exp(-15.0 / light.visibility_km)
    clarity = np.clip(profile / (0.25 * s), 0.2, 0.75) * (0.35 + 0.65 * clearness)
    tone = np.array([62, 82, 70], np.float32) * (0.8 + 0.2 * light.season)
    rocky = 0.6 * float(scene["rock"])
    streaks = _smooth_noise(rng, (6, 40), (bottom - top, s))
    bare = np.clip((streaks - 0.5) * 5, 0, 1) * rocky
    tone = tone + (ROCK_RGB * 0.8 - tone) * bare[..., None]
    # Lower slopes lie farther in the haze than the ridge above them.
    height = np.clip((horizon - rows) / np.maximum(profile[None, :], 1), 0, 1)[..., None]
    clarity = clarity[None, :, None] * (0.75 + 0.25 * height)
    colour = light.haze + (tone - light.haze) * clarity
    region = canvas[top:bottom]
    region[:] = np.where(mask[..., None], colour * light.tint, region)
    zbuf[top:bottom][mask] = SEA_DEPTH * 2


def _ground_coordinates(view: View, layout: Layout, rows: np.ndarray):
    """Per ground pixel: depth ahead (m), and the point's (along, across) in the road's frame."""
    s, f = view.size, view.focal
    depth = f * CAMERA_HEIGHT_M / np.maximum(rows + 0.5 - view.horizon, 0.05)  # (R, 1)
    right = (np.arange(s, dtype=np.float32)[None, :] + 0.5 - s / 2) / f * depth  # (R, S)
    east, north = _camera_to_world(view, depth, right)
    along, across = _road_frame(layout, east, north)
    return np.broadcast_to(depth, right.shape), along, across - layout.curve * along * np.abs(along)


def _camera_to_world(view: View, depth, right):
    t = math.radians(view.heading)
    return depth * math.sin(t) + right * math.cos(t), depth * math.cos(t) - right * math.sin(t)


def _road_frame(layout: Layout, east, north):
    b = math.radians(layout.bearing)
    return east * math.sin(b) + north * math.cos(b), east * math.cos(b) - north * math.sin(b)


def _paint_ground(canvas, zbuf, view, layout: Layout, palette, light, sea_px, rng) -> np.ndarray:
    """Road, verges, fields and far land below the horizon; the sea band where it lies.

    Returns per column the distance beyond which the land ends in the sea (inf: no sea).
    """
    s, horizon = view.size, view.horizon
    first = int(math.floor(horizon))
    rows = np.arange(first, s, dtype=np.float32)[:, None]
    depth, along, across = _ground_coordinates(view, layout, rows)
    dist = np.abs(across)
    texture = 0.9 + 0.2 * _hash_noise(along * 1.3, across * 1.3)
    colour = np.broadcast_to(palette.grass * texture[..., None], (*depth.shape, 3)).copy()
    reach = np.zeros_like(dist)
    for plot in layout.plots:
        stretch = (np.sign(across) == plot.side) & (along >= plot.along0) & (along < plot.along1)
        reach = np.where(stretch, plot.depth, reach)
        inside = stretch & (dist > layout.half_width + layout.verge) & (dist < plot.depth)
        _field_ground(colour, inside, plot.kind, along, across, depth, palette)
    far = dist >= np.where(reach > 0, reach, 60.0)
    mottle = 0.3 * _hash_noise(along / 40, across / 40)[..., None]
    mottled = palette.grass + (palette.soil - palette.grass) * mottle
    colour[far] = mottled[far] * 0.92
    road = dist < layout.half_width
    surface = GRAVEL_RGB if layout.gravel else ASPHALT_RGB
    colour[road] = surface * (0.93 + 0.1 * _hash_noise(along * 2, across * 2))[road][:, None]
    if not layout.gravel:
        centre = (dist < 0.08 + 0.004 * depth) & (np.floor(along / 4.5) % 2 == 0)
        edge = np.abs(dist - layout.half_width + 0.25) < 0.08 + 0.004 * depth
        colour[centre | edge] = LINE_RGB
    shoulder = (dist >= layout.half_width) & (dist < layout.half_width + 0.7)
    colour[shoulder] = colour[shoulder] * 0.6 + GRAVEL_RGB * 0.4
    haze = 1 - np.exp(-depth / (light.visibility_km * 200.0))
    haze = np.maximum(haze, 0.4 * np.exp(-(rows - horizon) / (0.05 * s)))[..., None]
    shade = 0.75 + 0.35 * light.direct
    colour = colour * shade
    colour += (light.haze - colour) * haze
    canvas[first:] = colour * light.tint
    zbuf[first:] = depth
    land_limit = np.full(s, np.inf, np.float32)
    if sea_px.max() >= 0.5:
        land_limit = _paint_sea(canvas, zbuf, view, sea_px, palette, light, rng)
    return land_limit


def _field_ground(colour, side, kind, along, across, depth, palette: Palette) -> None:
    """Ground of one field kind, in place, where `side` is true."""
    if kind == "wood":
        colour[side] = colour[side] * 0.7
        return
    # Only the field's own pixels: most fields cover a small part of a view, or none of it.
    if not side.any():
        return
    along, across, depth = along[side], across[side], depth[side]
    if kind == "maize":  # rows along the road, or bare stubble out of season
        stripe = (np.floor(np.abs(across) / 0.8) % 2 == 0) & (depth < 40)
        value = np.where(stripe, 0.82, 1.0)[..., None] * (palette.maize * 0.6 + palette.soil * 0.4)
        colour[side] = value
    elif kind == "vineyard" or kind == "olive_grove":
        soil = palette.soil + (palette.grass - palette.soil) * palette.grassed
        colour[side] = soil * (0.9 + 0.2 * _hash_noise(along * 3, across * 3))[:, None]
    elif kind == "karst":
        rock = _hash_noise(along * 1.7 + 11, across * 1.7 + 5) > 0.78
        shadow = _hash_noise(along * 1.7 + 11, across * 1.7 + 5.6) > 0.85
        dry = palette.grass * 0.8 + DRY_GRASS_RGB * 0.2
        patch = np.where(rock[..., None], (ROCK_RGB + palette.grass) * 0.5, dry)
        patch = np.where((shadow & ~rock)[..., None], patch * 0.75, patch)
        colour[side] = patch
    elif kind == "ploughed":  # furrows along the road
        furrow = 0.8 + 0.25 * (np.floor(np.abs(across) / 0.7) % 2)
        colour[side] = palette.soil * np.where(depth < 40, furrow, 0.9)[..., None]


def _paint_sea(canvas, zbuf, view: View, sea_px, palette: Palette, light: Light, rng):
    s, horizon = view.size, view.horizon
    top = int(math.floor(horizon))
    band = int(math.ceil(horizon + sea_px.max())) + 1
    rows = np.arange(top, min(band, s), dtype=np.float32)[:, None] + 0.5
    within = (rows >= horizon) & (rows < horizon + sea_px[None, :])
    depth = np.clip((rows - horizon) / np.maximum(sea_px[None, :], 1), 0, 1)[..., None]
    sea = light.haze + (palette.sea - light.haze) * (0.35 + 0.65 * depth)
    ripple = rng.standard_normal((rows.shape[0], 1, 1), dtype=np.float32)
    sea = sea * (1 + 0.05 * ripple + 0.04 * rng.standard_normal((1, s, 1), dtype=np.float32))
    region = canvas[top : top + rows.shape[0]]
    region[:] = np.where(within[..., None], sea * light.tint, region)
    zbuf[top : top + rows.shape[0]][within] = SEA_DEPTH
    px = np.maximum(sea_px, 1e-3)
    limit = view.focal * CAMERA_HEIGHT_M / px
    return np.where(sea_px >= 0.5, limit, np.inf).astype(np.float32)


def _line_depth(view: View, layout: Layout, across: float):
    """Per column, the depth where the column's ray meets the road-parallel curve at `across`."""
    east, north = view.ray_directions()
    a, n = _road_frame(layout, east, north)
    k = layout.curve
    with np.errstate(divide="ignore", invalid="ignore"):
        straight = np.where(np.abs(n) > 1e-9, across / n, np.inf)
        qa = k * a * np.abs(a)
        disc = n * n - 4 * qa * across
        root = np.sqrt(np.maximum(disc, 0))
        r1, r2 = (n - root) / (2 * qa), (n + root) / (2 * qa)
        r1 = np.where(r1 > 0, r1, np.inf)
        r2 = np.where(r2 > 0, r2, np.inf)
        curved = np.where(disc >= 0, np.minimum(r1, r2), np.inf)
        lam = np.where(np.abs(qa) < 1e-7, straight, curved)
    lam = np.where(lam > 0.8, lam, np.inf)
    return lam, lam * a


def _cross_depth(view: View, layout: Layout, along: float):
    """Per column, the depth where the ray meets the line across the road at `along`."""
    east, north = view.ray_directions()
    a, n = _road_frame(layout, east, north)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(np.abs(a) > 1e-9, along / a, np.inf)
    lam = np.where(lam > 0.8, lam, np.inf)
    return lam, lam * n


def _paint_line(canvas, zbuf, view: View, layout, line, palette, light: Light, land_limit):
    """A structure of given height along the road: wall, guard rail, wind screen, maize, vines,
    trees."""
    kind, offset, a0, a1, height, params = line
    s, f, horizon = view.size, view.focal, view.horizon
    if params.get("across_road"):  # straight, at a fixed distance along the road
        lam, along = _cross_depth(view, layout, offset)
        across = float(np.mean((a0, a1)))
    else:
        lam, along = _line_depth(view, layout, offset)
        across = offset
    valid = np.isfinite(lam) & (along >= a0) & (along <= a1) & (lam < land_limit) & (lam < 800)
    if not valid.any():
        return
    lam, along = np.where(valid, lam, 1.0), np.where(valid, along, 0.0)
    gap_m = None  # per column: the open height under a canopy (umbrella pines)
    if kind == "wood":
        top_m, gap_m = _wood_profile(params["style"], along, height)
    elif kind == "hedge":
        top_m = height * (0.9 + 0.15 * _hash_noise(along / 1.5, 1.0))
    else:
        top_m = np.full(s, height, np.float32)
    foot = horizon + f * CAMERA_HEIGHT_M / lam
    top = horizon + f * (CAMERA_HEIGHT_M - top_m) / lam
    r0 = int(max(math.floor(np.where(valid, top, s).min()), 0))
    r1 = int(min(math.ceil(np.where(valid, foot, 0).max()) + 1, s))
    if r1 <= r0:
        return
    rows = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
    mask = valid[None, :] & (rows >= top[None, :]) & (rows < foot[None, :] + 0.5)
    if gap_m is not None:
        under = horizon + f * (CAMERA_HEIGHT_M - gap_m) / lam
        mask &= rows < under[None, :]
    if kind == "fence":  # posts and two rails, see-through
        v_rows = (rows - top[None, :]) / np.maximum(foot - top, 1e-3)[None, :]
        post = ((along / 2.5) % 1.0 < 0.08 + 0.5 / np.maximum(f / lam, 0.5))[None, :]
        rail = (np.abs(v_rows - 0.15) < 0.07) | (np.abs(v_rows - 0.55) < 0.07)
        mask &= post | rail
    if kind == "wind_screen":  # upright slats with narrow slits between them
        mask &= ((along / 0.6) % 1.0 > 0.2 - 0.1 * np.minimum(lam / 40, 1))[None, :]
    mask &= lam[None, :] < zbuf[r0:r1]
    if not mask.any():
        return
    v = np.clip((rows - top[None, :]) / np.maximum(foot - top, 1e-3)[None, :], 0, 1)  # 0 at top
    colour = _line_colour(kind, along, v, lam, palette, params)
    side = 1.0 + 0.25 * light.direct * _facing(view, layout, across, light)
    colour = colour * side
    haze = (1 - np.exp(-lam / (light.visibility_km * 200.0)))[None, :, None]
    colour = (colour + (light.haze - colour) * haze) * light.tint
    region, depth = canvas[r0:r1], zbuf[r0:r1]
    region[mask] = np.broadcast_to(colour, (*mask.shape, 3))[mask]
    depth[mask] = np.broadcast_to(lam[None, :], mask.shape)[mask]


def _wood_profile(style: str, along: np.ndarray, height: float):
    """Per column: the top of a wood's edge (m), and the open height under it (m) or None."""
    jitter = _hash_noise(along / 4.0, 3.0)
    if style == "conifer":  # saw teeth of spruce and fir
        phase = (along / 3.5) % 1.0
        return height * (0.75 + 0.3 * (1 - 2 * np.abs(phase - 0.5))) + 2 * jitter, None
    if style in ("cypresses", "poplars"):  # a row of columns, sky between them
        phase = (along / 3.5) % 1.0
        shape = np.sqrt(np.clip(1 - ((phase - 0.5) / 0.32) ** 2, 0, 1))
        top = height * (0.85 + 0.25 * jitter) * shape
        return np.where(shape > 0, top, -1.0), None
    if style == "umbrella":  # flat crowns of pines on bare trunks
        phase = (along / 6.0) % 1.0
        top = height * (0.92 + 0.1 * np.sqrt(np.clip(1 - (2 * phase - 1) ** 2, 0, 1)))
        trunk = np.abs(phase - 0.5) < 0.05
        return top, np.where(trunk, 0.0, height * (0.62 + 0.1 * jitter))
    if style == "macchia":  # low, dense, ragged scrub
        return height * (0.7 + 0.45 * _hash_noise(along / 1.5, 5.0)), None
    phase = (along / 7.0) % 1.0  # round crowns of oak and beech
    return height * (
        0.8 + 0.25 * np.sqrt(np.clip(1 - (2 * phase - 1) ** 2, 0, 1))
    ) + 2 * jitter, None


def _facing(view: View, layout: Layout, across: float, light: Light) -> float:
    """+1 when a structure on this side of the road faces the sun, -1 when it is in shade."""
    normal = math.radians(layout.bearing + (-90 if across > 0 else 90))  # faces the road
    return math.cos(normal - math.radians(light.sun_azimuth))


def _line_colour(kind, along, v, lam, palette: Palette, params) -> np.ndarray:
    rows = v.shape[0]
    a = np.broadcast_to(along[None, :], v.shape)
    if kind == "wall":  # dry stone: blocks with dark joints
        block = _hash_noise(a / 0.45 + np.floor(v * 4) * 0.5, v * 4)
        joint = ((a / 0.45 + np.floor(v * 4) * 0.5) % 1 < 0.12) | ((v * 4) % 1 < 0.15)
        shade = (0.75 + 0.35 * block) * np.where(joint & (lam[None, :] < 25), 0.6, 1.0)
        return STONE_WALL_RGB * shade[..., None]
    if kind == "guardrail":
        band = (v > 0.15) & (v < 0.55)
        post = (a % 4.0) < 0.25
        colour = np.where((band | post)[..., None], METAL_RGB, np.float32(np.nan))
        colour = np.where(np.isnan(colour), palette.grass * 0.8, colour)
        groove = (np.abs(v - 0.35) < 0.05)[..., None]
        return np.where(groove, METAL_RGB * 0.7, colour)
    if kind == "maize":
        leaf = _hash_noise(a / 0.35, v * 6)
        stalk = (a / 0.35) % 1 < 0.35
        tassel = (v < 0.12)[..., None]
        base = palette.maize * (0.7 + 0.45 * leaf)[..., None]
        base = np.where(stalk[..., None], base * 0.8, base)
        return np.where(tassel, base * 1.15 + 15, base)
    if kind == "vine":
        leaf = _hash_noise(a / 0.5, v * 4 + params["row"] * 7)
        colour = palette.foliage * (0.65 + 0.45 * leaf)[..., None]
        if palette.bare:
            colour = np.where((leaf > 0.55)[..., None], TIMBER_RGB, palette.soil)
        post = (a % 5.0) < 0.3
        return np.where(post[..., None], np.float32(150.0), colour)
    if kind == "wind_screen":  # grey panels on steel posts
        post = (a % 4.0) < 0.25
        return np.where(
            post[..., None], METAL_RGB * 0.7, METAL_RGB * 0.85 * (0.9 + 0.2 * v[..., None])
        )
    if kind == "fence":
        return TIMBER_RGB * 1.3 * (0.85 + 0.3 * _hash_noise(a / 2.5, v * 2))[..., None]
    leaf = _hash_noise(a / 1.2, v * 10)
    style = params.get("style", "round")
    if kind == "hedge" or style in ("round", "macchia", "poplars"):
        base = palette.foliage * 0.85
        if palette.bare and kind == "wood" and style in ("round", "poplars"):
            base = TIMBER_RGB * 0.9 + palette.grass * 0.1
        if style == "macchia":
            base = palette.evergreen
    else:
        base = palette.evergreen * (1.1 if style == "umbrella" else 1.0)
    if style == "umbrella":  # the trunks below the canopy
        base = np.where((v > 0.4)[..., None], TIMBER_RGB * 0.7, base)
    shade = (0.7 + 0.45 * leaf) * (1.05 - 0.3 * v)
    return base * shade[..., None] + np.zeros((rows, 1, 1), np.float32)


def _paint_sprites(canvas, zbuf, view: View, layout: Layout, palette, light: Light, land_limit):
    """Houses, trees, posts and signs, each where its view sees it, with the depth test."""
    if not layout.sprites:
        return
    s, f = view.size, view.focal
    along = np.array([sprite[1] for sprite in layout.sprites])
    across = np.array([sprite[2] for sprite in layout.sprites])
    across = across + layout.curve * along * np.abs(along)
    b = math.radians(layout.bearing)
    east = along * math.sin(b) + across * math.cos(b)
    north = along * math.cos(b) - across * math.sin(b)
    depth, right = view.camera(east, north)
    column = s / 2 + f * right / np.maximum(depth, 1e-3)
    visible = (depth > 1.5) & (column > -0.3 * s) & (column < 1.3 * s)
    for index in np.flatnonzero(visible):
        z, col = float(depth[index]), float(column[index])
        limit = land_limit[min(max(int(col), 0), s - 1)]
        if z > limit:
            continue  # it would stand in the sea
        kind, _, _, params = layout.sprites[index]
        base = view.horizon + f * CAMERA_HEIGHT_M / z
        ppm = f / z  # pixels per metre at that depth
        haze = 1 - math.exp(-z / (light.visibility_km * 200.0))
        paint = _SPRITES[kind]
        paint(Sprite(canvas, zbuf, col, base, ppm, z, haze, light, view, layout), params, palette)


@dataclass
class Sprite:
    """Where one object stands in one view, and how to put pixels there."""

    canvas: np.ndarray
    zbuf: np.ndarray
    x: float  # column of the object's foot
    base: float  # row of the object's foot
    ppm: float  # pixels per metre
    depth: float
    haze: float
    light: Light
    view: View
    layout: Layout

    def box(self, left_m, top_m, right_m, bottom_m):
        """Pixel bounds (r0, r1, c0, c1) and pixel-centre coordinates in metres, or None."""
        s = self.canvas.shape[0]
        c0 = int(max(math.floor(self.x + left_m * self.ppm), 0))
        c1 = int(min(math.ceil(self.x + right_m * self.ppm) + 1, s))
        r0 = int(max(math.floor(self.base - top_m * self.ppm), 0))
        r1 = int(min(math.ceil(self.base - bottom_m * self.ppm) + 1, s))
        if c1 <= c0 or r1 <= r0:
            return None
        xm = (np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5 - self.x) / self.ppm
        ym = (self.base - np.arange(r0, r1, dtype=np.float32)[:, None] - 0.5) / self.ppm
        return (r0, r1, c0, c1), xm, ym

    def put(self, box, mask, colour, sunlit=None) -> None:
        """Paint `colour` where `mask` and nearer than what is there; lit and hazed."""
        r0, r1, c0, c1 = box
        mask = mask & (self.depth < self.zbuf[r0:r1, c0:c1])
        if not mask.any():
            return
        colour = np.asarray(colour, np.float32)
        shade = 0.72 + 0.38 * self.light.direct
        if sunlit is not None:
            shade = shade * (1 + 0.3 * self.light.direct * sunlit)
        colour = colour * (shade[..., None] if np.ndim(shade) else shade)
        colour = (colour + (self.light.haze - colour) * self.haze) * self.light.tint
        region = self.canvas[r0:r1, c0:c1]
        region[mask] = np.broadcast_to(colour, (*mask.shape, 3))[mask]
        self.zbuf[r0:r1, c0:c1][mask] = self.depth

    def sun_side(self, xm, half_width) -> np.ndarray:
        """-1..1 across an object: positive on the side that faces the sun."""
        relative = math.radians(self.light.sun_azimuth - self.view.heading)
        return np.clip(xm / max(half_width, 1e-3), -1, 1) * math.sin(relative)


def _paint_tree(sp: Sprite, params, palette: Palette) -> None:
    form, height = params["form"], params["height"]
    if height * sp.ppm < 1.5:
        return
    if form == "palm":
        _paint_palm(sp, params, palette)
        return
    tone = {"cypress": 0.85, "pine": 1.1, "fir": 0.92, "olive": 1.0}
    if form == "olive":  # silvery grey-green leaves
        foliage = palette.evergreen * 0.6 + OLIVE_RGB * 0.4
    elif form in tone:
        foliage = palette.evergreen * tone[form]
    else:
        foliage = palette.foliage
    foliage = foliage * params["shade"]
    trunk_rgb = TIMBER_RGB * 0.6
    half = {"cypress": 0.09, "pine": 0.32, "olive": 0.6, "fir": 0.2, "deciduous": 0.33,
            "poplar": 0.1}[form] * height  # fmt: skip
    box = sp.box(-half, height, half, 0)
    if box is None:
        return
    bounds, xm, ym = box
    u, v = xm / half, ym / height  # -1..1 across, 0..1 up
    if form == "cypress":  # a narrow spindle, pointed at the top
        crown = (v > 0.04) & (
            np.abs(u) < 1.0 * np.clip(np.sin(np.pi * np.clip(v, 0, 1) ** 0.8), 0, 1) ** 0.7
        )
        trunk = (v <= 0.04) & (np.abs(u) < 0.25)
    elif form == "pine":  # a bare trunk under a flat umbrella crown
        crown = ((u**2) + ((v - 0.82) / 0.17) ** 2 < 1) & (v > 0.68)
        trunk = (v <= 0.75) & (np.abs(u + 0.1 * (v - 0.4)) < 0.06)
    elif form == "olive":  # a low, wide, ragged crown on a short twisted trunk
        rag = 0.85 + 0.3 * _hash_noise(xm * 2.2 + params["shade"] * 50, ym * 2.2)
        crown = (u**2 + ((v - 0.6) / 0.38) ** 2) < rag
        trunk = (v < 0.35) & (np.abs(u - 0.1 * np.sin(v * 9)) < 0.12)
    elif form == "fir":  # a tiered cone
        tier = (v * 7) % 1.0
        crown = (v > 0.08) & (np.abs(u) < (1 - v) * (0.75 + 0.25 * tier))
        trunk = (v <= 0.08) & (np.abs(u) < 0.1)
    elif form == "poplar":  # a tall narrow column
        crown = (v > 0.1) & ((u**2 + ((v - 0.55) / 0.46) ** 2) < 1)
        trunk = (v <= 0.12) & (np.abs(u) < 0.2)
    else:  # deciduous: a big round crown on a trunk
        crown = (u**2 + ((v - 0.62) / 0.38) ** 2) < 1
        trunk = (v < 0.4) & (np.abs(u) < 0.1)
    if palette.bare and form in ("deciduous", "poplar"):
        twigs = _hash_noise(xm * 3 + 7, ym * 3) > 0.55
        crown = crown & twigs
        foliage = TIMBER_RGB * 0.9
    texture = 0.8 + 0.35 * _hash_noise(xm * 1.5, ym * 1.5)
    sp.put(bounds, trunk, trunk_rgb)
    sp.put(bounds, crown, foliage * texture[..., None], sp.sun_side(xm, half))


def _paint_house(sp: Sprite, params, palette: Palette) -> None:
    form, width = params["form"], params["width"]
    storeys = params["storeys"]
    wall_h = (2.9 * storeys + 0.6) if form != "alpine" else 2.8 * storeys
    if form == "stone":
        roof_h, wall_rgb = 1.3, STONE_WALL_RGB * 0.95
    elif form == "alpine":
        roof_h, wall_rgb = 0.9 * width, PLASTERS[params["plaster"]]
    elif form == "long":
        roof_h, wall_rgb = 0.55 * width, PLASTERS[params["plaster"]]
        wall_h = 3.4
    else:
        roof_h, wall_rgb = 0.42 * width, PLASTERS[params["plaster"]]
    wall_rgb = wall_rgb * params["shade"]
    roof_rgb = ROOFS[params["roof"]] * params["shade"]
    half = width / 2
    wing = width * 1.8 if form == "long" else 0.0  # the long side running back from the street
    box = sp.box(-half, wall_h + roof_h, half + wing, 0)
    if box is None or (wall_h + roof_h) * sp.ppm < 2:
        return
    bounds, xm, ym = box
    if wing:
        side_wall = (xm > half) & (ym < wall_h * 0.9)
        side_roof = (xm > half) & (ym >= wall_h * 0.9) & (ym < wall_h * 0.9 + 0.45 * roof_h)
        sp.put(bounds, side_wall, wall_rgb * 0.82)
        sp.put(bounds, side_roof, roof_rgb * 0.85)
    front = np.abs(xm) <= half
    wall = front & (ym < wall_h)
    if form == "stone":  # coursed stone, a low hipped roof wider than the wall
        course = _hash_noise(xm / 0.6 + np.floor(ym / 0.35) * 0.5, ym / 0.35)
        texture = (0.82 + 0.3 * course)[..., None]
        roof = (ym >= wall_h) & (np.abs(xm) < half + 0.4 - (ym - wall_h) * 1.6)
    else:  # smooth plaster, a gable (triangle) facing the street
        texture = np.float32(1.0)
        roof = (ym >= wall_h) & (np.abs(xm) < (half + 0.3) * (1 - (ym - wall_h) / roof_h))
    sp.put(bounds, wall, wall_rgb * texture)
    if form == "alpine":  # timber cladding under the steep roof
        timber = (ym >= wall_h) & (np.abs(xm) < (half - 0.6) * (1 - (ym - wall_h) / roof_h))
        sp.put(bounds, timber, TIMBER_RGB)
        roof = roof & ~timber
    sp.put(bounds, roof, roof_rgb, sp.sun_side(xm, half))
    _paint_windows(sp, bounds, xm, ym, form, half, wall_h, storeys, params)


def _paint_windows(sp, bounds, xm, ym, form, half, wall_h, storeys, params) -> None:
    if sp.ppm * 0.9 < 1.0:
        return
    small = form == "stone"
    w, h = (0.7, 1.0) if small else (1.2, 1.3)
    pitch = 2.4 if small else 2.8
    across = (np.abs(((xm + half) % pitch) - pitch / 2) < w / 2) & (np.abs(xm) < half - 0.6)
    floors = np.zeros(xm.shape[0] if np.ndim(ym) else 1, bool)[:, None]
    for storey in range(storeys):
        bottom = 1.0 + storey * 2.9
        floors = floors | ((ym > bottom) & (ym < bottom + h))
    window = across & floors & (ym < wall_h)
    sp.put(bounds, window, np.float32([40, 42, 48]))
    if small and sp.ppm > 2.0:  # shutters beside the stone houses' windows
        shutter = (np.abs(((xm + half) % pitch) - pitch / 2) < w / 2 + 0.3) & ~across & floors
        shutter &= (np.abs(xm) < half - 0.3) & (ym < wall_h)
        sp.put(bounds, shutter, SHUTTERS[params["shutter"]])


def _paint_post(sp: Sprite, params, palette) -> None:
    box = sp.box(-0.08, 1.0, 0.08, 0)
    if box is None or sp.ppm < 2:
        return
    bounds, xm, ym = box
    post = np.abs(xm) <= 0.08
    sp.put(bounds, post & (ym < 0.8), np.float32([236, 236, 232]))
    sp.put(bounds, post & (ym >= 0.8), np.float32([30, 30, 30]))


def _paint_pole(sp: Sprite, params, palette) -> None:
    height = params["height"]
    box = sp.box(-0.9, height, 0.9, 0)
    if box is None or sp.ppm < 0.4:
        return
    bounds, xm, ym = box
    pole = np.abs(xm) < max(0.14, 0.6 / sp.ppm)
    arm = (np.abs(ym - height * 0.93) < max(0.08, 0.5 / sp.ppm)) & (np.abs(xm) < 0.9)
    sp.put(bounds, pole | arm, np.float32([72, 64, 56]))


def _paint_sign(sp: Sprite, params, palette) -> None:
    box = sp.box(-0.45, 2.6, 0.45, 0)
    if box is None or sp.ppm < 1.5:
        return
    bounds, xm, ym = box
    pole = (np.abs(xm) < max(0.05, 0.5 / sp.ppm)) & (ym < 1.9)
    plate_y = ym - 2.2
    if params["shape"] == 0:  # triangle: warning
        plate = (plate_y > -0.35) & (np.abs(xm) < (0.4 - plate_y) * 0.6)
    elif params["shape"] == 1:  # disc: prohibition
        plate = xm**2 + plate_y**2 < 0.35**2
    else:  # rectangle: direction
        plate = (np.abs(xm) < 0.45) & (np.abs(plate_y) < 0.25)
    colours = np.float32([[210, 50, 40], [40, 90, 170], [230, 200, 60]])
    sp.put(bounds, pole, METAL_RGB * 0.8)
    sp.put(bounds, plate, colours[params["colour"]])


def _paint_shrub(sp: Sprite, params, palette: Palette) -> None:
    height = params["height"]
    box = sp.box(-height * 0.8, height, height * 0.8, 0)
    if box is None or height * sp.ppm < 1:
        return
    bounds, xm, ym = box
    rag = 0.8 + 0.4 * _hash_noise(xm * 3 + 5, ym * 3)
    bush = (xm / (0.8 * height)) ** 2 + ((ym - 0.45 * height) / (0.55 * height)) ** 2 < rag
    sp.put(bounds, bush, (palette.evergreen * 0.7 + palette.grass * 0.3), sp.sun_side(xm, height))


def _paint_kazun(sp: Sprite, params, palette) -> None:
    """Istria's kazun: a round dry-stone hut under a corbelled stone cone."""
    box = sp.box(-1.8, 4.6, 1.8, 0)
    if box is None or sp.ppm < 0.8:
        return
    bounds, xm, ym = box
    course = _hash_noise(xm / 0.4 + np.floor(ym / 0.3) * 0.5, ym / 0.3)
    stone = STONE_WALL_RGB * (0.8 + 0.3 * course)[..., None]
    drum = (np.abs(xm) < 1.6) & (ym < 2.3)
    cone = (ym >= 2.3) & (np.abs(xm) < 1.75 * (1 - (ym - 2.3) / 2.3))
    door = (np.abs(xm) < 0.35) & (ym < 1.4)
    sp.put(bounds, drum | cone, stone, sp.sun_side(xm, 1.6))
    sp.put(bounds, door, np.float32([45, 40, 36]))


def _paint_haystack(sp: Sprite, params, palette: Palette) -> None:
    """A haystack of the mountain meadows: a cone of hay round a pole sticking out on top."""
    height = params["height"]
    box = sp.box(-1.3, height + 0.8, 1.3, 0)
    if box is None or height * sp.ppm < 1.5:
        return
    bounds, xm, ym = box
    u, v = xm / 1.3, ym / height
    hay = (v < 1) & (np.abs(u) < np.clip(1.25 * np.sqrt(np.clip(1 - v, 0, 1)), 0, 1))
    pole = (np.abs(xm) < max(0.06, 0.4 / sp.ppm)) & (v >= 0.9)
    colour = (palette.grass * 0.35 + DRY_GRASS_RGB * 0.65) * 0.85
    sp.put(bounds, pole, TIMBER_RGB * 0.6)
    sp.put(bounds, hay, colour * (0.85 + 0.3 * _hash_noise(xm * 4, ym * 4))[..., None],
           sp.sun_side(xm, 1.3))  # fmt: skip


def _paint_palm(sp: Sprite, params, palette: Palette) -> None:
    """A palm of the southern coast: a thin bent trunk under a star of drooping fronds."""
    height = params["height"]
    radius = 0.45 * height
    box = sp.box(-radius, height + radius, radius + 0.08 * height, 0)
    if box is None:
        return
    bounds, xm, ym = box
    lean = 0.08 * height * (ym / height) ** 2
    trunk = (np.abs(xm - lean) < max(0.18, 0.5 / sp.ppm)) & (ym < height)
    dx, dy = xm - 0.08 * height, ym - height
    angle = np.arctan2(dy, dx)
    reach = radius * (0.75 + 0.25 * np.sin(angle))  # fronds droop: shorter below
    fronds = (np.hypot(dx, dy) < reach) & (np.cos(9 * angle + params["shade"] * 20) > 0.1)
    sp.put(bounds, trunk, TIMBER_RGB * 0.8)
    sp.put(bounds, fronds, palette.evergreen * params["shade"], sp.sun_side(xm, radius))


def _tower_shaft(sp: Sprite, params, colour):
    """A square church tower's shaft with its belfry openings; returns the box or None."""
    height, width = params["height"], params["width"]
    half = width / 2
    box = sp.box(-half - 0.4, height * 1.9, half + 0.4, 0)
    if box is None or height * sp.ppm < 3:
        return None
    bounds, xm, ym = box
    shaft = (np.abs(xm) <= half) & (ym < height)
    sp.put(bounds, shaft, colour, sp.sun_side(xm, half))
    belfry = (np.abs(np.abs(xm) - half / 2) < half / 4) & (ym > height - 3.2) & (ym < height - 1)
    sp.put(bounds, belfry, np.float32([40, 38, 36]))
    return bounds, xm, ym


def _paint_campanile(sp: Sprite, params, palette) -> None:
    """The coast's stone bell tower under a low pyramid roof."""
    stone = STONE_WALL_RGB * params["shade"]
    box = _tower_shaft(sp, params, stone)
    if box is None:
        return
    bounds, xm, ym = box
    height, half = params["height"], params["width"] / 2 + 0.3
    roof = (ym >= height) & (np.abs(xm) < half * (1 - (ym - height) / (0.9 * half)))
    sp.put(bounds, roof, ROOFS[1] * params["shade"], sp.sun_side(xm, half))


def _paint_onion_tower(sp: Sprite, params, palette) -> None:
    """A baroque plastered tower under an onion dome and a lantern spike."""
    box = _tower_shaft(sp, params, PLASTERS[params["plaster"]] * params["shade"])
    if box is None:
        return
    bounds, xm, ym = box
    height, half = params["height"], params["width"] / 2
    v = (ym - height) / (1.4 * half)  # 0..1 over the dome
    bulb = half * 1.3 * np.clip(np.sin(np.pi * np.clip(v, 0, 1)), 0, 1) ** 0.6 * (1.25 - 0.6 * v)
    dome = (v >= 0) & (v < 1) & (np.abs(xm) < np.maximum(bulb, 0.15))
    spike = (v >= 1) & (v < 1.5) & (np.abs(xm) < max(0.12, 0.5 / sp.ppm))
    sp.put(bounds, dome | spike, np.float32([66, 92, 82]), sp.sun_side(xm, half))


def _paint_spire(sp: Sprite, params, palette) -> None:
    """Slavonia's neo-Gothic tower: a plastered shaft under a tall, needle-like spire."""
    box = _tower_shaft(sp, params, PLASTERS[params["plaster"]] * params["shade"])
    if box is None:
        return
    bounds, xm, ym = box
    height, half = params["height"], params["width"] / 2 + 0.2
    rise = 0.9 * height
    spire = (ym >= height) & (np.abs(xm) < half * (1 - (ym - height) / rise))
    sp.put(bounds, spire, np.float32([58, 62, 68]), sp.sun_side(xm, half))


def _paint_turbine(sp: Sprite, params, palette) -> None:
    """A wind turbine: a tapering white tower and three blades."""
    hub, blade = params["hub"], 0.48 * params["hub"]
    box = sp.box(-blade, hub + blade, blade, 0)
    if box is None or hub * sp.ppm < 4:
        return
    bounds, xm, ym = box
    thick = max(1.5, 1.2 / sp.ppm)  # at least a pixel wide: thinner would vanish at 64 px
    tower = (np.abs(xm) < np.maximum(thick, 2.2 * (1 - 0.5 * ym / hub))) & (ym < hub)
    dx, dy = xm, ym - hub
    r = np.hypot(dx, dy)
    blades = np.zeros_like(tower)
    for k in range(3):
        along, off = _bar_frame(dx, dy, params["phase"] + k * 2 * np.pi / 3)
        blades |= (
            (along > 0) & (along < blade) & (off < np.maximum(thick, 1.6 * (1 - along / blade)))
        )
    white = np.float32([232, 234, 236])
    sp.put(bounds, tower | blades | (r < 2.2), white, sp.sun_side(xm, 2.2))


def _bar_frame(dx, dy, angle: float):
    """Coordinates along a bar leaving the origin at `angle` (radians from the x axis) and the
    distance across it, for the offsets `dx`, `dy` from its pivot."""
    along = dx * np.cos(angle) + dy * np.sin(angle)
    return along, np.abs(-dx * np.sin(angle) + dy * np.cos(angle))


def _paint_well_sweep(sp: Sprite, params, palette) -> None:
    """Slavonia's đeram: a post carrying a long tilted pole, a rope down to the well."""
    box = sp.box(-7.5, 9.2, 7.5, 0)
    if box is None or sp.ppm < 0.8:
        return
    bounds, xm, ym = box
    xm = xm * params["mirror"]
    thick = max(0.12, 0.45 / sp.ppm)
    post = (np.abs(xm) < thick * 1.4) & (ym < 4.2)
    a = np.radians(params["tilt"])  # the pole pivots on the post and rises towards the well
    along, off = _bar_frame(xm, ym - 4.2, a)
    pole = (along > -2.5) & (along < 7.5) & (off < thick)
    tip_x, tip_y = 7.5 * np.cos(a), 4.2 + 7.5 * np.sin(a)
    rope = (np.abs(xm - tip_x) < thick * 0.7) & (ym > 0.9) & (ym < tip_y)
    well = (np.abs(xm - tip_x) < 0.7) & (ym < 0.9)
    sp.put(bounds, post | pole | rope, TIMBER_RGB * 0.7)
    sp.put(bounds, well, STONE_WALL_RGB * 0.8)


def _paint_hayrack(sp: Sprite, params, palette) -> None:
    """A kozolec: posts carrying horizontal slats under a narrow roof."""
    width, bays = params["width"], params["bays"]
    half = width / 2
    box = sp.box(-half - 0.6, 5.6, half + 0.6, 0)
    if box is None or sp.ppm < 0.8:
        return
    bounds, xm, ym = box
    thick = max(0.15, 0.45 / sp.ppm)
    pitch = width / bays
    post = (np.abs(((xm + half + pitch / 2) % pitch) - pitch / 2) < thick) & (np.abs(xm) <= half)
    slats = (np.abs(xm) <= half) & (ym > 1.0) & (ym < 4.6) & ((ym % 0.55) < max(0.18, 0.8 / sp.ppm))
    roof = (ym >= 4.6) & (ym < 5.5) & (np.abs(xm) < half + 0.6 - (ym - 4.6) * 0.6)
    sp.put(bounds, (post & (ym < 4.6)) | slats, TIMBER_RGB * 0.75)
    sp.put(bounds, roof, ROOFS[3], sp.sun_side(xm, half))


_SPRITES = {
    "kazun": _paint_kazun,
    "haystack": _paint_haystack,
    "tree": _paint_tree,
    "olive": lambda sp, params, palette: _paint_tree(
        sp, {**params, "form": "olive", "shade": 1.0}, palette
    ),
    "house": _paint_house,
    "post": _paint_post,
    "pole": _paint_pole,
    "sign": _paint_sign,
    "shrub": _paint_shrub,
    "campanile": _paint_campanile,
    "onion_tower": _paint_onion_tower,
    "spire": _paint_spire,
    "turbine": _paint_turbine,
    "well_sweep": _paint_well_sweep,
    "hayrack": _paint_hayrack,
}


@lru_cache(maxsize=8)
def _noise_tile(size: int) -> np.ndarray:
    rng = np.random.default_rng(NOISE_SEED)
    return SENSOR_NOISE * rng.standard_normal((size + 61, size + 67, 3), dtype=np.float32)


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera variation: one exposure and white balance per location, sensor noise; to uint8."""
    s = image.shape[1]
    exposure = np.float32(np.exp(rng.normal(0.0, 0.18)))
    balance = rng.normal(1.0, 0.06, 3).astype(np.float32)
    image *= exposure * balance * rng.uniform(0.95, 1.05, (4, 1, 1, 1)).astype(np.float32)
    tile = _noise_tile(s)
    for view in range(4):
        dy, dx = rng.integers(0, 61), rng.integers(0, 67)
        image[view] += tile[dy : dy + s, dx : dx + s]
    return np.clip(image, 0, 255, out=image).astype(np.uint8)
