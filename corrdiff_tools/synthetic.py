"""Random-weight CorrDiff packages and synthetic inputs, in the published layouts.

Used by the tests (a tiny package, loaded through earth2studio's real ``load_model``) and
by the benchmarks (the published architecture with random weights costs exactly what the
real weights cost, so machines can be sized without downloading anything).

The package layout matches ``corrdiff_inference_package.zip``::

    corrdiff_inference_package/checkpoints/regression.mdlus   physicsnemo UNet (SongUNet)
    corrdiff_inference_package/checkpoints/diffusion.mdlus    physicsnemo EDMPrecondSR
    corrdiff_inference_package/dataset/2023-01-24-cwb-4years_5times.zarr
        XLAT, XLONG (450 x 450), era5_center/era5_scale, cwb_center/cwb_scale (20 each)
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from corrdiff_tools.store import INPUT_VARIABLES, LR_LAT, LR_LON

if TYPE_CHECKING:
    import xarray as xr

#: Network widths. ``full`` is the published architecture (79,673,988 and 80,002,692
#: parameters); ``small`` has the same depth at a quarter of the width and ``narrow`` at an
#: eighth (side-by-side CPU benchmarks that must finish in minutes); ``tiny`` is for tests.
#: All keep five levels so the attention bottleneck is 28 x 28.
WIDTHS: dict[str, dict[str, Any]] = {
    "full": {"model_channels": 128, "channel_mult": [1, 2, 2, 2, 2], "num_blocks": 4},
    "small": {"model_channels": 32, "channel_mult": [1, 2, 2, 2, 2], "num_blocks": 4},
    "narrow": {"model_channels": 16, "channel_mult": [1, 2, 2, 2, 2], "num_blocks": 4},
    "tiny": {"model_channels": 8, "channel_mult": [1, 1, 1, 1, 1], "num_blocks": 1},
}
FULL_PARAMETERS = {"regression": 79_673_988, "diffusion": 80_002_692}

#: The 20 ERA5 channels of the published normalisation file; the model reads 12 of them.
ERA5_CHANNELS = (
    "tcwv", "z500", "t500", "u500", "v500", "z700", "t700", "u700", "v700",
    "z850", "t850", "u850", "v850", "z925", "t925", "u925", "v925", "t2m", "u10m", "v10m",
)  # fmt: skip
#: Plausible (centre, scale) per channel, so synthetic outputs look like weather.
TYPICAL = {
    "tcwv": (45.0, 15.0), "t2m": (298.0, 4.0), "u10m": (1.0, 5.0), "v10m": (0.5, 5.0),
    "mrr": (5.0, 12.0),
    **{f"z{p}": (z, 120.0) for p, z in ((500, 57600.0), (700, 30800.0), (850, 14900.0),
                                         (925, 7800.0))},
    **{f"t{p}": (t, 3.0) for p, t in ((500, 267.0), (700, 281.0), (850, 289.0), (925, 294.0))},
    **{f"u{p}": (3.0, 8.0) for p in (500, 700, 850, 925)},
    **{f"v{p}": (1.0, 6.0) for p in (500, 700, 850, 925)},
    "refc": (10.0, 12.0),
}  # fmt: skip
#: Published output channels 0 (mrr) and 17..19 (t2m, u10m, v10m) of 20 CWB channels.
CWB_OUTPUTS = {0: "mrr", 17: "t2m", 18: "u10m", 19: "v10m"}
#: The paper's domain, used for the synthetic 450 x 450 curvilinear grid.
DOMAIN_CENTRE = (23.7, 120.97)
GRID_SPACING_KM = 2.0


def curvilinear_grid(shape: tuple[int, int] = (450, 450)) -> tuple[np.ndarray, np.ndarray]:
    """A Lambert-conformal 2 km grid over Taiwan, as 2-D (lat, lon) in degrees."""
    from pyproj import Transformer

    lat0, lon0 = DOMAIN_CENTRE
    proj = f"+proj=lcc +lat_0={lat0} +lon_0={lon0} +lat_1={lat0} +lat_2={lat0} +R=6371229"
    to_lonlat = Transformer.from_crs(proj, "EPSG:4326", always_xy=True)
    half_y = (shape[0] - 1) / 2 * GRID_SPACING_KM * 1000
    half_x = (shape[1] - 1) / 2 * GRID_SPACING_KM * 1000
    x, y = np.meshgrid(
        np.linspace(-half_x, half_x, shape[1]), np.linspace(-half_y, half_y, shape[0])
    )
    lon, lat = to_lonlat.transform(x, y)
    return lat.astype("float32"), lon.astype("float32")


def build_networks(
    width: str = "tiny", seed: int = 0, scale_cond_input: bool = False
) -> tuple[Any, Any]:
    """Random-weight regression and diffusion nets with the published wiring.

    Both are SongUNets on 448 x 448 with ``img_in_channels=16`` (12 inputs + 4 grid
    channels) and ``img_out_channels=4``; regression with ``embedding_type="zero"``,
    diffusion with ``"positional"``.
    """
    import torch
    from physicsnemo.diffusion.preconditioners.legacy import EDMPrecondSR
    from physicsnemo.models.diffusion_unets import UNet

    common = {
        **WIDTHS[width],
        "attn_resolutions": [28],
        "model_type": "SongUNet",
        "img_resolution": 448,
        "img_in_channels": 16,
        "img_out_channels": 4,
    }
    torch.manual_seed(seed)
    regression = UNet(embedding_type="zero", **common)
    diffusion = EDMPrecondSR(
        img_channels=4, embedding_type="positional", scale_cond_input=scale_cond_input, **common
    )
    return regression.eval(), diffusion.eval()


def enliven(networks: tuple[Any, Any], seed: int = 0, scale: float = 0.03) -> tuple[Any, Any]:
    """Re-draw both nets' last convolution so their outputs are O(0.1) in normalised units.

    SongUNet initialises its last convolution (``aux_conv``) near zero, so a random net
    adds almost nothing to the normalisation centre: differences in the network's
    arithmetic (a dropped term, another precision) would be invisible in its output.
    Returns the same nets, changed in place.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for net in networks:
            for name, param in net.named_parameters():
                if "aux_conv" in name and param.ndim == 4:
                    param.copy_(scale * torch.randn(param.shape, generator=generator))
    return networks


