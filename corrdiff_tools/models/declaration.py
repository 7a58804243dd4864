"""What the rest of the tool pair needs to know about a model, as plain data (no torch).

The store, the data sources and the downscaling loop read a :class:`Declaration` instead
of CorrDiff Taiwan's constants: which variables the model reads and on which 1-D input
grid, which it writes and on an output grid of which shape. Taiwan's is
:data:`corrdiff_tools.store.TAIWAN`; a generic package's is read from its files before
anything is loaded (:func:`from_package`), so a run is validated (its source's variables
and grid) before torch is imported, and checked again against the loaded model
(:func:`check_loaded`), which is what the run trusts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from corrdiff_tools.errors import RunError, UsageError
from corrdiff_tools.sampling import PRESET_OF, PRESETS, SOLVERS, SamplerSettings

#: A generic package's files, as earth2studio's ``CorrDiff.load_model`` reads them (with
#: ``input_latlon_grid.nc``, or ``latlon_res`` in ``metadata.json``, and ``invariants.nc``
#: optional).
REQUIRED_FILES = ("metadata.json", "stats.json", "output_latlon_grid.nc")
CHECKPOINTS = ("regression.mdlus", "diffusion.mdlus")
OPTIONAL_FILES = ("input_latlon_grid.nc", "invariants.nc")

#: Global store attribute naming the model of a store made by any model but Taiwan
#: (Taiwan's stores, made before there were others, do not carry it: absent means Taiwan).
MODEL_ATTR = "corrdiff_tools_model"
#: The names that attribute holds: a generic package's, and CorrDiffCMIP6's.
STORED_NAMES = ("package", "cmip6")


@dataclass(frozen=True, eq=False)
class Declaration:
    """A model's variables and grids.

    Parameters
    ----------
    name : str
        ``taiwan``, or ``package`` for a generic CorrDiff package.
    inputs, outputs : tuple of str
        Variables read and written, in the model's channel order (earth2studio names).
    input_lat, input_lon : numpy.ndarray
        The 1-D regular input grid, as the model lists it.
    output_shape : tuple of int
        (rows, columns) of the output grid.
    input_leads : tuple of int
        Hours from a store's time at which each input is read: ``(0,)`` (one time) for
        most models; CorrDiffCMIP6 reads ``(-24, 0, 24)`` around its initialisation time.
    output_leads : tuple of int or None
        The lead times (hours from the store's time) a model is trained to write, or None
        where the lead times are the source's (forecasts) or there are none (analyses).
    init_hour : int or None
        The hour (UTC) every time must be at, where the model's inputs are valid at one
        hour of the day only (CorrDiffCMIP6's daily fields: 12).
    blank_inputs : tuple of str
        Inputs whose missing values (NaN) the model reads as 0 rather than as a gap:
        CorrDiffCMIP6's sea-ice and snow cover, blank over land and over sea in CMIP6.
    gpu_precision : str
        What ``--precision auto`` is on a GPU: the precision the model is published to run
        in there (Taiwan: fp16, earth2studio's ``use_fp16``; CorrDiffCMIP6: bf16, its
        autocast; a generic package: fp32, as earth2studio loads it). On a CPU auto is fp32.
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    input_lat: np.ndarray
    input_lon: np.ndarray
    output_shape: tuple[int, int]
    input_leads: tuple[int, ...] = (0,)
    output_leads: tuple[int, ...] | None = None
    init_hour: int | None = None
    blank_inputs: tuple[str, ...] = ()
    gpu_precision: str = "fp32"

    @property
    def is_taiwan(self) -> bool:
        """Whether this is CorrDiff Taiwan's declaration (``store.TAIWAN``)."""
        return self.name == "taiwan"

    def input_times(self, times: Sequence[datetime]) -> list[datetime]:
        """Every time the inputs of ``times`` are read at, sorted, each once."""
        return sorted({t + timedelta(hours=lead) for t in times for lead in self.input_leads})

    def model_inputs(self, fields: Mapping[str, np.ndarray]) -> np.ndarray:
        """The sampler's inputs from fetched fields, in the model's variable order.

        (variable, lat, lon); or (input lead, variable, lat, lon) for a model with
        several input leads, whose fields each hold their :attr:`input_leads`, as
        :func:`corrdiff_tools.sources.fetch_inputs` fetches them.
        """
        return np.stack([fields[name] for name in self.inputs], axis=int(self.multi_lead))

    def stored_inputs(self, fields: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The fields a store keeps of one piece: the inputs at lead 0 (the store's time)."""
        if not self.multi_lead:
            return dict(fields)
        middle = self.input_leads.index(0)
        return {
            name: values[middle] if name in self.inputs else values
            for name, values in fields.items()
        }

    @property
    def multi_lead(self) -> bool:
        """Whether each input is read at several lead times (:attr:`input_leads`)."""
        return self.input_leads != (0,)

    def to_json(self) -> dict[str, Any]:
        """What a store records (:data:`MODEL_ATTR`); its grids are its coordinates."""
        return {"name": self.name, "inputs": list(self.inputs), "outputs": list(self.outputs)}

    def differences(self, other: Declaration) -> list[str]:
        """What differs between two declarations of one model, in words."""
        found = [
            f"{what} {getattr(self, what)} vs {getattr(other, what)}"
            for what in ("inputs", "outputs", "output_shape", "input_leads")
            if tuple(getattr(self, what)) != tuple(getattr(other, what))
        ]
        for axis in ("input_lat", "input_lon"):
            mine, theirs = getattr(self, axis), getattr(other, axis)
            if mine.shape != theirs.shape or not np.allclose(mine, theirs, atol=1e-6):
                found.append(f"{axis} {_span(mine)} vs {_span(theirs)}")
        return found


def _span(axis: np.ndarray) -> str:
    return f"{axis[0]:g}..{axis[-1]:g} ({axis.size} points)" if axis.size else "(empty)"


def stored_outputs(attrs: Mapping[str, Any], default: Sequence[str]) -> tuple[str, ...]:
    """The output variables a store holds, by its :data:`MODEL_ATTR` (``default`` without)."""
    raw = attrs.get(MODEL_ATTR)
    if raw is None:
        return tuple(default)
    try:
        outputs = json.loads(raw)["outputs"] if isinstance(raw, str) else raw["outputs"]
    except (TypeError, ValueError, KeyError):
        outputs = None
    if not isinstance(outputs, list) or not all(isinstance(v, str) for v in outputs):
        raise ValueError(f"its {MODEL_ATTR} attribute is damaged: {str(raw)[:80]!r}")
    return tuple(outputs)


def model_attr_problem(attrs: Mapping[str, Any]) -> str | None:
    """What is wrong with a store's :data:`MODEL_ATTR`, or None (absent is Taiwan's)."""
    if attrs.get(MODEL_ATTR) is None:
        return None
    try:
        stored_outputs(attrs, ())
    except ValueError as err:
        return str(err)
    name = stored_model_name(attrs)
    if name not in STORED_NAMES:  # what the run tool writes for every model but Taiwan
        return f"its {MODEL_ATTR} attribute names no model this tool writes ({name!r})"
    return None


def stored_model_name(attrs: Mapping[str, Any]) -> str:
    """``taiwan`` for a store without :data:`MODEL_ATTR`, else the name it records."""
    raw = attrs.get(MODEL_ATTR)
    if raw is None:
        return "taiwan"
    try:
        return str((json.loads(raw) if isinstance(raw, str) else raw)["name"])
    except (TypeError, ValueError, KeyError):
        return "(damaged)"


def missing_files(folder: Path) -> list[str]:
    """The files of the generic layout that ``folder`` lacks.

    ``invariants.nc`` is optional, and ``latlon_res`` in ``metadata.json`` stands in for
    ``input_latlon_grid.nc``.
    """
    names = (*REQUIRED_FILES, *CHECKPOINTS)
    missing = [name for name in names if not (folder / name).is_file()]
    metadata_has_res = False
    if (folder / "metadata.json").is_file():
        try:
            metadata_has_res = "latlon_res" in json.loads((folder / "metadata.json").read_text())
        except ValueError:
            pass
    if not (folder / "input_latlon_grid.nc").is_file() and not metadata_has_res:
        missing.append("input_latlon_grid.nc (or latlon_res in metadata.json)")
    return missing


def package_files(folder: Path) -> list[Path]:
    """The files of a generic package that make what it computes: its identity."""
    names = (*REQUIRED_FILES, *CHECKPOINTS, *OPTIONAL_FILES)
    return [folder / name for name in names if (folder / name).is_file()]


def metadata_settings(
    metadata: Mapping[str, Any], sigmas: tuple[float, float] | None = None
) -> SamplerSettings:
    """The sampler settings a package's ``metadata.json`` asks for, as ours.

    Steps, solver and sampler with earth2studio 0.19's defaults where the file is silent
    (18 steps, euler, stochastic: ``CorrDiff.load_model``); sigma_min/sigma_max from it
    too, else ``sigmas`` (a family's own defaults: CorrDiffCMIP6's loader has 1 and 400),
    else physicsnemo's sampler defaults, which are our presets' (0.002..80 deterministic,
    0.002..800 stochastic).

    Raises
    ------
    ValueError
        For a sampler type physicsnemo does not have.
    """
    kind = metadata.get("sampler_type", "stochastic")
    if kind not in PRESET_OF:
        raise ValueError(f"metadata.json: sampler_type {kind!r}, need one of {sorted(PRESET_OF)}")
    solver = metadata.get("solver", "euler")
    if kind == "deterministic" and solver not in SOLVERS:
        raise ValueError(f"metadata.json: solver {solver!r}, need one of {', '.join(SOLVERS)}")
    base = PRESETS[PRESET_OF[kind]]
    low, high = metadata.get("sigma_min"), metadata.get("sigma_max")
    if sigmas is not None:
        low = sigmas[0] if low is None else low
        high = sigmas[1] if high is None else high
    return replace(
        base,
        steps=int(metadata.get("number_of_steps", 18)),
        solver=str(metadata.get("solver", "euler")) if kind == "deterministic" else "heun",
        sigma_min=base.sigma_min if low is None else float(low),
        sigma_max=base.sigma_max if high is None else float(high),
    )


def from_package(folder: Path, shown: str) -> Declaration:
    """A generic package's declaration from its files, without loading it.

    ``metadata.json`` names the variables; the input grid is ``input_latlon_grid.nc``'s
    (or inferred from ``latlon_res`` as earth2studio's ``_infer_input_latlon_grid`` does),
    the output grid's shape ``output_latlon_grid.nc``'s (a 1-D pair is meshed, as
    :class:`~corrdiff_tools.models.generic.RegionalCorrDiff` does).

    Raises
    ------
    UsageError
        Naming ``shown`` (the option and value) and what is wrong with the files.
    """
    import xarray as xr

    try:
        metadata = json.loads((folder / "metadata.json").read_text())
        inputs = _names(metadata, "input_variables")
        outputs = _names(metadata, "output_variables")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(
            f"{shown}: metadata.json does not name input_variables and output_variables "
            f"as lists of names ({type(err).__name__}: {err})"
        ) from None
    problem = names_problem(inputs, outputs)
    mode = metadata.get("inference_mode", "both")
    if problem is None and mode not in INFERENCE_MODES:
        # earth2studio runs an unknown mode (a typo) as "both", silently.
        problem = f"inference_mode {mode!r} is none of {', '.join(INFERENCE_MODES)}"
    if problem is not None:
        raise UsageError(f"{shown}: metadata.json: {problem}")
    try:
        with xr.open_dataset(folder / "output_latlon_grid.nc") as grid:
            out_lat = np.asarray(grid["lat"].values, dtype="float64")
            out_lon = np.asarray(grid["lon"].values, dtype="float64")
        shape = out_lat.shape if out_lat.ndim == 2 else (out_lat.size, out_lon.size)
        if (folder / "input_latlon_grid.nc").is_file():
            with xr.open_dataset(folder / "input_latlon_grid.nc") as grid:
                in_lat = np.asarray(grid["lat"].values, dtype="float64")
                in_lon = np.asarray(grid["lon"].values, dtype="float64")
        else:
            res = float(metadata["latlon_res"])
            if not (np.isfinite(res) and res > 0):
                raise ValueError(f"latlon_res {metadata['latlon_res']!r} is not a positive step")
            in_lat, in_lon = infer_input_grid(out_lat, out_lon, res)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(
            f"{shown}: its grid files do not read as lat/lon grids ({type(err).__name__}: {err})"
        ) from None
    if in_lat.ndim == 2 and in_lon.ndim == 2 and in_lat.shape == in_lon.shape:
        # A rectilinear grid written as 2-D arrays: its axes, as RegionalCorrDiff takes them
        # (earth2studio's CorrDiff._is_rectilinear, with its tolerances).
        rows = np.allclose(in_lat, in_lat[:, :1], rtol=1e-5, atol=1e-5)
        if rows and np.allclose(in_lon, in_lon[:1], rtol=1e-5, atol=1e-5):
            in_lat, in_lon = in_lat[:, 0], in_lon[0]
    if in_lat.ndim != 1 or in_lon.ndim != 1:
        raise UsageError(
            f"{shown}: input_latlon_grid.nc holds a {in_lat.ndim}-D grid; the run tool feeds "
            "1-D regular lat/lon input grids"
        )
    return Declaration("package", inputs, outputs, in_lat, in_lon, (int(shape[0]), int(shape[1])))


#: earth2studio's inference modes (``metadata.json``'s ``inference_mode``).
INFERENCE_MODES = ("both", "regression", "diffusion")
#: Names a store gives its own arrays: a model variable may not take one.
RESERVED_NAMES = ("completed", "time", "lead_time", "sample", "lat", "lon", "lat_lr", "lon_lr",
                  "x", "y", "wind")  # fmt: skip
#: (``wind`` is the plot tool's panel of a u10m/v10m pair.)
#: Endings of the names of a store's derived arrays (see ``store.regression_name`` ...).
RESERVED_ENDINGS = ("_regression", "_ensemble_mean", "_ensemble_std", "_exceedance")


def _names(metadata: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = metadata[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{key} is {value!r}, not a list of names")
    return tuple(value)


def names_problem(inputs: Sequence[str], outputs: Sequence[str]) -> str | None:
    """What makes a model's variable names unusable in a store, or None.

    A name given twice would lose a channel (stores, and our dicts, are by name); a name
    the store uses for its own arrays (``completed``, ``lat``, ``lr_*``, ``*_regression``)
    would collide with it; ``/`` or a leading ``.`` is not a Zarr array name.
    """
    for kind, names in (("input", inputs), ("output", outputs)):
        if not names:
            return f"no {kind} variables"
        twice = sorted({name for name in names if list(names).count(name) > 1})
        if twice:
            return f"the {kind} variable(s) {', '.join(twice)} are listed twice"
        for name in names:
            if not name or "/" in name or name.startswith(".") or name != name.strip():
                return f"{kind} variable {name!r} is not a name a store can hold"
            if name in RESERVED_NAMES or name.startswith("lr_") or name.endswith(RESERVED_ENDINGS):
                return f"{kind} variable {name!r} is a name the store keeps for its own arrays"
    return None


def infer_input_grid(
    out_lat: np.ndarray, out_lon: np.ndarray, res: float
) -> tuple[np.ndarray, np.ndarray]:
    """The input grid a package with ``latlon_res`` gets.

    earth2studio's formula (``CorrDiff._infer_input_latlon_grid``: one step beyond the
    output grid each way), in float64: earth2studio's float32 arange is not regular
    enough for its own spacing check at resolutions such as 0.1 (it refuses the package).
    """
    axes = [np.asarray(axis, dtype="float64") for axis in (out_lat, out_lon)]
    return tuple(  # type: ignore[return-value]
        np.arange(
            (np.floor(axis.min() / res) - 1) * res,
            (np.ceil(axis.max() / res) + 1) * res + res / 2,
            res,
            dtype="float64",
        )
        for axis in axes
    )


def check_loaded(expected: Declaration, loaded: Declaration, shown: str) -> None:
    """Refuse a loaded model that is not what its files declared before loading."""
    differences = expected.differences(loaded)
    if differences:
        raise RunError(
            f"{shown}: the loaded model differs from what its files declare "
            f"({'; '.join(differences)}): the package changed while loading, or a model "
            "subclass rewrites its grids; nothing was written"
        )
