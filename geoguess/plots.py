"""Maps: the class grid and prediction errors over the country."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import shapely  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from geoguess.geo.boundary import load_regions  # noqa: E402
from geoguess.utils.io import atomic_write  # noqa: E402


def _draw_geometry(ax, geometry, **style) -> None:
    polygons = getattr(geometry, "geoms", [geometry])
    for polygon in polygons:
        if polygon.geom_type != "Polygon":
            continue
        x, y = polygon.exterior.xy
        ax.fill(x, y, **style)


def _draw_country(ax, country) -> None:
    try:
        for _, geometry in load_regions(country.neighbours):
            _draw_geometry(ax, geometry, facecolor="#eeeeee", edgecolor="#bbbbbb", linewidth=0.4)
    except Exception:  # noqa: BLE001 - the neighbours are decoration only
        pass
    _draw_geometry(ax, country.geometry, facecolor="#d9ead3", edgecolor="#4a7a3d", linewidth=0.7)
    lon0, lat0, lon1, lat1 = country.bounds
    pad = 0.15
    ax.set_xlim(lon0 - pad, lon1 + pad)
    ax.set_ylim(lat0 - pad, lat1 + pad)
    ax.set_aspect(1 / np.cos(np.radians((lat0 + lat1) / 2)))
    ax.set_facecolor("#cfe2f3")
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")


def _save(fig, path: Path, overwrite: bool) -> None:
    atomic_write(
        path, lambda tmp: fig.savefig(tmp, dpi=130, bbox_inches="tight", format="png"), overwrite
    )
    plt.close(fig)


def plot_grid(country, grid, path: str | Path, overwrite: bool = False) -> None:
    """Country, cells, centroids, and clipped centroids marked distinctly."""
    fig, ax = plt.subplots(figsize=(8, 7))
    _draw_country(ax, country)
    # Adaptive and region cells may be multi-part (an island merged with the coast) or holed.
    for ring in shapely.get_rings(shapely.get_parts(grid.cells())):
        x, y = ring.xy
        ax.plot(x, y, color="#555555", linewidth=0.5)
    table = grid.table
    kept = ~table["clipped"].to_numpy()
    ax.scatter(
        table["centroid_longitude"][kept],
        table["centroid_latitude"][kept],
        s=12,
        c="red",
        label="centroid (on land)",
    )
    clipped = table[table["clipped"]]
    ax.scatter(
        clipped["centroid_longitude"],
        clipped["centroid_latitude"],
        s=14,
        facecolors="none",
        edgecolors="red",
        label="centroid at sea/abroad",
    )
    ax.scatter(
        clipped["longitude"],
        clipped["latitude"],
        s=18,
        marker="x",
        c="blue",
        label="clipped centroid",
    )
    for _, r in clipped.iterrows():
        ax.plot(
            [r.centroid_longitude, r.longitude],
            [r.centroid_latitude, r.latitude],
            color="blue",
            linewidth=0.5,
        )
    x0, y0, x1, y1 = shapely.total_bounds(grid.cells())
    ax.set_xlim(min(x0, ax.get_xlim()[0]) - 0.05, max(x1, ax.get_xlim()[1]) + 0.05)
    ax.set_ylim(min(y0, ax.get_ylim()[0]) - 0.05, max(y1, ax.get_ylim()[1]) + 0.05)
    ax.set_title(f"{country.name}: {grid.num_classes} classes at {grid.description}")
    ax.legend(loc="lower left", fontsize=8)
    _save(fig, Path(path), overwrite)


def plot_errors(country, frame, path: str | Path, overwrite: bool = False) -> None:
    """Test locations coloured by error (km), with a line to each prediction."""
    fig, ax = plt.subplots(figsize=(8, 7))
    _draw_country(ax, country)
    segments = np.stack(
        [
            frame[["true_longitude", "true_latitude"]].to_numpy(),
            frame[["longitude", "latitude"]].to_numpy(),
        ],
        axis=1,
    )
    ax.add_collection(LineCollection(segments, colors="#888888", linewidths=0.4, alpha=0.6))
    points = ax.scatter(
        frame["true_longitude"],
        frame["true_latitude"],
        c=frame["error_km"],
        cmap="viridis_r",
        s=10,
        zorder=3,
    )
    fig.colorbar(points, ax=ax, label="error (km)", shrink=0.8)
    ax.set_title(
        f"{len(frame)} test locations: mean {frame['error_km'].mean():.1f} km, median {frame['error_km'].median():.1f} km"
    )
    _save(fig, Path(path), overwrite)


__all__ = ["plot_errors", "plot_grid"]
