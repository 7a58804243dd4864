"""Reference fields for ``plot_corrdiff.py --truth``: read a file, put it on the store's grid.

A truth file is NetCDF or Zarr with variables named as the store's outputs (Taiwan's mrr,
t2m, u10m, v10m, or another model's; any subset), in the store's units, and dims (time,
<2 spatial dims>), on either

* the store's output grid (448 x 448 for Taiwan): its spatial dims are matched to the
  store's y and x by *name* (y/x), or by comparing its own 2-D lat/lon with the store's in both
  orientations; never by position, so a file written as (time, x, y) is not read
  transposed; or
* a regular lat/lon grid that covers the output grid, interpolated bilinearly onto it
  with :func:`interpolate_lowres` (the same interpolation as the paper's first baseline,
  the low-resolution input interpolated to the output grid).

Everything wrong with a file is a ``ValueError`` whose message says what and how to fix it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from corrdiff_tools import checks
from corrdiff_tools.models.declaration import stored_outputs
from corrdiff_tools.store import OUTPUT_VARIABLES

if TYPE_CHECKING:
    import xarray as xr

logger = logging.getLogger(__name__)

#: Units a ``--truth`` file may state for each of Taiwan's variables (ours first); another
#: model's variables must be in the units its store records.
TRUTH_UNITS = {
    "mrr": ("dBZ",),
    "t2m": ("K", "kelvin", "Kelvin"),
    "u10m": ("m s-1", "m/s", "m s**-1", "m.s-1"),
    "v10m": ("m s-1", "m/s", "m s**-1", "m.s-1"),
}
_LAT_NAMES = ("lat", "latitude", "XLAT")
_LON_NAMES = ("lon", "longitude", "XLONG")
#: Most a file's own 2-D lat/lon may differ from the store's grid, degrees.
GRID_TOLERANCE = 0.01


@dataclass(frozen=True)
class Truth:
    """Reference fields on the output grid: ``fields[valid_time][variable]`` is (y, x)."""

    fields: dict[np.datetime64, dict[str, np.ndarray]]
    variables: tuple[str, ...]


def interpolate_lowres(
    values: np.ndarray,
    lat_lr: np.ndarray,
    lon_lr: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
) -> np.ndarray:
    """Bilinear interpolation of a regular lat/lon field onto the 2-D output grid.

    The paper's first baseline. Points outside the low-resolution box come back NaN,
    except that a box all round the globe (CorrDiffCMIP6's) wraps: a point between its
    last longitude and 360 degrees beyond its first is interpolated between the two.
    """
    from scipy.interpolate import RegularGridInterpolator

    lat_lr = np.asarray(lat_lr, dtype="float64")
    lon_lr = np.asarray(lon_lr, dtype="float64")
    values = np.asarray(values, dtype="float64")
    lon = np.asarray(lon, dtype="float64")
    if lat_lr[0] > lat_lr[-1]:
        lat_lr, values = lat_lr[::-1], values[::-1]
    if lon_lr.size > 2 and lon_lr[0] > lon_lr[-1]:
        lon_lr, values = lon_lr[::-1], values[:, ::-1]
    if lon_lr.size > 2 and np.isclose(lon_lr[-1] - lon_lr[0] + lon_lr[1] - lon_lr[0], 360.0):
        lon_lr = np.append(lon_lr, lon_lr[0] + 360.0)
        values = np.concatenate([values, values[:, :1]], axis=1)
        lon = lon_lr[0] + (lon - lon_lr[0]) % 360.0
    interpolator = RegularGridInterpolator((lat_lr, lon_lr), values, bounds_error=False)
    return interpolator(np.stack((lat.ravel(), lon.ravel()), axis=-1)).reshape(lat.shape)


def units_of(store: xr.Dataset) -> dict[str, tuple[str, ...]]:
    """The units a truth file may state for each output variable of a store.

    Taiwan's variables: :data:`TRUTH_UNITS`. Another model's: the units its store
    records, or none (then the file's units cannot be checked, and a warning says so).
    """
    outputs = stored_outputs(store.attrs, OUTPUT_VARIABLES)
    units: dict[str, tuple[str, ...]] = {}
    for name in outputs:
        recorded = store[name].attrs.get("units") if name in store else None
        units[name] = TRUTH_UNITS.get(name, (str(recorded),) if recorded else ())
    return units


def load_truth(
    path: str | Path,
    lat: np.ndarray,
    lon: np.ndarray,
    valid_times: Sequence[np.datetime64],
    units: Mapping[str, tuple[str, ...]] | None = None,
) -> Truth:
    """Read observed/reference fields and put them on the store's grid and times.

    ``units`` maps each output variable to the units the file may state (see
    :func:`units_of`; default Taiwan's :data:`TRUTH_UNITS`).

    Raises
    ------
    ValueError
        With a message saying what is wrong with the file.
    """
    units = TRUTH_UNITS if units is None else units
    dataset = _open(Path(path))
    try:
        present = _variables(dataset, units)
        common = _common_times(dataset, valid_times)
        fields: dict[np.datetime64, dict[str, np.ndarray]] = {t: {} for t in common}
        for name in present:
            array = dataset[name]
            spatial = [dim for dim in array.dims if dim != "time"]
            if len(spatial) != 2 or "time" not in array.dims:
                raise ValueError(f"{name} has dims {array.dims}; expected (time, y, x)")
            order, regrid = _placement(dataset, name, [str(dim) for dim in spatial], lat, lon)
            for time in common:
                values = np.asarray(array.sel(time=time).transpose(*order).values, "float64")
                # Units are judged on the file's own values: a units attribute that is
                # missing or wrong (t2m in deg C labelled K) does not change them.
                wrong = checks.out_of_range(name, values)
                if wrong:
                    raise ValueError(
                        f"{name} at {checks.format_time64(time)} {wrong}: convert it (the "
                        "units attribute alone does not change the values)"
                    )
                if regrid is not None:
                    inside = np.clip(lat, regrid[0].min(), regrid[0].max())  # see _placement
                    values = interpolate_lowres(values, regrid[0], regrid[1], inside, regrid[2])
                fields[time][name] = values
        unlabelled = [name for name in present if dataset[name].attrs.get("units") is None]
    finally:
        dataset.close()
    for name in unlabelled:
        # Values outside the range were refused above; other units that fall inside it
        # (linear reflectivity under 100, winds in knots) cannot be told from ours.
        if units[name]:
            logger.warning(
                "--truth: %s has no units attribute: taken as %s, as its values are in "
                "range; add one to be sure",
                name,
                units[name][0],
            )
    for name in (name for name in present if not units[name]):
        # Another model's variable whose store records no units: nothing to compare.
        logger.warning(
            "--truth: the store records no units for %s: the file's %s is taken to be in "
            "the model's units, unchecked",
            name,
            name,
        )
    return Truth(fields, present)


def _open(path: Path) -> xr.Dataset:
    """The file as a Dataset: fill values masked, times normalised (see checks)."""
    import xarray as xr

    from corrdiff_tools.store import mask_fill_values

    try:
        if path.is_dir():
            dataset = mask_fill_values(xr.open_zarr(path, consolidated=None), path)
        else:
            dataset = xr.open_dataset(path)
    except Exception as err:  # noqa: BLE001 - any failure means "not a readable file"
        raise ValueError(f"cannot be read as NetCDF or Zarr ({type(err).__name__})") from None
    if "time" in dataset.coords:
        try:
            times = checks.normalise_times(dataset["time"].values)
        except ValueError:
            dataset.close()
            raise
        if times.ndim == 1 and dataset["time"].dims == ("time",):
            dataset = dataset.assign_coords(time=times)
    return dataset


def _variables(dataset: xr.Dataset, units: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The store's variables the file holds, their units checked."""
    present = tuple(name for name in units if name in dataset.data_vars)
    if not present:
        raise ValueError(
            f"holds none of {', '.join(units)} (it has "
            f"{', '.join(map(str, list(dataset.data_vars)[:6])) or 'no variables'}): name the "
            "reference fields as the store does"
        )
    for name in present:
        stated = dataset[name].attrs.get("units")
        if stated is not None and units[name] and stated not in units[name]:
            raise ValueError(
                f"{name} is in {stated!r}; expected {units[name][0]}, as the store holds it"
            )
    return present


def _common_times(dataset: xr.Dataset, valid_times: Sequence[np.datetime64]) -> list[np.datetime64]:
    if "time" not in dataset.coords:
        raise ValueError("has no time coordinate: the fields need dims (time, y, x)")
    wanted = np.array(valid_times, dtype="datetime64[ns]")
    available = np.atleast_1d(dataset["time"].values).astype("datetime64[ns]")
    common = list(np.intersect1d(wanted, available))
    if not common:
        raise ValueError(
            f"has no time in common with the selected store times (file: "
            f"{_span(available)}; store: {_span(wanted)})"
        )
    return common


def _span(times: np.ndarray) -> str:
    if times.size == 0:
        return "none"
    ordered = np.sort(times)
    first, last = (checks.format_time64(t) for t in (ordered[0], ordered[-1]))
    return first if first == last else f"{first} to {last}"


def _coordinate(dataset: xr.Dataset, names: Sequence[str]) -> xr.DataArray | None:
    for name in names:
        if name in dataset.coords or name in dataset.variables:
            return dataset[name]
    return None


def _placement(
    dataset: xr.Dataset, name: str, spatial: list[str], lat: np.ndarray, lon: np.ndarray
) -> tuple[list[str], tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """The file dims that are the store's (y, x), and how to regrid, if it must be.

    The regridding is (the file's lat, its longitudes unwrapped, the store's longitudes
    in the same turn of the globe).
    """
    shape = tuple(dataset[name].sizes[dim] for dim in spatial)
    file_lat, file_lon = _coordinate(dataset, _LAT_NAMES), _coordinate(dataset, _LON_NAMES)
    for kind, coordinate in (("lat", file_lat), ("lon", file_lon)):
        if coordinate is not None and coordinate.ndim == 1:
            why = checks.axis_problem(str(coordinate.name), np.asarray(coordinate.values), kind)
            if why:
                raise ValueError(f"{why}: every coordinate must be a finite, monotonic axis")
    if file_lat is not None and file_lon is not None and file_lat.ndim == file_lon.ndim == 2:
        why = checks.grid_problem(np.asarray(file_lat.values), np.asarray(file_lon.values))
        if why:
            raise ValueError(f"its 2-D {why}: every grid point needs a finite position")
    regular = (
        file_lat is not None
        and file_lon is not None
        and file_lat.ndim == 1
        and file_lon.ndim == 1
        and {file_lat.dims[0], file_lon.dims[0]} == set(spatial)
    )
    # A file on lat/lon axes is placed by them, even with as many points as the store's
    # grid: another model's regular grid written with 1-D axes, or a regular grid of
    # 448 x 448 points that is not Taiwan's curvilinear one.
    if shape == lat.shape and not regular:
        return _output_grid_order(name, spatial, file_lat, file_lon, lat, lon), None
    if regular:
        assert file_lat is not None and file_lon is not None  # noqa: S101 - regular says so
        lat_values = np.asarray(file_lat, dtype="float64")
        # A longitude axis may wrap (170 ... 180, -180 ... -170, or 300 ... 360, 0 ...):
        # unwrapped it is monotonic, and the store's longitudes are moved by whole turns
        # into its span.
        lon_values = np.unwrap(np.asarray(file_lon, dtype="float64"), period=360.0)
        middle = (lon_values.min() + lon_values.max()) / 2
        turns = np.round((middle - (lon.min() + lon.max()) / 2) / 360.0)
        target = lon + 360.0 * turns
        # Within GRID_TOLERANCE: a store keeps its grid in float32, whose edge may round
        # a hair outside the same grid written in float64.
        if not (
            lat_values.min() <= lat.min() + GRID_TOLERANCE
            and lat_values.max() >= lat.max() - GRID_TOLERANCE
            and lon_values.min() <= target.min() + GRID_TOLERANCE
            and lon_values.max() >= target.max() - GRID_TOLERANCE
        ):
            raise ValueError(
                f"{name}'s lat/lon grid ({lat_values.min():g} to {lat_values.max():g} N, "
                f"{lon_values.min():g} to {lon_values.max():g} E) does not cover the "
                "output grid"
            )
        target = np.clip(target, lon_values.min(), lon_values.max())
        return [str(file_lat.dims[0]), str(file_lon.dims[0])], (lat_values, lon_values, target)
    raise ValueError(
        f"{name} is on a {shape[0]}x{shape[1]} grid without 1-D lat/lon: put it on "
        f"the store's {_shape(lat)} grid (dims time, y, x) or on a regular lat/lon grid "
        "that covers it"
    )


def _output_grid_order(
    name: str,
    spatial: list[str],
    file_lat: xr.DataArray | None,
    file_lon: xr.DataArray | None,
    lat: np.ndarray,
    lon: np.ndarray,
) -> list[str]:
    """Which file dim is the store's y, for a field already on the output grid's shape.

    Spatial dims are aligned by *name*, never by position: a file stored as (time, x, y)
    must not be read as if it were (time, y, x).
    """
    if (
        file_lat is not None
        and file_lon is not None
        and file_lat.ndim == file_lon.ndim == 2
        and set(file_lat.dims) == set(file_lon.dims) == set(spatial)
    ):
        # The orientation in which the file's own 2-D lat/lon match the store's grid.
        worst, order = np.inf, spatial
        for candidate in ([str(d) for d in file_lat.dims], [str(d) for d in file_lat.dims][::-1]):
            error = max(
                float(np.nanmax(np.abs(np.asarray(file_lat.transpose(*candidate)) - lat))),
                float(np.nanmax(np.abs(np.asarray(file_lon.transpose(*candidate)) - lon))),
            )
            if error < worst:
                worst, order = error, candidate
        if worst > GRID_TOLERANCE:
            raise ValueError(
                f"{name} is {_shape(lat)} but its lat/lon differ from the store's grid by up "
                f"to {worst:.3g} degrees: is it another grid?"
            )
        return order
    if set(spatial) == {"y", "x"}:
        return ["y", "x"]
    raise ValueError(
        f"{name} is {_shape(lat)} on dims {tuple(spatial)} without 2-D lat/lon on them: "
        "name the dims y and x (as the store does) or add 2-D lat/lon, so they can "
        "be aligned by name"
    )


def _shape(lat: np.ndarray) -> str:
    """``448x448``: the output grid's shape, as messages name it."""
    return "x".join(str(size) for size in lat.shape)
