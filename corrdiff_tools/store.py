"""The Zarr layout both tools share: names, units, CF attributes, provenance, resume state.

This module is the contract between ``run_corrdiff.py`` (which writes a store) and
``plot_corrdiff.py`` (which reads it). Neither tool spells a variable name, unit or
dimension anywhere else. It imports no torch and no earth2studio.

Layout of a store (Zarr v3, consolidated metadata, zstd-compressed, NaN fill)::

    mrr, t2m, u10m, v10m  (time, [lead_time,] sample, y, x)   float32, a chunk per field
    lat, lon              (y, x)                               2-D output grid coordinates
    lr_<input>            (time, [lead_time,] lat_lr, lon_lr)  the 12 low-resolution inputs
                                                               fed to the model, and lr_refc
                                                               (GFS composite reflectivity)
                                                               where the source has it
    completed             (time, [lead_time,] sample)          int8, 1 once a piece is written
    time, lead_time       Zarr datetime64 / timedelta64 (not CF integers; see
                          _store_native_times), sample, y, x, lat_lr, lon_lr: an index
                          array for every dimension, as earth2studio's ZarrBackend needs

Differences from earth2studio's ``ZarrBackend`` (the blog's writer), on purpose: CF
attributes and units on every variable; 2-D lat/lon stored as coordinates (``ZarrBackend``
writes them as data variables); NaN as fill value so unwritten pieces read as missing, not
as 0.0; a ``completed`` record so an interrupted run can be resumed; consolidated metadata
so ``xr.open_zarr(path)`` opens it without warnings.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from corrdiff_tools import quantities
from corrdiff_tools import times as times_mod
from corrdiff_tools.errors import RunError, UsageError
from corrdiff_tools.models.declaration import (
    MODEL_ATTR,
    Declaration,
    model_attr_problem,
    stored_outputs,
)

if TYPE_CHECKING:
    import xarray as xr

logger = logging.getLogger(__name__)

#: Variables CorrDiff Taiwan writes, in the model's output order.
OUTPUT_VARIABLES: tuple[str, ...] = ("mrr", "t2m", "u10m", "v10m")
#: Variables CorrDiff Taiwan reads, in the model's input order.
INPUT_VARIABLES: tuple[str, ...] = (
    "tcwv", "z500", "t500", "u500", "v500", "z850", "t850", "u850", "v850", "t2m", "u10m", "v10m",
)  # fmt: skip
#: Extra low-resolution fields stored for plotting when the source has them.
EXTRA_LOWRES_VARIABLES: tuple[str, ...] = ("refc",)

#: The model's low-resolution input grid (0.25 degree).
LR_LAT = np.linspace(19.25, 28.0, 36)
LR_LON = np.linspace(116.0, 126.0, 40, endpoint=False)
#: The output grid is 448 x 448 (the package's 450 x 450 grid less a one-point border).
HR_SHAPE = (448, 448)
#: CorrDiff Taiwan, as the rest of the code reads a model (stores without a model
#: attribute are Taiwan's: they were made before there were other models).
TAIWAN = Declaration(
    "taiwan", INPUT_VARIABLES, OUTPUT_VARIABLES, LR_LAT, LR_LON, HR_SHAPE, gpu_precision="fp16"
)

#: CF attributes of every variable a store may hold.
VARIABLE_ATTRS: dict[str, dict[str, str]] = {
    "mrr": {
        "standard_name": "equivalent_reflectivity_factor",
        "long_name": "maximum radar reflectivity in the column",
        "units": "dBZ",
    },
    "t2m": {"standard_name": "air_temperature", "long_name": "2 m air temperature", "units": "K"},
    "u10m": {"standard_name": "eastward_wind", "long_name": "10 m eastward wind", "units": "m s-1"},
    "v10m": {
        "standard_name": "northward_wind",
        "long_name": "10 m northward wind",
        "units": "m s-1",
    },
    "tcwv": {
        "standard_name": "atmosphere_mass_content_of_water_vapor",
        "long_name": "total column water vapour",
        "units": "kg m-2",
    },
    "refc": {
        "standard_name": "equivalent_reflectivity_factor",
        "long_name": "composite radar reflectivity",
        "units": "dBZ",
    },
}
#: Pressure-level inputs: prefix -> (CF standard name, what it is, units).
_LEVEL_FIELDS = {
    "z": ("geopotential", "geopotential", "m2 s-2"),
    "t": ("air_temperature", "air temperature", "K"),
    "u": ("eastward_wind", "eastward wind", "m s-1"),
    "v": ("northward_wind", "northward wind", "m s-1"),
}
for _level in (500, 850):
    for _prefix, (_standard, _what, _units) in _LEVEL_FIELDS.items():
        VARIABLE_ATTRS[f"{_prefix}{_level}"] = {
            "standard_name": _standard,
            "long_name": f"{_what} at {_level} hPa",
            "units": _units,
        }


def variable_attrs(name: str) -> dict[str, str]:
    """CF attributes of a variable: ours where we know it, else only its name.

    A generic package names its variables (earth2studio's names) but not their units:
    a variable we do not know gets a ``long_name`` and no ``units``, rather than a guess.
    """
    known = VARIABLE_ATTRS.get(name)
    if known is not None:
        return dict(known)
    return {"long_name": name, "comment": "units as in the model package's training data"}


COORD_ATTRS: dict[str, dict[str, str]] = {
    "lat": {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north"},
    "lon": {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east"},
    "lat_lr": {
        "standard_name": "latitude",
        "long_name": "input latitude",
        "units": "degrees_north",
        "axis": "Y",
    },
    "lon_lr": {
        "standard_name": "longitude",
        "long_name": "input longitude",
        "units": "degrees_east",
        "axis": "X",
    },
    # y/x index the curvilinear output grid (2-D lat/lon). They carry no ``axis``: CF
    # readers take an X/Y axis for a projection coordinate in metres, and the package
    # ships only the grid's lat/lon, not its projection.
    "y": {"long_name": "row index of the output grid (see lat, lon)", "units": "1"},
    "x": {"long_name": "column index of the output grid (see lat, lon)", "units": "1"},
    "time": {
        "standard_name": "time",
        "long_name": "valid time of the input analysis",
        "axis": "T",
    },
    "lead_time": {"standard_name": "forecast_period", "long_name": "forecast lead time"},
    "sample": {"standard_name": "realization", "long_name": "ensemble member", "units": "1"},
}
#: Coordinates stored as Zarr's numpy datetime/timedelta types, not CF-encoded integers.
NATIVE_TIME_COORDS = ("time", "lead_time")

#: Global attribute holding the settings a ``--resume`` must match (JSON).
SETTINGS_ATTR = "corrdiff_tools_settings"
#: Global attribute that marks a store as written by this tool.
FORMAT_ATTR = "corrdiff_tools_format"
FORMAT_VERSION = 1
COMPLETED = "completed"


#: How every file the tools name begins: stores, figures, animations.
NAME_PREFIX = "corrdiff-"


def default_output(times: Sequence[datetime], forecast: bool = False, model: str = "") -> Path:
    """``outputs/corrdiff-<first>[_<last>][-forecast][-<model>].zarr``.

    Forecasts get their own suffix, so downscaling the 12Z forecast never collides with
    (or is refused because of) the 12Z analysis downscaled before it; so does a model
    named by ``--model`` (``cmip6``), whose stores are not Taiwan's.
    """
    first = times_mod.time_label(times[0])
    span = first if len(times) == 1 else f"{first}_{times_mod.time_label(times[-1])}"
    suffix = f"{'-forecast' if forecast else ''}{f'-{model}' if model else ''}"
    return Path("outputs") / f"{NAME_PREFIX}{span}{suffix}.zarr"


def piece_index(time_index: int, lead_index: int | None) -> tuple[int, ...]:
    """Index of one (time, [lead]) entry, before the sample axis: ``(t,)`` or ``(t, l)``."""
    return (time_index,) if lead_index is None else (time_index, lead_index)


def lead_hours(dataset: xr.Dataset) -> list[int]:
    """The lead times of a forecast store, in whole hours ([] for an analysis store)."""
    if "lead_time" not in dataset.dims:
        return []
    return [int(h) for h in dataset["lead_time"].values.astype("timedelta64[h]").astype(int)]


#: What CorrDiff Taiwan's networks are given (see ``downscale.py``).
TAIWAN_CONDITIONING = (
    "diffusion: [noisy(4), input(12), grid(4)], no regression-mean conditioning (as the "
    "checkpoint was trained)"
)


def provenance(
    *,
    command: Sequence[str],
    model_package: str,
    input_source: str,
    seed: int,
    sampler: Mapping[str, Any],
    geometry: str,
    device: str,
    precision: str,
    model: str = "CorrDiff Taiwan",
    conditioning: str = TAIWAN_CONDITIONING,
    title: str | None = None,
    maker: str = "NVIDIA",
) -> dict[str, Any]:
    """The global attributes of a new store: CF, what made it, and with which settings.

    ``model`` names the model in the title and source (``title``, default "MODEL
    km-scale downscaled ensemble"; ``maker``, who trained it), ``conditioning`` says what
    the networks were given (Taiwan's defaults are what its stores have always said).
    """
    from importlib.metadata import PackageNotFoundError, version

    from corrdiff_tools import __version__

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"

    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "Conventions": "CF-1.10",
        "title": title or f"{model} km-scale downscaled ensemble",
        # No "institution": CF means where the data was produced, which only the user
        # knows (add it with xarray or zarr); the tool that made it is named in "source".
        "source": f"{maker} {model}".lstrip() + " (Mardani et al. 2024, arXiv:2309.15214), "
        f"run with corrdiff-tools {__version__}",
        "references": "https://arxiv.org/abs/2309.15214",
        "history": f"{now} run_corrdiff.py {shlex.join(command)}",
        "corrdiff_tools_version": __version__,
        "earth2studio_version": ver("earth2studio"),
        "physicsnemo_version": ver("nvidia-physicsnemo"),
        "torch_version": ver("torch"),
        "model_package": model_package,
        "input_source": input_source,
        "seed": seed,
        **sampler,
        "geometry": geometry,
        "device": device,
        "precision": precision,
        "conditioning": conditioning,
    }


def lowres_name(variable: str) -> str:
    """Name of the stored low-resolution field of ``variable`` (``t2m`` -> ``lr_t2m``)."""
    return f"lr_{variable}"


def has_lowres(dataset: xr.Dataset) -> bool:
    """Whether a store holds the inputs a low-resolution map needs (t2m and both winds)."""
    return all(lowres_name(name) in dataset for name in ("t2m", "u10m", "v10m"))


def regression_name(variable: str) -> str:
    """The regression net's mean of ``variable`` (``t2m`` -> ``t2m_regression``).

    CorrDiff's deterministic part, which every sample is built on; the paper's second
    baseline (``plot_corrdiff.py --spectra/--pdf/--truth`` compare against it).
    """
    return f"{variable}_regression"


def ensemble_mean_name(variable: str) -> str:
    """``run_corrdiff.py --stats``: ensemble mean of ``variable``."""
    return f"{variable}_ensemble_mean"


def ensemble_std_name(variable: str) -> str:
    """``run_corrdiff.py --stats``: ensemble standard deviation of ``variable``."""
    return f"{variable}_ensemble_std"


def exceedance_name(quantity: str) -> str:
    """``run_corrdiff.py --stats``: P(quantity >= threshold), quantity mrr, t2m or wind."""
    return f"{quantity}_exceedance"


@dataclass(frozen=True)
class StoreLayout:
    """Shape of a store: which times, lead times and samples it holds, on which grid.

    Parameters
    ----------
    times : sequence of datetime
        Valid (analysis or initialisation) times, UTC.
    samples : int
        Ensemble size.
    lat, lon : numpy.ndarray
        2-D output grid, of the model's output shape (:data:`HR_SHAPE` for Taiwan).
    lead_times : sequence of int or None
        Forecast lead times in hours, or None for analyses (no lead_time axis).
    lowres_variables : sequence of str
        Low-resolution fields to store (the inputs, plus ``refc`` where available).
    statistics : mapping, optional
        Exceedance thresholds (quantity -> value in :data:`THRESHOLD_UNITS`); when given,
        the store also gets ensemble mean, standard deviation and exceedance arrays.
    model : Declaration
        The model (default :data:`TAIWAN`): its outputs, input grid and output shape.
    """

    times: Sequence[datetime]
    samples: int
    lat: np.ndarray
    lon: np.ndarray
    lead_times: Sequence[int] | None = None
    lowres_variables: Sequence[str] = field(default=INPUT_VARIABLES)
    statistics: Mapping[str, float] | None = None
    #: The model whose variables and grids the store holds.
    model: Declaration = TAIWAN

    @property
    def leading_dims(self) -> tuple[str, ...]:
        """Dimensions before ``sample``: ``(time,)`` or ``(time, lead_time)``."""
        return ("time",) if self.lead_times is None else ("time", "lead_time")

    @property
    def leading_shape(self) -> tuple[int, ...]:
        """Lengths of :attr:`leading_dims`."""
        if self.lead_times is None:
            return (len(self.times),)
        return (len(self.times), len(self.lead_times))


#: Hidden folders a run makes beside a store: building it, an ``--overwrite``'s new store
#: before its first complete batch, and the old store between the two renames of a swap.
STAGING_KINDS = ("creating", "replacing", "replaced")


def _staging(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def sibling_names(name: str) -> tuple[str, ...]:
    """Every name a run creates beside a store called ``name`` (validation checks they fit)."""
    return (*(_staging(Path(name), kind).name for kind in STAGING_KINDS), f"{name}.lock")


def _swap_in(new: Path, path: Path) -> None:
    """Put the store at ``new`` in ``path``'s place; the old one goes only once it is there.

    A failure between the two renames puts the old store back; one removing the old store
    afterwards is only logged (the swap is done). A kill in between is finished by
    :func:`clean_leftovers`.
    """
    aside = _staging(path, "replaced")
    os.rename(path, aside)
    try:
        os.rename(new, path)
    except OSError:
        os.rename(aside, path)
        raise
    try:
        shutil.rmtree(aside)
    except OSError as err:
        logger.warning("could not remove the replaced store %s (%s): delete it", aside, err)


def clean_leftovers(path: str | Path) -> None:
    """Finish what a run killed while creating or replacing ``path`` left behind.

    Call only while holding the store's lock (no other run can be creating it). A
    half-built ``.<name>.creating-<pid>`` is removed, and so is an ``--overwrite``'s new
    store that never got a complete batch (``.<name>.replacing-<pid>``, see
    :class:`Replacement`): the old store was never touched. A ``.<name>.replaced-<pid>`` (the
    store an ``--overwrite`` was replacing) is removed if its replacement is in place, and
    put back if it is not, so the user's data is never lost between the two renames.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return
    for kind in ("creating", "replacing"):
        for leftover in sorted(path.parent.glob(f".{path.name}.{kind}-*")):
            shutil.rmtree(leftover, ignore_errors=True)
    for leftover in sorted(path.parent.glob(f"..{path.name}.*")):  # of earlier versions
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in sorted(path.parent.glob(f".{path.name}.replaced-*")):
        if path.exists():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            os.rename(leftover, path)


def create_store(
    path: str | Path,
    layout: StoreLayout,
    attrs: Mapping[str, Any],
    settings: Mapping[str, Any],
    replace: bool = False,
) -> None:
    """Create an empty store with every array, coordinate and attribute, but no data.

    All arrays exist before any sample is written, so several writers (processes or
    ranks) can fill disjoint chunks afterwards. The store is built under a hidden name
    beside ``path`` and renamed into place, so ``path`` is either absent or complete: an
    interruption (Ctrl-C, SIGTERM, a kill, a full disk) never leaves a half-made store
    that ``--resume`` would trust or ``--overwrite`` would refuse. With ``replace``, an
    existing store at ``path`` is moved aside first and deleted only once the new one is
    in place (see :func:`clean_leftovers` for a kill in between).

    Parameters
    ----------
    path : str or Path
        Where to create it; must not exist.
    layout : StoreLayout
        What it holds.
    attrs : mapping
        Global attributes (provenance, history).
    settings : mapping
        Settings that a later ``--resume`` must match; stored as JSON.
    replace : bool
        Replace an existing store at ``path`` (``--overwrite``).
    """
    dataset, encoding = _empty_dataset(layout, attrs, settings)
    _write_atomically(dataset, encoding, Path(path), replace)


def _empty_dataset(
    layout: StoreLayout, attrs: Mapping[str, Any], settings: Mapping[str, Any]
) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """Every array of ``layout``, lazily NaN-filled (dask), with its encoding."""
    import xarray as xr

    data_vars, encoding = _data_arrays(layout)
    coords = _coordinates(layout)
    settings = {
        key: stored_identity(value) if key in CONTENT_SETTINGS else value
        for key, value in settings.items()
    }
    if layout.model.name != TAIWAN.name:  # Taiwan's stores stay as they always were
        attrs = {**attrs, MODEL_ATTR: json.dumps(layout.model.to_json())}
    # CF 2.5.1: coordinate variables must not have a _FillValue (xarray gives every
    # float array one unless told not to); ours are always complete.
    encoding.update({name: {"_FillValue": None} for name in coords})
    dataset = xr.Dataset(
        data_vars,
        coords=coords,
        attrs={**attrs, FORMAT_ATTR: FORMAT_VERSION, SETTINGS_ATTR: json.dumps(dict(settings))},
    )
    return dataset, encoding


def _data_arrays(layout: StoreLayout) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The data variables (dims, lazy NaN array, attrs) of a new store, and their encoding."""
    import dask.array as da

    model = layout.model
    lead = layout.leading_dims
    lead_shape = layout.leading_shape
    hr_dims = (*lead, "sample", "y", "x")
    hr_shape = (*lead_shape, layout.samples, *model.output_shape)
    hr_chunks = (*(1 for _ in lead), 1, *model.output_shape)
    lr_dims = (*lead, "lat_lr", "lon_lr")
    lr_grid = (model.input_lat.size, model.input_lon.size)
    lr_shape = (*lead_shape, *lr_grid)
    lr_chunks = (*(1 for _ in lead), *lr_grid)

    data_vars: dict[str, Any] = {}
    encoding: dict[str, dict[str, Any]] = {}
    for name in model.outputs:
        data_vars[name] = (
            hr_dims,
            da.full(hr_shape, np.nan, dtype="float32", chunks=hr_chunks),
            variable_attrs(name),
        )
        encoding[name] = {"_FillValue": np.nan}
    for name in layout.lowres_variables:
        base = variable_attrs(name)
        data_vars[lowres_name(name)] = (
            lr_dims,
            da.full(lr_shape, np.nan, dtype="float32", chunks=lr_chunks),
            {**base, "long_name": f"{base['long_name']} (input)"},
        )
        encoding[lowres_name(name)] = {"_FillValue": np.nan}
    grid_dims = (*lead, "y", "x")
    grid_shape = (*lead_shape, *model.output_shape)
    grid_chunks = (*(1 for _ in lead), *model.output_shape)

    for name, attrs in _grid_attrs(layout).items():
        data_vars[name] = (
            grid_dims,
            da.full(grid_shape, np.nan, dtype="float32", chunks=grid_chunks),
            attrs,
        )
        encoding[name] = {"_FillValue": np.nan}
    data_vars[COMPLETED] = (
        (*lead, "sample"),
        da.zeros((*lead_shape, layout.samples), dtype="int8", chunks=1),
        {"long_name": "1 where this piece of the ensemble is fully written, else 0"},
    )

    return data_vars, encoding


def _grid_attrs(layout: StoreLayout) -> dict[str, dict[str, Any]]:
    """The (time, [lead,] y, x) arrays of a store and their CF attributes.

    The regression mean of each output variable, and with ``--stats`` the ensemble mean,
    standard deviation and exceedance probabilities.
    """
    arrays: dict[str, dict[str, Any]] = {}
    for name in layout.model.outputs:
        base = variable_attrs(name)
        arrays[regression_name(name)] = {
            **base,
            "long_name": f"{base['long_name']}, regression mean (deterministic part)",
        }
    if layout.statistics is None:
        return arrays
    members = f"over the {layout.samples} ensemble members"
    for name in layout.model.outputs:
        base = variable_attrs(name)
        arrays[ensemble_mean_name(name)] = {
            **base,
            "long_name": f"{base['long_name']}, ensemble mean",
            "cell_methods": f"realization: mean ({members})",
        }
        arrays[ensemble_std_name(name)] = {
            "long_name": f"{base['long_name']}, ensemble standard deviation",
            # the variable's units; none for a variable whose units are unknown
            **({"units": base["units"]} if "units" in base else {}),
            "cell_methods": f"realization: standard_deviation (ddof=0, {members})",
        }
    for quantity, threshold in layout.statistics.items():
        # Ours for Taiwan's quantities (t2m in deg C); another model's in its store units.
        units = quantities.threshold_units(quantity, variable_attrs(quantity).get("units"))
        arrays[exceedance_name(quantity)] = {
            "long_name": f"probability that {quantity} >= " + f"{threshold:g} {units}".strip(),
            "units": "1",
            "threshold": float(threshold),
            "threshold_units": units,
        }
    return arrays


def _coordinates(layout: StoreLayout) -> dict[str, Any]:
    coords: dict[str, Any] = {
        "time": ("time", np.array(layout.times, dtype="datetime64[ns]"), COORD_ATTRS["time"]),
        "sample": ("sample", np.arange(layout.samples, dtype="int32"), COORD_ATTRS["sample"]),
        "lat": (("y", "x"), np.asarray(layout.lat, dtype="float32"), COORD_ATTRS["lat"]),
        "lon": (("y", "x"), np.asarray(layout.lon, dtype="float32"), COORD_ATTRS["lon"]),
        "lat_lr": ("lat_lr", layout.model.input_lat, COORD_ATTRS["lat_lr"]),
        "lon_lr": ("lon_lr", layout.model.input_lon, COORD_ATTRS["lon_lr"]),
        # Index arrays for y/x: earth2studio's ZarrBackend needs one for every dimension.
        "y": ("y", np.arange(layout.model.output_shape[0], dtype="int32"), COORD_ATTRS["y"]),
        "x": ("x", np.arange(layout.model.output_shape[1], dtype="int32"), COORD_ATTRS["x"]),
    }
    if layout.lead_times is not None:
        coords["lead_time"] = (
            "lead_time",
            np.array(layout.lead_times, dtype="timedelta64[h]").astype("timedelta64[ns]"),
            COORD_ATTRS["lead_time"],
        )
    return coords


def _write_atomically(
    dataset: xr.Dataset, encoding: dict[str, dict[str, Any]], path: Path, replace: bool
) -> None:
    """Write ``dataset`` under a hidden name beside ``path``, then rename it into place."""
    with warnings.catch_warnings():
        # zarr warns that consolidated metadata is not (yet) part of the v3 spec; xarray
        # and zarr-python read it, and without it every plain xr.open_zarr(path) warns.
        warnings.simplefilter("ignore")
        if path.exists() and not replace:
            raise RunError(f"could not create {path}: it already exists (nothing was changed)")
        staging = _staging(path, "creating")
        try:
            dataset.to_zarr(
                str(staging), mode="w-", compute=False, encoding=encoding, consolidated=True
            )
            _store_native_times(staging, dataset)
            if replace and path.exists():
                _swap_in(staging, path)
            else:
                os.rename(staging, path)
        except OSError as err:
            raise RunError(
                f"could not create {path} ({err.strerror or err}): free some space or fix the "
                "permissions, then rerun"
            ) from err
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def _array_shapes(path: Path) -> dict[str, tuple[int, ...] | None]:
    """Each array of the store at ``path`` with its own metadata: its shape (None: unreadable).

    Read from each array's ``zarr.json``, not from the consolidated copy in the root: an
    array whose directory was removed is still listed there.
    """
    shapes: dict[str, tuple[int, ...] | None] = {}
    for meta in sorted(path.glob("*/zarr.json")):
        try:
            content = json.loads(meta.read_text())
            shapes[meta.parent.name] = tuple(int(n) for n in content["shape"])
        except (OSError, ValueError, KeyError, TypeError):
            shapes[meta.parent.name] = None
    return shapes


def layout_problems(path: str | Path, layout: StoreLayout) -> tuple[list[str], list[str]]:
    """Arrays of ``layout`` that the store at ``path`` lost, and those it holds wrongly.

    Returns
    -------
    missing : list of str
        Arrays the store had (its consolidated metadata lists them) whose own metadata is
        gone (a removed directory): :func:`restore_missing` recreates them. An array an
        earlier version never wrote (a store from before the regression mean was kept) is
        not lost, and is not created: its absence is not a gap to recompute.
    wrong : list of str
        ``'t2m has shape (1, 2, 448, 448), expected (1, 4, 448, 448)'``: a store that is
        not what its settings say; nothing is guessed.
    """
    dataset, _ = _empty_dataset(layout, {}, {})
    expected = {str(name): tuple(dataset[name].shape) for name in dataset.variables}
    held = _array_shapes(Path(path))
    listed = _consolidated_names(Path(path))
    missing = [name for name in expected if name not in held and (listed is None or name in listed)]
    wrong = [
        f"{name} has {'unreadable metadata' if held[name] is None else f'shape {held[name]}'}, "
        f"expected {expected[name]}"
        for name in expected
        if name in held and held[name] != expected[name]
    ]
    return missing, wrong


def _consolidated_names(path: Path) -> set[str] | None:
    """The arrays a store's consolidated metadata lists (None: it has none)."""
    try:
        root = json.loads((path / "zarr.json").read_text())
        listed = (root.get("consolidated_metadata") or {}).get("metadata")
    except (OSError, ValueError, AttributeError):
        return None
    return set(listed) if isinstance(listed, dict) else None


def restore_missing(
    path: str | Path, layout: StoreLayout, attrs: Mapping[str, Any], settings: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """Recreate the arrays of ``layout`` whose metadata the store lacks, repair coordinates.

    Returns the arrays recreated and the coordinates rewritten (see
    :func:`_rewrite_coordinates`).

    A store whose ``t2m`` directory was removed still lists ``t2m`` in its consolidated
    metadata, so writes "succeed" into chunks no reader finds, and the next consolidation
    drops the variable. The arrays are recreated empty (NaN) with their attributes, and
    the metadata consolidated again; the pieces they held are then missing, and
    ``--resume``'s read-back (:meth:`StoreWriter.damaged`) computes them again. A missing
    ``completed`` record comes back all zero: everything is recomputed.
    """
    import zarr

    path = Path(path)
    missing, wrong = layout_problems(path, layout)
    if wrong:
        raise UsageError(f"--resume {path} is a damaged store: {wrong[0]}")
    dataset, encoding = _empty_dataset(layout, attrs, settings)
    if not missing:
        return [], _rewrite_coordinates(path, dataset)

    native = [name for name in missing if name in NATIVE_TIME_COORDS]
    plain = [name for name in missing if name not in NATIVE_TIME_COORDS]
    data = [name for name in plain if name in dataset.data_vars]
    coords = [name for name in plain if name not in dataset.data_vars]
    subset = dataset[data].drop_vars(
        [c for c in dataset.coords if c not in coords], errors="ignore"
    )
    for name in coords:
        subset[name] = dataset[name].variable
    root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    kept = dict(root.attrs)  # xarray's append replaces the root attributes with its own
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if subset.variables:
            subset.to_zarr(
                str(path),
                mode="a",
                compute=False,
                encoding={name: encoding[name] for name in subset.variables if name in encoding},
                consolidated=False,
            )
        group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
        group.attrs.put(kept)
        for name in native:
            _write_native_time(group, name, dataset)
        zarr.consolidate_metadata(str(path))
    return missing, _rewrite_coordinates(path, dataset)


def _rewrite_coordinates(path: Path, dataset: xr.Dataset) -> list[str]:
    """Rewrite coordinate arrays whose values are not the layout's; rebuild consolidation.

    Coordinates are derived from the run's settings and the model's grid (both verified
    by ``--resume``): a lost or damaged chunk of ``lat`` or ``time`` is written again
    rather than trusted (NaN latitudes, NaT times), and consolidated metadata that
    disagrees with the arrays' own (see :func:`consolidation_problem`) is rebuilt. Values
    are compared as decoded: a time stored as CF integers (a store copied through xarray)
    is the same time; one that is wrong is written anew in the layout's own type.
    """
    import xarray as xr
    import zarr

    stale = consolidation_problem(path)
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    try:
        stored = xr.open_zarr(str(path), consolidated=False, decode_times=True)
    except Exception:  # noqa: BLE001 - undecodable times: compared one by one below
        stored = None
    rewritten = []
    for name in dataset.coords:
        name = str(name)
        expected = np.asarray(dataset[name].values)
        if name in ("lat", "lon"):
            expected = expected.astype("float32")
        same = False
        if stored is not None and name in stored.variables:
            try:
                held = np.asarray(stored[name].values)
                same = held.shape == expected.shape and bool(
                    np.array_equal(held.astype(expected.dtype), expected)
                )
            except Exception:  # noqa: BLE001 - a chunk that does not decode: rewrite it
                same = False
        if same:
            continue
        array: Any = group[name]  # zarr types Group.__getitem__ as a Group too
        if name in NATIVE_TIME_COORDS:
            _write_native_time(group, name, dataset)
        elif array.dtype == expected.dtype and array.shape == expected.shape:
            array[...] = expected
        else:
            raise UsageError(
                f"--resume {path} is a damaged store: its {name} is {array.dtype} "
                f"{array.shape}, expected {expected.dtype} {expected.shape}; restore it from "
                "a copy, or start a new store"
            )
        rewritten.append(name)
    if stale or rewritten:
        if stale:
            logger.warning("%s: %s; rebuilding it", path, stale)
        zarr.consolidate_metadata(str(path))
    return rewritten


def _write_native_time(group: Any, name: str, dataset: xr.Dataset) -> None:
    """(Re)create ``time``/``lead_time`` as a Zarr datetime64/timedelta64 array.

    See :func:`_store_native_times` for why these are not CF-encoded integers.
    """
    values = dataset[name].values
    if name in group:
        del group[name]
    array = group.create_array(
        name,
        shape=values.shape,
        dtype=values.dtype,
        dimension_names=[name],
        fill_value=None,
        attributes=dict(dataset[name].attrs),
    )
    array[:] = values


def _store_native_times(path: Path, dataset: xr.Dataset) -> None:
    """Rewrite ``time``/``lead_time`` as Zarr datetime64/timedelta64 arrays, in place.

    xarray always CF-encodes times as integers with a ``units`` attribute. earth2studio's
    ``ZarrBackend`` reads arrays as stored, so it listed our times as integer hours and
    could not write at a datetime. Zarr v3 has numpy's datetime64 and timedelta64 as
    data types (earth2studio's own stores use them), and xarray, zarr-python and dask
    read them as datetimes. A NetCDF export (``to_netcdf``) is CF-encoded again by xarray.
    """
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    for name in NATIVE_TIME_COORDS:
        if name in dataset.coords:
            _write_native_time(group, name, dataset)
    zarr.consolidate_metadata(str(path))


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is a Zarr store written by this tool."""
    return read_attrs(path).get(FORMAT_ATTR) is not None


def read_attrs(path: str | Path) -> dict[str, Any]:
    """Global attributes of the Zarr group at ``path`` ({} if it is not a Zarr group)."""
    import zarr

    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # noqa: BLE001 - anything unreadable is simply "not a store"
        return {}


def read_settings(path: str | Path) -> dict[str, Any] | None:
    """The settings a store was created with, or None if it is not one of ours.

    Raises
    ------
    ValueError
        If the attribute is there but damaged (see :func:`damage`).
    """
    raw = read_attrs(path).get(SETTINGS_ATTR)
    if raw is None:
        return None
    try:
        settings = json.loads(raw)
    except (TypeError, ValueError):
        settings = None
    if not isinstance(settings, dict):
        raise ValueError(f"its {SETTINGS_ATTR} attribute is not the JSON object it should be")
    return settings


def damage(path: str | Path) -> str | None:
    """Why a directory that looks like a CorrDiff store cannot be read as one, or None.

    A store whose root metadata (``zarr.json``) is missing or does not parse, or whose
    settings attribute is damaged, is a *damaged* store, not "not a store": it holds the
    arrays (``completed``, ``t2m``, ...) of one. Neither tool guesses around the damage.
    """
    path = Path(path)
    looks_like_one = (path / COMPLETED / "zarr.json").is_file() or all(
        (path / name).is_dir() for name in OUTPUT_VARIABLES
    )
    root = path / "zarr.json"
    if not root.is_file():
        if (path / ".zgroup").is_file() or not looks_like_one:
            return None  # a Zarr v2 store, or not a store at all
        return f"its root metadata {root} is missing"
    try:
        meta = json.loads(root.read_text())
    except (OSError, ValueError) as err:
        return f"its root metadata {root} does not parse ({type(err).__name__})"
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return f"its root metadata {root} is not a Zarr group's"
    attributes = meta.get("attributes")
    if not isinstance(attributes, dict):
        return f"the attributes in {root} are damaged" if looks_like_one else None
    if FORMAT_ATTR in attributes:
        try:
            read_settings(path)
        except ValueError as err:
            return str(err)
        return model_attr_problem(attributes)
    return None


class Replacement:
    """``--overwrite`` without losing the old store to a run that computes nothing.

    The new store is created beside the old one (``.<name>.replacing-<pid>``) and
    written there; only when its first batch of samples is on disk, checked and marked
    complete, does it take the old store's place (two renames, see
    :func:`clean_leftovers` for a kill in between). A run that fails before that (inputs
    that cannot be fetched, sampler settings that give no physical result) leaves the old
    store as it was. Single process only: torchrun ranks open the store collectively.
    """

    def __init__(
        self,
        path: str | Path,
        layout: StoreLayout,
        attrs: Mapping[str, Any],
        settings: Mapping[str, Any],
    ) -> None:
        self.path = Path(path)
        self.staging = _staging(self.path, "replacing")
        dataset, encoding = _empty_dataset(layout, attrs, settings)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # see _write_atomically
                dataset.to_zarr(
                    str(self.staging), mode="w-", compute=False, encoding=encoding,
                    consolidated=True,
                )  # fmt: skip
                _store_native_times(self.staging, dataset)
        except OSError as err:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise RunError(
                f"could not create {self.staging} ({err.strerror or err}) beside {self.path}: "
                "free some space or fix the permissions, then rerun (the old store is kept)"
            ) from err
        self._writer = StoreWriter(self.staging)
        self.swapped = False

    def write_inputs(self, index: tuple[int, ...], fields: Mapping[str, np.ndarray]) -> None:
        """Store one time's low-resolution fields (in the new store)."""
        self._writer.write_inputs(index, fields)

    def write_regression(self, index: tuple[int, ...], fields: Mapping[str, np.ndarray]) -> None:
        """Store one time's regression mean (in the new store)."""
        self._writer.write_regression(index, fields)

    def write_samples(
        self, index: tuple[int, ...], samples: Sequence[int], fields: Mapping[str, np.ndarray]
    ) -> None:
        """Store a batch; the first one puts the new store in the old one's place."""
        self._writer.write_samples(index, samples, fields)
        if not self.swapped:
            try:
                _swap_in(self.staging, self.path)
            except OSError as err:
                raise RunError(
                    f"could not put the new store in {self.path}'s place "
                    f"({err.strerror or err}); the old store is kept"
                ) from err
            self.swapped = True
            self._writer = StoreWriter(self.path)

    def discard(self) -> None:
        """Drop the new store if it never replaced the old one (the run failed first)."""
        if not self.swapped:
            shutil.rmtree(self.staging, ignore_errors=True)


class StoreWriter:
    """Write pieces of the ensemble into an existing store, one chunk per field.

    Each (time, [lead,] sample) piece is a separate chunk, so concurrent writers are
    safe as long as they write different pieces. A piece is marked complete only after
    all its variables are written: a run killed mid-write leaves it incomplete, and a
    ``--resume`` recomputes it.
    """

    def __init__(self, path: str | Path) -> None:
        import zarr

        self.path = Path(path)
        self._group = zarr.open_group(str(path), mode="r+")
        #: The model's output variables (Taiwan's, for a store without a model attribute).
        self.outputs = stored_outputs(self._group.attrs, OUTPUT_VARIABLES)

    def _array(self, name: str) -> Any:
        return self._group[name]

    def _failed(self, err: OSError) -> RunError:
        return RunError(
            f"could not write to {self.path} ({err.strerror or err}): free some space or fix "
            "the permissions, then rerun with --resume (what was completed is kept)"
        )

    def completed(self) -> np.ndarray:
        """Completion flags, shape ``(time, [lead_time,] sample)``, dtype bool."""
        return np.asarray(self._array(COMPLETED)[...]).astype(bool)

    def damaged(self) -> list[tuple[tuple[int, ...], str]]:
        """Pieces marked complete whose data is missing or does not decode, with why.

        A completion flag is only a promise: a chunk file deleted, truncated or corrupted
        after the run (a copy cut short, a bad disk) would otherwise be trusted by
        ``--resume`` and read back as a blank (all-NaN) field. Every chunk of every
        complete piece is read and decoded: the samples, and for their (time, [lead]) the
        inputs and the regression mean (a damaged one of those damages every sample there).
        """
        done = self.completed()
        bad: list[tuple[tuple[int, ...], str]] = []
        names = [name for name in self._group.array_keys() if name.startswith("lr_")]
        names += [regression_name(v) for v in self.outputs if regression_name(v) in self._group]
        for index in np.ndindex(done.shape[:-1]):
            pieces = [(*index, int(s)) for s in np.flatnonzero(done[index])]
            if not pieces:
                continue
            shared = self._unreadable(names, index)
            for piece in pieces:
                why = shared or self._unreadable(list(self.outputs), piece)
                if why:
                    bad.append((piece, why))
        return bad

    def _unreadable(self, names: Sequence[str], index: tuple[int, ...]) -> str | None:
        for name in names:
            try:
                values = np.asarray(self._array(name)[index])
            except Exception as err:  # noqa: BLE001 - codecs raise many types on bad bytes
                return f"{name}{list(index)} does not decode ({type(err).__name__}: {err})"
            if values.size and np.isnan(values).all():
                return f"{name}{list(index)} is missing (its chunk reads as the fill value)"
        return None

    def unmark(self, pieces: Sequence[tuple[int, ...]]) -> None:
        """Mark pieces incomplete, so that ``--resume`` computes them again."""
        try:
            for piece in pieces:
                self._array(COMPLETED)[piece] = 0
        except OSError as err:
            raise self._failed(err) from err

    def write_inputs(self, index: tuple[int, ...], fields: Mapping[str, np.ndarray]) -> None:
        """Store the low-resolution fields of one (time, [lead]) at ``index``."""
        self._write_fields(lowres_name, index, fields)

    def write_regression(self, index: tuple[int, ...], fields: Mapping[str, np.ndarray]) -> None:
        """Store the regression mean of one (time, [lead]); stores from before 0.2 have none."""
        self._write_fields(regression_name, index, fields)

    def _write_fields(
        self,
        stored_name: Callable[[str], str],
        index: tuple[int, ...],
        fields: Mapping[str, np.ndarray],
    ) -> None:
        """Write each field the store has an array for (``stored_name(variable)``)."""
        try:
            for name, values in fields.items():
                key = stored_name(name)
                if key in self._group:
                    self._array(key)[index] = np.asarray(values, dtype="float32")
        except OSError as err:
            raise self._failed(err) from err

    def write_samples(
        self, index: tuple[int, ...], samples: Sequence[int], fields: Mapping[str, np.ndarray]
    ) -> None:
        """Store fields of shape ``(len(samples), rows, columns)``; mark those samples complete.

        Parameters
        ----------
        index : tuple of int
            ``(time_index,)`` or ``(time_index, lead_index)``.
        samples : sequence of int
            Sample indices, one per leading entry of each field.
        fields : mapping
            Output variable name -> array in physical units, for each of :attr:`outputs`.
        """
        try:
            for position, sample in enumerate(samples):
                for name in self.outputs:
                    self._array(name)[(*index, sample)] = np.asarray(
                        fields[name][position], dtype="float32"
                    )
            # Marked only once every variable of the batch is on disk.
            for sample in samples:
                self._array(COMPLETED)[(*index, sample)] = 1
        except OSError as err:
            raise self._failed(err) from err


def ensemble_statistics(
    members: Mapping[str, np.ndarray], thresholds: Mapping[str, float]
) -> dict[str, np.ndarray]:
    """The ``--stats`` arrays of one (time, [lead]), keyed by store name.

    ``members`` maps each output variable to ``(sample, y, x)`` in store units. Mean and
    standard deviation are in store units too (CF: the variable's own units); the
    exceedance probabilities are over the display quantities, in which the thresholds are
    given (:data:`~corrdiff_tools.quantities.THRESHOLD_UNITS`: t2m in deg C, wind speed).
    """
    mean, std = quantities.moments(members)
    out = {ensemble_mean_name(name): mean[name] for name in members}
    out |= {ensemble_std_name(name): std[name] for name in members}
    shown = {key: np.asarray(value) for key, value in quantities.displayed(members).items()}
    for quantity, probability in quantities.exceedance(shown, thresholds).items():
        out[exceedance_name(quantity)] = probability
    return out


def write_statistics(path: str | Path, thresholds: Mapping[str, float]) -> tuple[int, int]:
    """Fill the ``--stats`` arrays for every (time, [lead]) whose ensemble is complete.

    Returns
    -------
    tuple of int
        How many (time, [lead]) entries were written, and how many were left out because
        some of their samples are not complete yet (a later ``--resume`` fills them).
    """
    import zarr

    group = zarr.open_group(str(path), mode="r+")

    def array(name: str) -> Any:  # zarr's Group.__getitem__ is typed as returning a Group too
        return group[name]

    outputs = stored_outputs(group.attrs, OUTPUT_VARIABLES)
    completed = np.asarray(array(COMPLETED)[...]).astype(bool)
    written = skipped = 0
    try:
        for index in np.ndindex(completed.shape[:-1]):
            if not completed[index].all():
                skipped += 1
                continue
            members = {name: np.asarray(array(name)[index]) for name in outputs}
            for key, values in ensemble_statistics(members, thresholds).items():
                array(key)[index] = values.astype("float32")
            written += 1
    except OSError as err:
        raise RunError(
            f"could not write statistics to {path} ({err.strerror or err}): free some space, "
            "then rerun with --resume --stats"
        ) from err
    return written, skipped


def check_target(path: Path, overwrite: bool, resume: bool, settings: Mapping[str, Any]) -> None:
    """Refuse a run's --output unless it may be created, replaced or completed.

    The one place that decides. Only our own stores are ever replaced or completed, and
    only when asked; a ``--resume`` must ask for exactly the settings the store was made
    with (see :func:`settings_mismatch`).

    Raises
    ------
    UsageError
        Saying why not, and what to do instead.
    """
    if not path.exists():
        return
    broken = damage(path)
    if broken:
        raise UsageError(
            f"--output {path} is a damaged store: {broken}; neither --resume nor --overwrite "
            "acts on a store it cannot read: restore it from a copy, or move it away and run "
            "again"
        )
    if not is_store(path):
        raise UsageError(
            f"--output {path} exists and is not a corrdiff-tools store; refusing to touch it: "
            "choose another --output"
        )
    if overwrite:
        return
    if not resume:
        raise UsageError(
            f"--output {path} already exists: pass --resume to complete it, --overwrite to "
            "replace it, or choose another --output"
        )
    stored = read_settings(path) or {}
    mismatch = settings_mismatch(stored, settings)
    if mismatch:
        raise UsageError(
            f"--resume: {path} was made with other settings ({'; '.join(mismatch)}): "
            "rerun with the same settings, or use --overwrite or another --output"
        )
    for move in moved_inputs(stored, settings):
        logger.info("--resume: %s", move)


#: Settings that identify a file by its content: its path is where it was, not what it is.
CONTENT_SETTINGS = ("source", "model_package")


def _by_content(value: Any) -> Any:
    """An input file's or package's identity without its path (see :data:`CONTENT_SETTINGS`).

    HPC jobs stage inputs and packages into a per-job ``$TMPDIR``: the same content at a
    new path is the same input, and a ``--resume`` there must not be refused (the only
    remedy, ``--overwrite``, would throw the completed work away).
    """
    if isinstance(value, Mapping) and "sha256" in value:
        return {key: item for key, item in value.items() if key not in ("path", "same_as")}
    return value


def stored_identity(value: Any) -> Any:
    """An identity as a store records it: without ``same_as``, which is for comparing."""
    if isinstance(value, Mapping):
        return {key: item for key, item in value.items() if key != "same_as"}
    return value


def _same_content(stored: Any, requested: Any) -> bool:
    """Whether a stored identity is the requested one's content (or an earlier digest of it)."""
    if _by_content(stored) == _by_content(requested):
        return True
    if isinstance(stored, Mapping) and isinstance(requested, Mapping):
        return stored.get("sha256") in requested.get("same_as", ())
    return False


def settings_mismatch(stored: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """Describe each setting that differs between a store and a new request.

    Inputs and packages are compared by content (SHA-256), not by path or form.
    """
    keys = sorted(set(stored) | set(requested))

    def differs(key: str) -> bool:
        if key in CONTENT_SETTINGS:
            return not _same_content(stored.get(key), requested.get(key))
        return stored.get(key) != requested.get(key)

    return [
        f"{key}: store has {stored.get(key)!r}, this run asks for "
        f"{stored_identity(requested.get(key))!r}"
        for key in keys
        if differs(key)
    ]


def moved_inputs(stored: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """Inputs or packages a ``--resume`` finds with the same content at another path."""
    moved = []
    for key in CONTENT_SETTINGS:
        before, now = stored.get(key), requested.get(key)
        if (
            isinstance(before, Mapping)
            and isinstance(now, Mapping)
            and before.get("path") != now.get("path")
            and _same_content(before, now)
        ):
            moved.append(f"{key} {before.get('path')} is now {now.get('path')} (same content)")
    return moved


def _is_zarr_group(path: Path) -> bool:
    """Whether ``path`` holds a Zarr group's metadata (v3 ``zarr.json`` or v2 ``.zgroup``)."""
    return (path / "zarr.json").is_file() or (path / ".zgroup").is_file()


def _is_consolidated(path: Path) -> bool:
    """Whether the Zarr store at ``path`` has consolidated metadata (v3 or v2)."""
    if (path / ".zmetadata").is_file():
        return True
    try:
        root = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(root, dict) and root.get("consolidated_metadata") is not None


def implausible_arrays(
    dataset: xr.Dataset,
    times: Sequence[int] | None = None,
    leads: Sequence[int | None] | None = None,
) -> dict[str, str]:
    """Stored inputs and regression means outside their physical range, with why.

    Only the selected ``times`` (and ``leads``) are read, not the whole store.

    What the plot tool draws or scores against besides the samples (which are checked
    piece by piece as they are read): ``lr_<input>`` against the inputs' ranges (a store
    whose ``lr_refc`` is linear reflectivity would blank every reflectivity colour scale),
    ``<var>_regression`` against the limits of computed fields.
    """
    import dask

    from corrdiff_tools import checks

    if times is not None:
        dataset = dataset.isel(time=list(times))
    chosen = [lead for lead in leads or () if lead is not None]
    if chosen and "lead_time" in dataset.dims:
        dataset = dataset.isel(lead_time=chosen)
    wanted: dict[str, tuple[str, Mapping[str, tuple[float, float, str]], Any]] = {}
    for name in dataset.data_vars:
        name = str(name)
        if name.startswith("lr_"):
            base, ranges = name.removeprefix("lr_"), checks.PHYSICAL_RANGES
        elif name.endswith("_regression"):
            base, ranges = name.removesuffix("_regression"), checks.OUTPUT_LIMITS
        else:
            continue
        if base in ranges:
            array = dataset[name]
            wanted[name] = (base, ranges, (array.min().data, array.max().data))
    extremes = dask.compute({name: pair for name, (_, _, pair) in wanted.items()})[0]
    found = {}
    for name, (base, limits, _) in wanted.items():
        why = checks.out_of_range(base, np.asarray(extremes[name], dtype="float64"), limits)
        if why:
            found[name] = why
    return found


#: Names of horizontal dimensions, in the layouts we read (ours, the blog's, inputs, truth).
SPATIAL_DIMS = ("y", "x", "ilat", "ilon", "lat", "lon", "latitude", "longitude")


def mask_fill_values(dataset: xr.Dataset, path: str | Path) -> xr.Dataset:
    """``dataset`` (opened from the Zarr store at ``path``) with unwritten fields as NaN.

    A chunk that was never written reads as the array's fill value, and xarray does not
    mask Zarr v3 fill values by default. Our stores fill with NaN, but earth2studio's
    ``ZarrBackend`` (the blog's writer) fills with 0.0: an unwritten sample would be drawn
    and scored as data (t2m -273 deg C), an unwritten input time read as calm winds. A
    horizontal field (every value of one 2-D slice) that is entirely the fill value was
    never written, in every layout we read, and is missing; a single value that happens
    to equal it (0 dBZ, a calm point) is data.
    """
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:  # noqa: BLE001 - xarray read it; without zarr's view, nothing to mask
        return dataset
    for name in list(dataset.data_vars):
        variable = dataset[name]
        if not np.issubdtype(variable.dtype, np.floating) or str(name) not in group:
            continue
        fill = getattr(group[str(name)], "fill_value", None)
        try:
            fill = float(fill)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if not np.isfinite(fill):
            continue
        spatial = [str(dim) for dim in variable.dims if dim in SPATIAL_DIMS][-2:]
        if len(spatial) < 2:
            spatial = [str(dim) for dim in variable.dims[-2:]]
        blank = (variable == fill).all(dim=spatial) if len(spatial) == 2 else variable == fill
        dataset[name] = variable.where(~blank).assign_attrs(variable.attrs)
        dataset[name].encoding = dict(variable.encoding)
    return dataset


def open_store(path: str | Path) -> xr.Dataset:
    """Open a store for reading, ours or the blog's, in our layout.

    The blog's ``ZarrBackend`` stores have dims (time, sample, ilat, ilon), 2-D ``lat`` /
    ``lon`` as data variables and no attributes; they are renamed to (time, sample, y, x)
    with lat/lon as coordinates and given our CF attributes, so both read the same way.

    Raises
    ------
    ValueError
        If ``path`` is not a Zarr store holding CorrDiff output (the message says why).
    """
    import xarray as xr

    broken = damage(path)
    if broken:
        raise ValueError(f"{path} is a damaged store: {broken}; restore it from a copy")
    consolidated = _is_consolidated(Path(path))
    stale = consolidation_problem(path) if consolidated else None
    if stale:
        # The arrays' own metadata is the truth; the consolidated copy is only a cache.
        logger.warning("%s: %s; reading each array's own metadata instead", path, stale)
        consolidated = False
    try:
        # Say whether the metadata is consolidated rather than let xarray guess: its guess
        # on a store without (the blog's) warns, once in every process that opens it.
        dataset = xr.open_zarr(str(path), consolidated=consolidated)
    except Exception as err:  # noqa: BLE001 - any failure here means "not a readable store"
        if _is_zarr_group(Path(path)):
            reason = err.args[0] if isinstance(err, KeyError) and err.args else err
            raise ValueError(
                f"{path} is a Zarr store but not CorrDiff output: xarray cannot read it as a "
                f"dataset ({reason}); pass a store written by run_corrdiff.py or the blog's "
                "run-corrdiff.py"
            ) from None
        raise ValueError(f"{path} is not a readable Zarr store ({type(err).__name__})") from None
    outputs = stored_outputs(dataset.attrs, OUTPUT_VARIABLES)
    missing = [name for name in outputs if name not in dataset]
    if missing:
        raise ValueError(
            f"{path} is not CorrDiff output: it lacks {', '.join(missing)} "
            f"(expected {', '.join(outputs)})"
        )
    dataset = mask_fill_values(dataset, path)
    dataset = dataset.rename({k: v for k, v in (("ilat", "y"), ("ilon", "x")) if k in dataset.dims})
    dataset = dataset.set_coords([name for name in ("lat", "lon") if name in dataset.data_vars])
    if "lat" not in dataset.coords or dataset["lat"].dims != ("y", "x"):
        raise ValueError(f"{path} is not CorrDiff output: it has no 2-D lat/lon grid")
    for name in outputs:
        if "time" not in dataset[name].dims or "sample" not in dataset[name].dims:
            raise ValueError(
                f"{path} is not CorrDiff output: {name} has dims {dataset[name].dims}, "
                "expected (time, [lead_time,] sample, y, x)"
            )
        for key, value in variable_attrs(name).items():
            dataset[name].attrs.setdefault(key, value)
    wrong = coordinate_problem(dataset)
    if wrong:
        raise ValueError(
            f"{path} is a damaged store: {wrong}; run_corrdiff.py --resume rewrites the "
            "coordinates of its own stores"
        )
    return dataset


def coordinate_problem(dataset: xr.Dataset) -> str | None:
    """What is wrong with a store's times or grid, or None.

    Two pieces at one time would be drawn into one file name, a NaT has no name, and a
    non-finite grid point cannot be drawn: a store whose coordinate chunks were lost or
    damaged is refused, not half drawn.
    """
    from corrdiff_tools import checks

    times = np.asarray(dataset["time"].values)
    if np.issubdtype(times.dtype, np.datetime64):
        if np.isnat(times).any():
            return f"its time has {int(np.isnat(times).sum())} missing value(s) (NaT)"
        unique, counts = np.unique(times, return_counts=True)
        if (counts > 1).any():
            return f"its time holds {checks.format_time64(unique[counts > 1][0])} twice"
    why = checks.grid_problem(np.asarray(dataset["lat"].values), np.asarray(dataset["lon"].values))
    return f"its 2-D {why}" if why else None


def consolidation_problem(path: str | Path) -> str | None:
    """How a store's consolidated metadata disagrees with its arrays' own, or None.

    The consolidated copy in the root ``zarr.json`` is a cache of every array's
    ``zarr.json``: an array it omits is invisible to readers that trust it, and one whose
    shape it misstates is read wrongly. Found here, it is read around (plot tool) or
    rebuilt (``--resume``), never trusted.
    """
    path = Path(path)
    try:
        root = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return None  # damage() says what is wrong with that
    listed = (root.get("consolidated_metadata") or {}).get("metadata")
    if not isinstance(listed, dict):
        return None
    held = _array_shapes(path)
    for name, shape in held.items():
        entry = listed.get(name)
        if not isinstance(entry, dict):
            return f"its consolidated metadata omits the array {name}"
        if shape is not None and tuple(entry.get("shape", ())) != shape:
            return (
                f"its consolidated metadata gives {name} the shape "
                f"{tuple(entry.get('shape', ()))}, the array's own says {shape}"
            )
    return None