def build_package(
    directory: str | Path,
    width: str = "tiny",
    seed: int = 0,
    zipped: bool = True,
    scale_cond_input: bool = False,
    networks: tuple[Any, Any] | None = None,
) -> Path:
    """Write a random-weight package in the published layout.

    Parameters
    ----------
    directory : str or Path
        Created if needed; receives ``corrdiff_inference_package.zip`` (``zipped``) or the
        extracted ``corrdiff_inference_package/`` folder.
    width : str
        ``tiny``, ``small`` or ``full`` (see :data:`WIDTHS`).
    seed : int
        Weight initialisation seed.
    zipped : bool
        Write the zip (as NGC ships it) instead of the folder.
    scale_cond_input : bool
        The legacy ``EDMPrecondSR`` input scaling flag.
    networks : tuple, optional
        (regression, diffusion) to save instead of building them from ``width``/``seed``.

    Returns
    -------
    Path
        ``directory``.
    """
    import zarr

    directory = Path(directory)
    staging = directory / "corrdiff_inference_package"
    (staging / "checkpoints").mkdir(parents=True, exist_ok=True)
    regression, diffusion = networks or build_networks(width, seed, scale_cond_input)
    regression.save(str(staging / "checkpoints" / "regression.mdlus"))
    diffusion.save(str(staging / "checkpoints" / "diffusion.mdlus"))

    group = zarr.open_group(
        str(staging / "dataset" / "2023-01-24-cwb-4years_5times.zarr"), mode="w", zarr_format=2
    )
    lat, lon = curvilinear_grid()
    group.create_array("XLAT", data=lat)
    group.create_array("XLONG", data=lon)
    era5 = np.array([TYPICAL[name] for name in ERA5_CHANNELS], dtype="float32")
    cwb = np.tile(np.array([[0.0, 1.0]], dtype="float32"), (20, 1))
    for index, name in CWB_OUTPUTS.items():
        cwb[index] = TYPICAL[name]
    group.create_array("era5_center", data=era5[:, 0].copy())
    group.create_array("era5_scale", data=era5[:, 1].copy())
    group.create_array("cwb_center", data=cwb[:, 0].copy())
    group.create_array("cwb_scale", data=cwb[:, 1].copy())

    if zipped:
        with zipfile.ZipFile(directory / "corrdiff_inference_package.zip", "w") as archive:
            for path in sorted(staging.rglob("*")):
                archive.write(path, path.relative_to(directory))
        shutil.rmtree(staging)
    return directory


