"""Pure figure builders: take data, return a Figure. No savefig, no show, no globals.

Figures are ``matplotlib.figure.Figure`` objects not registered with pyplot, so nothing
leaks between calls; a caller that wants a window passes a pyplot figure in ``fig``.
Differences from the blog's plotting, on purpose: colour limits are fixed by the caller
across a whole run (the blog autoscaled each sample, so animations showed scale changes
instead of ensemble spread); each variable has a colormap suited to it; temperature is in
deg C; coastlines come as data (see :mod:`corrdiff_tools.coastlines`), never downloaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from corrdiff_tools import quantities
from corrdiff_tools.quantities import EnsembleStats

if TYPE_CHECKING:
    from cartopy.crs import Projection
    from cartopy.mpl.geoaxes import GeoAxes
    from matplotlib.collections import QuadMesh
    from matplotlib.figure import Figure

#: The paper's domain (Mardani et al. 2024), which the map projection is centred on.
PAPER_LAT = (19.5483, 27.8446)
PAPER_LON = (116.371, 125.568)
#: Map extent (lon min, lon max, lat min, lat max) when no grid says otherwise.
PAPER_EXTENT = (*PAPER_LON, *PAPER_LAT)
#: Panels of a sample figure, in order.
SAMPLE_PANELS = ("mrr", "t2m", "wind")
#: Panels of a low-resolution input figure: GFS composite reflectivity replaces mrr.
LOWRES_PANELS = ("refc", "t2m", "wind")
#: Panel titles: the quantity's name (the input's reflectivity says it is the input).
TITLES = {**quantities.TITLES, "refc": f"{quantities.TITLES['refc']} (input)"}
LABELS = {
    "mrr": "Radar reflectivity [dBZ]",
    "refc": "Composite reflectivity [dBZ]",
    "t2m": "Temperature at 2 m [°C]",
    "wind": "Wind speed at 10 m [m/s]",
}
#: A colormap per quantity: reflectivity (a perceptual rainbow reads like radar scales),
#: temperature (diverging), wind speed (sequential); spread and probability panels.
COLORMAPS = {"mrr": "turbo", "refc": "turbo", "t2m": "RdYlBu_r", "wind": "viridis"}
SPREAD_COLORMAP = "magma"
PROBABILITY_COLORMAP = "Blues"
#: Colour scale shared by mrr and refc (both dBZ).
SCALE_KEY = {"mrr": "mrr", "refc": "mrr", "t2m": "t2m", "wind": "wind"}
#: One wind arrow every this many output grid points (448 / 28 = 16 arrows a row), and
#: every this many input grid points (40 / 3: 13 a row).
ARROW_STEP = 28
LOWRES_ARROW_STEP = 3
#: An arrow at the wind scale's top speed spans this fraction of the spacing between arrows.
ARROW_FILL = 0.9
SAMPLE_FIGSIZE = (15.0, 5.5)
STATS_FIGSIZE = (15.0, 15.0)
COASTLINE_STYLE = {"color": "black", "linewidth": 0.6}
#: Labelled gridlines, whole degrees.
GRID_LONS = (117, 119, 121, 123, 125)
GRID_LATS = (20, 22, 24, 26, 28)
#: Below this span (degrees) a map gets a gridline every degree instead of every two.
FINE_GRID_SPAN = 4.0
#: Colormaps of variables other models write: a wind component (diverging, centred on
#: 0), anything else (sequential, readable in grey and by colour-blind readers).
COMPONENT_COLORMAP = "RdBu_r"
OTHER_COLORMAP = "cividis"
#: Gridline spacings (degrees) a map of another model's grid picks from, and about how
#: many lines it wants across its longer side; arrows per row on such a map.
GRID_STEPS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0)
GRID_LINES = 5
ARROWS_ACROSS = 12


@dataclass(frozen=True)
class MapFrame:
    """How the maps of a store are framed: the projection, gridlines and arrow spacing.

    ``taiwan`` is CorrDiff Taiwan's: a Lambert conformal projection centred on the
    paper's domain, its gridlines and arrow steps, exactly as they always were.
    ``plate_carree`` is for other models' grids, regular lat/lon or not: latitude and
    longitude as they are (a Lambert projection with cartopy's default parallels would
    distort a domain far from them, or in the other hemisphere), centred on the grid.
    """

    kind: Literal["taiwan", "plate_carree"] = "taiwan"
    central_longitude: float = 0.0


TAIWAN_FRAME = MapFrame()


def frame_for(lon: np.ndarray, taiwan: bool) -> MapFrame:
    """Taiwan's frame for Taiwan's stores, else a PlateCarree one centred on ``lon``."""
    if taiwan:
        return TAIWAN_FRAME
    finite = np.asarray(lon, dtype="float64")[np.isfinite(lon)]
    centre = 0.5 * (float(finite.min()) + float(finite.max())) if finite.size else 0.0
    return MapFrame("plate_carree", centre)


def describe(key: str, attrs: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(panel title, colour bar label) of a panel key.

    Taiwan's quantities keep their wording; another model's variable is named by its
    ``long_name`` and ``units`` attributes (no units where the store gives none).
    """
    if key in LABELS:
        return TITLES[key], LABELS[key]
    if key in quantities.TITLES:
        return quantities.TITLES[key], quantities.label(key)
    return str((attrs or {}).get("long_name", key)), quantities.label(key, attrs)


