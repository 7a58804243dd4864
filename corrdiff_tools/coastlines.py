"""Coastlines that never reach for the network.

``ax.coastlines()`` downloads Natural Earth shapefiles on first use; offline it fails, or
hangs on networks that drop packets. Here coastlines are plain (lon, lat) line arrays:

1. Natural Earth, when its shapefiles are already on disk (cartopy's
   ``pre_existing_data_dir`` / ``CARTOPY_DATA_DIR``, or its ``data_dir``);
2. otherwise the 0.5 contour of the 1 km land mask shipped by the PyPI package
   ``global-land-mask`` (MIT). Importing it costs ~3 s and ~0.9 GB, so it is loaded lazily,
   once, in the parent process; workers receive the small line arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: Lon/lat box the coastlines are cut to: the paper's domain with a margin.
COAST_EXTENT = (115.0, 127.0, 18.5, 29.0)
#: Land-mask sampling step in degrees (about 2 km, the output grid's spacing).
MASK_STEP = 0.02
#: Most land-mask points along a side (a large domain is sampled more coarsely).
MASK_POINTS = 1200
#: Degrees of margin around another model's grid that its coastlines are cut to.
COAST_MARGIN = 1.0
NATURAL_EARTH_RESOLUTIONS = ("10m", "50m", "110m")


@dataclass(frozen=True)
class Coastlines:
    """Coastline segments as arrays of (lon, lat), and where they came from."""

    segments: tuple[np.ndarray, ...]
    origin: str


def _natural_earth_file(resolution: str) -> Path | None:
    import cartopy

    relative = Path("shapefiles", "natural_earth", "physical", f"ne_{resolution}_coastline.shp")
    for key in ("pre_existing_data_dir", "data_dir"):
        base = cartopy.config.get(key)
        if base and (Path(base) / relative).is_file():
            return Path(base) / relative
    return None


def _from_natural_earth(path: Path, extent: Sequence[float]) -> list[np.ndarray]:
    import shapely.geometry as sgeom
    from cartopy.io import shapereader

    box = sgeom.box(extent[0], extent[2], extent[1], extent[3])
    segments: list[np.ndarray] = []
    for geometry in shapereader.Reader(str(path)).geometries():
        clipped = geometry.intersection(box)
        if clipped.is_empty:
            continue
        parts = getattr(clipped, "geoms", [clipped])
        segments.extend(np.asarray(part.coords) for part in parts if len(part.coords) > 1)
    return segments


def _from_land_mask(extent: Sequence[float]) -> list[np.ndarray]:
    import contourpy
    from global_land_mask import globe

    # About 2 km steps, coarser over a large area (at most MASK_POINTS along a side).
    step = max(MASK_STEP, max(extent[1] - extent[0], extent[3] - extent[2]) / MASK_POINTS)
    lon = np.arange(extent[0], extent[1] + step / 2, step)
    lat = np.arange(max(extent[2], -90.0), min(extent[3], 90.0) + step / 2, step)
    lon2d, lat2d = np.meshgrid(lon, lat)
    # The mask reads longitudes -180..180; the lines keep the grid's own (0..360 or not).
    wrapped = np.where(lon2d > 180.0, lon2d - 360.0, np.where(lon2d < -180.0, lon2d + 360.0, lon2d))
    land = globe.is_land(lat2d, wrapped).astype(float)
    lines = contourpy.contour_generator(lon2d, lat2d, land).lines(0.5)
    return [np.asarray(line) for line in lines if len(line) > 1]


def load_coastlines(extent: Sequence[float] = COAST_EXTENT) -> Coastlines:
    """Coastlines from Natural Earth if on disk, else the land mask, cut to ``extent``.

    ``extent`` is (lon min, lon max, lat min, lat max): the paper's domain with a margin
    by default, another model's grid with :data:`COAST_MARGIN`.
    """
    for resolution in NATURAL_EARTH_RESOLUTIONS:
        path = _natural_earth_file(resolution)
        if path is not None:
            logger.info("coastlines: Natural Earth %s (%s)", resolution, path)
            segments = _from_natural_earth(path, extent)
            return Coastlines(tuple(segments), f"Natural Earth {resolution}")
    logger.info(
        "coastlines: global-land-mask contour (no Natural Earth files in cartopy's data dir; "
        "set CARTOPY_DATA_DIR to use them)"
    )
    return Coastlines(tuple(_from_land_mask(extent)), "global-land-mask")