def synthetic_inputs(
    times: Sequence[datetime], seed: int = 0, with_refc: bool = True, margin: int = 8
) -> xr.DataArray:
    """Smooth, plausible low-resolution fields on a 0.25 degree grid around the input box.

    Returns an xarray DataArray with dims (time, variable, lat, lon), latitudes descending
    as GFS stores them, which is the layout ``--source PATH`` reads.
    """
    from corrdiff_tools.sources import input_dataarray

    rng = np.random.default_rng(seed)
    lat = np.arange(LR_LAT[-1] + margin * 0.25, LR_LAT[0] - margin * 0.25 - 1e-9, -0.25)
    lon = np.arange(LR_LON[0] - margin * 0.25, LR_LON[-1] + margin * 0.25 + 1e-9, 0.25)
    variables = [*INPUT_VARIABLES, *(("refc",) if with_refc else ())]
    yy, xx = np.meshgrid(np.linspace(0, 1, lat.size), np.linspace(0, 1, lon.size), indexing="ij")
    data = np.empty((len(times), len(variables), lat.size, lon.size), dtype="float32")
    for t in range(len(times)):
        for v, name in enumerate(variables):
            centre, scale = TYPICAL[name]
            phase = rng.uniform(0, 2 * np.pi, size=2)
            field = np.sin(2 * np.pi * xx + phase[0]) * np.cos(np.pi * yy + phase[1])
            field += 0.3 * rng.standard_normal(field.shape)
            data[t, v] = centre + scale * field
    return input_dataarray(data, times, variables, lat, lon)


#: The backbone of test packages in the generic format (``models.generic``): three levels,
#: as five would shrink a 32-pixel grid to 2 pixels.
GENERIC_WIDTH: dict[str, Any] = {
    "model_channels": 8, "channel_mult": [1, 1, 1], "num_blocks": 1, "attn_resolutions": [],
}  # fmt: skip
#: Positional channels SongUNetPosEmbd adds to its input (its ``N_grid_channels`` default).
POSITIONAL_CHANNELS = 4


def regular_grid(
    south: float, west: float, shape: tuple[int, int], spacing: float
) -> tuple[np.ndarray, np.ndarray]:
    """1-D (lat, lon) axes of a regular grid, increasing, as earth2studio wants them."""
    lat = south + spacing * np.arange(shape[0])
    lon = west + spacing * np.arange(shape[1])
    return lat.astype("float64"), lon.astype("float64")


def build_generic_networks(
    shape: tuple[int, int],
    inputs: int,
    outputs: int,
    hr_mean_conditioning: bool = True,
    seed: int = 0,
) -> tuple[Any, Any]:
    """Random-weight nets wired as earth2studio's generic CorrDiff calls them.

    Regression: ``CorrDiffRegressionUNet`` around ``SongUNetPosEmbd`` reading
    ``inputs`` (variables + invariants) and its positional channels; diffusion:
    ``EDMPrecondSuperResolution`` around ``SongUNetPosEmbd``, which also reads the
    regression mean (``outputs`` more channels) when ``hr_mean_conditioning``.
    """
    import torch
    from physicsnemo.diffusion.preconditioners.legacy import EDMPrecondSuperResolution
    from physicsnemo.models.diffusion_unets import CorrDiffRegressionUNet

    common = {**GENERIC_WIDTH, "model_type": "SongUNetPosEmbd", "img_resolution": list(shape)}
    torch.manual_seed(seed)
    regression = CorrDiffRegressionUNet(
        img_in_channels=inputs + POSITIONAL_CHANNELS, img_out_channels=outputs, **common
    )
    conditioning = inputs + POSITIONAL_CHANNELS + (outputs if hr_mean_conditioning else 0)
    diffusion = EDMPrecondSuperResolution(
        img_in_channels=conditioning, img_out_channels=outputs, **common
    )
    return enliven((regression.eval(), diffusion.eval()), seed=seed, scale=0.3)


def _grid_file(path: Path, lat: np.ndarray, lon: np.ndarray) -> None:
    """A lat/lon grid file as earth2studio reads it: ``ds["lat"]``, ``ds["lon"]``."""
    import xarray as xr

    if lat.ndim == 1:
        dataset = xr.Dataset(coords={"lat": ("lat", lat), "lon": ("lon", lon)})
    else:
        dataset = xr.Dataset({"lat": (("y", "x"), lat), "lon": (("y", "x"), lon)})
    dataset.to_netcdf(path, engine="h5netcdf")