def colormap_for(key: str) -> str:
    """The colormap of a panel key (see :data:`COLORMAPS`, :data:`OTHER_COLORMAP`)."""
    if key in COLORMAPS:
        return COLORMAPS[key]
    return COMPONENT_COLORMAP if key in ("u10m", "v10m") else OTHER_COLORMAP


@dataclass(frozen=True)
class ColourScale:
    """Fixed colour limits and colormap for one quantity."""

    vmin: float
    vmax: float
    cmap: str


@dataclass(frozen=True)
class Fields:
    """One map's worth of data, in plotting units.

    ``values`` maps a panel key (mrr, refc, t2m, wind) to a 2-D array; ``u``/``v`` are the
    10 m wind components for the arrows; ``lat``/``lon`` are 2-D (or 1-D for a regular grid).
    """

    values: Mapping[str, np.ndarray]
    u: np.ndarray | None
    v: np.ndarray | None
    lat: np.ndarray
    lon: np.ndarray


def projection(frame: MapFrame = TAIWAN_FRAME) -> Projection:
    """The maps' projection: Lambert conformal centred on the paper's domain for Taiwan."""
    import cartopy.crs as ccrs

    if frame.kind == "plate_carree":
        return ccrs.PlateCarree(central_longitude=frame.central_longitude)
    return ccrs.LambertConformal(
        central_longitude=0.5 * (PAPER_LON[0] + PAPER_LON[1]),
        central_latitude=0.5 * (PAPER_LAT[0] + PAPER_LAT[1]),
    )


def new_figure(
    figsize: tuple[float, float],
    fig: Figure | None,
    layout: Literal["compressed", "constrained"] = "compressed",
) -> Figure:
    """A Figure not registered with pyplot, or ``fig`` (a pyplot one) resized for reuse."""
    from matplotlib.figure import Figure

    if fig is None:
        return Figure(figsize=figsize, layout=layout)
    fig.set_size_inches(*figsize)
    fig.set_layout_engine(layout)
    return fig


def grid_extent(lat: np.ndarray, lon: np.ndarray) -> tuple[float, float, float, float]:
    """(lon min, lon max, lat min, lat max) of a grid: the maps show what the store covers.

    The blog fixed every map to the paper's domain, which leaves most of each panel
    empty when a store's grid covers less.
    """
    lat, lon = np.asarray(lat, dtype="float64"), np.asarray(lon, dtype="float64")
    if not (np.isfinite(lat).any() and np.isfinite(lon).any()):
        return PAPER_EXTENT
    return (
        float(np.nanmin(lon)),
        float(np.nanmax(lon)),
        float(np.nanmin(lat)),
        float(np.nanmax(lat)),
    )


