"""Draw the four street views of one synthetic location with numpy (no per-pixel Python loops).

Each location is one small 3-D scene around a camera standing on a road, seen in four
directions: objects and walls are placed once in metres and projected into every view that
faces them, with a depth buffer, so the views agree with each other and the heading matters.

What the location decides (`scene`, from `synthetic.scene.scene_parameters`): the sea band and
the mountain and island silhouettes on the horizon per direction, and the shares of tree forms,
field kinds and house forms, dry-stone walls, rock, guard rails, poles and road curvature.
What it does not decide: light, weather and season (time of day, sun direction, clear or
overcast sky, haze, the colour of grass and foliage), camera exposure and white balance, which
are drawn per location from the image RNG alone. Colour therefore says little about where a
location is; shapes and layout say more, each only in part.

`compose` draws a location (zone style, `light`, palette, `layout`) and paints its views, back
to front: `sky` (with the mountains), `ground` (with the sea), `lines` (structures along the
road), then `sprites` (objects standing on the ground: `vegetation`, `buildings`, `furniture`,
`landmarks`, each painted through a `sprite.Sprite`); `camera`, `colours` and `noise` serve
them all. Only numpy here: the pool workers that run it never import shapely or torch.
"""

from geoguess.synthetic.render.compose import compose_scene, render_views

__all__ = ["compose_scene", "render_views"]