def build_generic_package(
    directory: str | Path,
    input_variables: Sequence[str],
    output_variables: Sequence[str],
    output_grid: tuple[np.ndarray, np.ndarray],
    input_grid: tuple[np.ndarray, np.ndarray],
    invariants: dict[str, np.ndarray] | None = None,
    metadata: dict[str, Any] | None = None,
    seed: int = 0,
    layout: tuple[tuple[int, int], int, dict[str, dict[str, float]]] | None = None,
) -> Path:
    """Write a random-weight package in earth2studio's generic ``CorrDiff`` layout.

    Parameters
    ----------
    directory : str or Path
        Created if needed; receives the package's files at its top.
    input_variables, output_variables : sequence of str
        earth2studio variable names (normalisation from :data:`TYPICAL`, else (0, 1)).
    output_grid, input_grid : tuple of numpy.ndarray
        (lat, lon), 1-D axes or 2-D arrays, written as given.
    invariants : dict, optional
        name -> field on the output grid's shape, written to ``invariants.nc``.
    metadata : dict, optional
        Extra ``metadata.json`` keys (sampler settings, ``hr_mean_conditioning``, ...).
    seed : int
        Weight initialisation seed.
    layout : tuple, optional
        For a family whose preprocessing changes what the nets see (CorrDiffCMIP6, see
        :func:`build_cmip6_package`): the nets' grid, their input channel count, and more
        ``stats.json`` input entries. By default the output grid, the variables plus the
        invariants, and nothing more.

    Returns
    -------
    Path
        ``directory``.
    """
    import json

    import xarray as xr

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {
        "input_variables": list(input_variables),
        "output_variables": list(output_variables),
        **(metadata or {}),
    }
    lat, lon = output_grid
    shape = lat.shape if lat.ndim == 2 else (lat.size, lon.size)
    net_shape, inputs, more_stats = layout or (
        shape,
        len(input_variables) + len(invariants or {}),
        {},
    )
    networks = build_generic_networks(
        net_shape, inputs, len(output_variables), metadata.get("hr_mean_conditioning", True), seed
    )
    networks[0].save(str(directory / "regression.mdlus"))
    networks[1].save(str(directory / "diffusion.mdlus"))

    def stats(names: Sequence[str], shift: float, stretch: float) -> dict[str, dict[str, float]]:
        typical = {name: TYPICAL.get(name, (0.0, 1.0)) for name in names}
        return {
            name: {"mean": centre + shift * scale, "std": stretch * scale}
            for name, (centre, scale) in typical.items()
        }

    # An output's statistics differ from the same variable's as an input (as in any
    # trained package), so a denormalisation that used the wrong ones would show.
    everything = {
        "input": {**stats(input_variables, 0.0, 1.0), **more_stats},
        "output": stats(output_variables, 0.5, 1.5),
    }
    if invariants:
        everything["invariants"] = {
            name: {"mean": float(np.mean(field)), "std": float(np.std(field)) or 1.0}
            for name, field in invariants.items()
        }
        dims = ("lat", "lon") if lat.ndim == 1 else ("y", "x")
        xr.Dataset({name: (dims, field) for name, field in invariants.items()}).to_netcdf(
            directory / "invariants.nc", engine="h5netcdf"
        )
    (directory / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (directory / "stats.json").write_text(json.dumps(everything, indent=2))
    _grid_file(directory / "output_latlon_grid.nc", *output_grid)
    _grid_file(directory / "input_latlon_grid.nc", *input_grid)
    return directory


#: CorrDiffCMIP6's padding of the output grid before the nets (earth2studio's
#: ``_LAT_PAD``, ``_LON_PAD``: reflected in latitude, circular in longitude).
CMIP6_PADS = ((23, 24), (48, 48))


def cmip6_invariants(lat: np.ndarray, width: int) -> dict[str, np.ndarray]:
    """Invariants for :func:`build_cmip6_package` on an output grid of ``lat`` x ``width``.

    A land-sea mask and ``coslat``, last, as in the published package (its slot is the
    one CorrDiffCMIP6's preprocessing writes the hour of day into).
    """
    rows = np.repeat(np.asarray(lat, dtype="float64")[:, None], width, axis=1)
    return {
        "lsm": (np.sin(np.radians(3 * rows)) > 0).astype("float32"),
        "coslat": np.cos(np.radians(rows)).astype("float32"),
    }


def build_cmip6_package(
    directory: str | Path,
    input_variables: Sequence[str],
    output_variables: Sequence[str],
    output_grid: tuple[np.ndarray, np.ndarray],
    input_grid: tuple[np.ndarray, np.ndarray],
    invariants: dict[str, np.ndarray],
    metadata: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """A random-weight package in the layout earth2studio's ``CorrDiffCMIP6`` reads.

    The generic layout, with what CorrDiffCMIP6's preprocessing feeds the nets: each
    input variable at three input lead times (-24, 0, +24 h), the invariants (the last
    one is the slot its training filled with the hour of day, ``coslat`` in the
    published package), the cosine of the solar zenith angle and the hour of day
    (``sza``, ``hod`` in ``stats.json``'s inputs), on the output grid padded by
    :data:`CMIP6_PADS`. The grids are global 1-D axes, latitudes north to south.
    """
    lat, lon = output_grid
    (top, bottom), (left, right) = CMIP6_PADS
    net_shape = (lat.size + top + bottom, lon.size + left + right)
    channels = 3 * len(input_variables) + len(invariants) + 2
    time_features = {"sza": {"mean": 0.2, "std": 0.4}, "hod": {"mean": 11.5, "std": 6.9}}
    return build_generic_package(
        directory, input_variables, output_variables, output_grid, input_grid,
        invariants=invariants, metadata=metadata, seed=seed,
        layout=(net_shape, channels, time_features),
    )  # fmt: skip