def _map_axes(
    fig: Figure,
    rows: int,
    cols: int,
    index: int,
    extent: Sequence[float],
    frame: MapFrame = TAIWAN_FRAME,
) -> GeoAxes:
    import cartopy.crs as ccrs

    ax = fig.add_subplot(rows, cols, index, projection=projection(frame))
    ax.set_extent(list(extent), crs=ccrs.PlateCarree())
    return ax


def _gridline_locations(
    extent: Sequence[float], frame: MapFrame = TAIWAN_FRAME
) -> tuple[list[float], list[float]]:
    lon0, lon1, lat0, lat1 = extent
    if frame.kind != "taiwan":
        span = max(lon1 - lon0, lat1 - lat0)
        step = next((s for s in GRID_STEPS if span / s <= GRID_LINES), GRID_STEPS[-1])
        lons = np.arange(np.floor(lon0 / step), np.ceil(lon1 / step) + 1) * step
        # As -180..180: cartopy labels no meridian given past 180 (a grid on 0..360).
        lons = np.unique((lons + 180.0) % 360.0 - 180.0)
        return (
            [float(x) for x in lons],
            list(np.arange(np.floor(lat0 / step), np.ceil(lat1 / step) + 1) * step),
        )
    if max(lon1 - lon0, lat1 - lat0) >= FINE_GRID_SPAN:
        return list(GRID_LONS), list(GRID_LATS)
    return (
        list(np.arange(np.floor(lon0), np.ceil(lon1) + 1)),
        list(np.arange(np.floor(lat0), np.ceil(lat1) + 1)),
    )


def projected_coastline(
    coastlines: Sequence[np.ndarray], frame: MapFrame = TAIWAN_FRAME
) -> tuple[np.ndarray, np.ndarray]:
    """All (lon, lat) segments in :func:`projection`'s coordinates, NaN between segments."""
    import cartopy.crs as ccrs

    if not coastlines:
        return np.empty(0), np.empty(0)
    gap = np.full((1, 2), np.nan)
    joined = np.concatenate([part for segment in coastlines for part in (segment[:, :2], gap)])
    points = projection(frame).transform_points(ccrs.PlateCarree(), joined[:, 0], joined[:, 1])
    return points[:, 0], points[:, 1]


def _decorate(
    ax: GeoAxes,
    coastlines: Sequence[np.ndarray],
    extent: Sequence[float],
    frame: MapFrame = TAIWAN_FRAME,
) -> None:
    # One line, projected with numpy, not one cartopy-projected line per segment: the
    # coastline's ~200 segments per panel were half of each figure's drawing time.
    x, y = projected_coastline(coastlines, frame)
    ax.plot(x, y, transform=ax.transData, scalex=False, scaley=False, **COASTLINE_STYLE)
    xlocs, ylocs = _gridline_locations(extent, frame)
    gridlines = ax.gridlines(
        draw_labels=True,
        xlocs=xlocs,
        ylocs=ylocs,
        x_inline=False,
        y_inline=False,
        alpha=0.5,
    )
    gridlines.top_labels = gridlines.right_labels = False
    gridlines.xlabel_style = gridlines.ylabel_style = {"size": 8, "rotation": 0}


def _mesh(
    fig: Figure,
    ax: GeoAxes,
    lon: np.ndarray,
    lat: np.ndarray,
    values: np.ndarray,
    scale: ColourScale,
    label: str,
) -> QuadMesh:
    import cartopy.crs as ccrs

    mesh = ax.pcolormesh(
        lon,
        lat,
        values,
        transform=ccrs.PlateCarree(),
        cmap=scale.cmap,
        vmin=scale.vmin,
        vmax=scale.vmax,
        shading="auto",
        rasterized=True,
    )
    fig.colorbar(mesh, ax=ax, label=label, shrink=0.85)
    return mesh


def _arrows(ax: GeoAxes, fields: Fields, top_speed: float, frame: MapFrame = TAIWAN_FRAME) -> None:
    """Wind arrows on a regular subset of the grid, all inside the data.

    Lengths are fixed by the colour scale, not autoscaled per figure (matplotlib's
    default, which shrank arrows to dots wherever one gust dominated): an arrow at the
    scale's top speed spans :data:`ARROW_FILL` of the spacing between arrows, faster ones
    are capped there. Arrows sit at the centres of their cells, drawn about their middle,
    so none reaches past the data's edge.
    """
    import cartopy.crs as ccrs

    assert fields.u is not None and fields.v is not None  # noqa: S101 - wind panels only
    step = ARROW_STEP if fields.lat.ndim == 2 else LOWRES_ARROW_STEP
    if frame.kind != "taiwan":  # about ARROWS_ACROSS a row, whatever the grid's size
        step = max(1, max(np.shape(fields.u)) // ARROWS_ACROSS)
    lon, lat = fields.lon, fields.lat
    if lat.ndim == 1:
        lon, lat = np.meshgrid(lon, lat)
    cells = (slice(step // 2, None, step), slice(step // 2, None, step))
    u, v = (
        np.asarray(fields.u[cells], dtype="float64"),
        np.asarray(fields.v[cells], dtype="float64"),
    )
    speed = np.hypot(u, v)
    top = top_speed if top_speed > 0 else 1.0
    cap = np.where(speed > top, top / np.where(speed > 0, speed, 1.0), 1.0)
    across = lon[cells].shape[1]
    ax.quiver(
        lon[cells],
        lat[cells],
        u * cap,
        v * cap,
        transform=ccrs.PlateCarree(),
        angles="xy",
        pivot="middle",
        scale_units="width",
        scale=top * across / ARROW_FILL,
        width=3.5e-3,
        headwidth=3.5,
        headlength=4.0,
        headaxislength=3.5,
        color="white",
        edgecolor="black",
        linewidth=0.4,
    )


def fit_height(fig: Figure, pad_inches: float = 0.12) -> Figure:
    """Shrink the figure's height to its content: no blank bands above and below.

    Map panels keep their aspect, so a fixed-size figure leaves empty margins; this
    measures the drawn content and sets the height to it (rounded up to 0.05 inch). The
    measuring draws the figure once (about as long as saving it), so callers drawing many
    figures of one layout measure the first and reuse its height (see
    :func:`corrdiff_tools.render.build_figure`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if hasattr(fig.canvas, "get_renderer") else FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    box = fig.get_tightbbox(canvas.get_renderer())
    width, height = fig.get_size_inches()
    wanted = float(np.ceil((box.height + 2 * pad_inches) / 0.05) * 0.05)
    if wanted < height:
        fig.set_size_inches(width, wanted)
    return fig


def map_figure(
    fields: Fields,
    panels: Sequence[str],
    scales: Mapping[str, ColourScale],
    coastlines: Sequence[np.ndarray],
    title: str,
    fig: Figure | None = None,
    extent: Sequence[float] = PAPER_EXTENT,
    *,
    frame: MapFrame = TAIWAN_FRAME,
    attrs: Mapping[str, Mapping[str, str]] | None = None,
) -> Figure:
    """Rows of up to three map panels (the blog's three: reflectivity, temperature, wind).

    Parameters
    ----------
    fields : Fields
        Data in plotting units.
    panels : sequence of str
        Panel keys, e.g. :data:`SAMPLE_PANELS` or :data:`LOWRES_PANELS`.
    scales : mapping
        Colour scale per scale key (see :data:`SCALE_KEY`), fixed across the run.
    coastlines : sequence of ndarray
        (lon, lat) line segments.
    title : str
        Figure title.
    fig : Figure, optional
        Draw into this figure (e.g. a pyplot one, for ``--show``).
    extent : sequence of float
        (lon min, lon max, lat min, lat max) shown, e.g. :func:`grid_extent` of the store.
    frame : MapFrame
        Projection, gridlines and arrows (default Taiwan's).
    attrs : mapping, optional
        Panel key -> the store variable's attributes, naming another model's variables
        (see :func:`describe`).

    Returns
    -------
    matplotlib.figure.Figure
    """
    rows = -(-len(panels) // 3) if len(panels) > 3 else 1
    cols = len(panels) if rows == 1 else 3
    figsize = SAMPLE_FIGSIZE if rows == 1 else (SAMPLE_FIGSIZE[0], SAMPLE_FIGSIZE[1] * rows)
    fig = new_figure(figsize, fig)
    for index, key in enumerate(panels, start=1):
        ax = _map_axes(fig, rows, cols, index, extent, frame)
        # Taiwan's refc panel shares mrr's scale; another model's panels each have theirs.
        scale = scales[key] if frame.kind != "taiwan" else scales[SCALE_KEY[key]]
        heading, label = describe(key, (attrs or {}).get(key))
        _mesh(fig, ax, fields.lon, fields.lat, fields.values[key], scale, label)
        if key == "wind" and fields.u is not None:
            _arrows(ax, fields, scale.vmax, frame)
        ax.set_title(heading)
        _decorate(ax, coastlines, extent, frame)
    fig.suptitle(title)
    return fig


def stats_figure(
    stats: EnsembleStats,
    lat: np.ndarray,
    lon: np.ndarray,
    scales: Mapping[str, ColourScale],
    coastlines: Sequence[np.ndarray],
    title: str,
    fig: Figure | None = None,
    extent: Sequence[float] = PAPER_EXTENT,
    panels: Sequence[str] = SAMPLE_PANELS,
    frame: MapFrame = TAIWAN_FRAME,
    attrs: Mapping[str, Mapping[str, str]] | None = None,
) -> Figure:
    """Rows: ensemble mean, ensemble standard deviation, exceedance probabilities.

    A column per panel (Taiwan's mrr, t2m and wind; another model's quantities, named
    as :func:`describe` names them). The probability row holds one panel per threshold
    (two by default for Taiwan, none where no threshold applies), centred under the
    columns above, so no cell is left empty.
    """
    # Constrained, not compressed: the compressed engine overlaps titles and colour bars
    # of axes that span grid columns once the height is fitted.
    columns = len(panels)
    rows = 3 if stats.thresholds else 2
    size = STATS_FIGSIZE if columns == 3 and rows == 3 else (5.0 * columns, 5.0 * rows)
    fig = new_figure(size, fig, layout="constrained")
    grid = fig.add_gridspec(rows, 2 * columns)

    def axes(row: int, start: int) -> GeoAxes:
        import cartopy.crs as ccrs

        ax = fig.add_subplot(grid[row, start : start + 2], projection=projection(frame))
        ax.set_extent(list(extent), crs=ccrs.PlateCarree())
        return ax

    units: dict[str, str | None] = {}
    for column, key in enumerate(panels):
        heading, label = describe(key, (attrs or {}).get(key))
        units[key] = quantities.unit_of(label)
        ax = axes(0, 2 * column)
        _mesh(fig, ax, lon, lat, stats.mean[key], scales[key], label)
        ax.set_title(f"Mean: {heading.lower()}")
        _decorate(ax, coastlines, extent, frame)

        ax = axes(1, 2 * column)
        spread = stats.std[key]
        top = float(np.nanmax(spread)) if np.isfinite(spread).any() else 1.0
        scale = ColourScale(0.0, top if top > 0 else 1.0, SPREAD_COLORMAP)
        bar = f"Standard deviation [{units[key]}]" if units[key] else "Standard deviation"
        _mesh(fig, ax, lon, lat, spread, scale, bar)
        ax.set_title(f"Spread: {heading.lower()}")
        _decorate(ax, coastlines, extent, frame)
    offset = columns - min(columns, len(stats.thresholds))
    for column, (key, threshold) in enumerate(list(stats.thresholds.items())[:columns]):
        ax = axes(2, offset + 2 * column)
        scale = ColourScale(0.0, 1.0, PROBABILITY_COLORMAP)
        _mesh(fig, ax, lon, lat, stats.probability[key], scale, "Probability")
        value = f"{threshold:g} {units.get(key) or ''}".strip()
        ax.set_title(f"P({key} ≥ {value})")
        _decorate(ax, coastlines, extent, frame)
    fig.suptitle(f"{title} · {stats.members} members")
    return fig
