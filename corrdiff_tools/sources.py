"""The only place that builds earth2studio data sources (GFS, GFS forecasts, ERA5, a file).

Fetching goes through earth2studio's own ``fetch_data`` and ``map_coords``; what this
module adds is what the blog's script lacked: validation before anything is fetched, a
refusal of NaN/inf inputs (GFS returns NaN for a missing field with only a warning),
one clear error when the network is unreachable, and writing inputs to a local file for
offline use.
"""

from __future__ import annotations

import contextlib
import logging
import time as time_mod
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from corrdiff_tools import checks
from corrdiff_tools import times as times_mod
from corrdiff_tools.errors import RunError, UsageError
from corrdiff_tools.store import EXTRA_LOWRES_VARIABLES, TAIWAN

if TYPE_CHECKING:
    import xarray as xr
    from earth2studio.data.base import DataSource, ForecastSource

    from corrdiff_tools.models.declaration import Declaration

    #: What a run reads its inputs from: an earth2studio analysis or forecast source.
    InputSource: TypeAlias = DataSource | ForecastSource

logger = logging.getLogger(__name__)

#: Named sources a user can pick with ``--source``; anything else must be a file path.
SOURCE_NAMES = ("gfs", "gfs-forecast", "era5")
#: Tolerance (degrees) when matching a file's grid to the model's input grid.
GRID_TOLERANCE = 1e-3
#: Waits (seconds) between attempts at a remote fetch: network hiccups are common, outages
#: are not, so three tries over ~20 s, then a clear failure (completed times stay stored).
RETRY_DELAYS: tuple[float, ...] = (4.0, 16.0)
#: The offline route, short enough for a one-line error (--prefetch is in that section).
OFFLINE_HINT = "offline: --source FILE --model-package DIR, see the README's 'Offline and HPC use'"


@dataclass(frozen=True)
class SourceSpec:
    """What ``--source`` asked for.

    Parameters
    ----------
    kind : str
        ``gfs``, ``gfs-forecast``, ``era5`` or ``file``.
    path : Path or None
        The file, for ``kind == "file"``.
    """

    kind: str
    path: Path | None = None
    #: ``cmip6``'s (experiment, source model, variant), e.g. (ssp585, CanESM5, r1i1p2f1).
    dataset: tuple[str, str, str] | None = None

    @property
    def is_forecast(self) -> bool:
        """Whether the source has lead times."""
        return self.kind == "gfs-forecast"

    @property
    def label(self) -> str:
        """How the store's provenance names the source."""
        if self.path is not None:
            return str(self.path)
        return ":".join((self.kind, *self.dataset)) if self.dataset else self.kind


def parse_source(text: str) -> SourceSpec:
    """Turn the ``--source`` argument into a :class:`SourceSpec`.

    Raises
    ------
    UsageError
        If it is neither a known name nor an existing file or directory.
    """
    if text in SOURCE_NAMES:
        return SourceSpec(text)
    if text.startswith(f"{CMIP6_SOURCE}:"):
        return _cmip6_source(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise UsageError(
            f"--source {text!r} is neither a known source ({', '.join(SOURCE_NAMES)}, "
            f"{CMIP6_SOURCE}:EXPERIMENT:MODEL:VARIANT) nor an existing NetCDF/Zarr file: check "
            "the name or the path"
        )
    return SourceSpec("file", path)


#: ``--source cmip6:EXPERIMENT:MODEL:VARIANT``: earth2studio's CMIP6 archive (ESGF).
CMIP6_SOURCE = "cmip6"
#: The CMIP6 tables CorrDiffCMIP6's inputs come from (earth2studio's example): daily
#: atmosphere, extra daily atmosphere and daily sea ice.
CMIP6_TABLES = ("day", "Eday", "SIday")


def _cmip6_source(text: str) -> SourceSpec:
    """``cmip6:EXPERIMENT:MODEL:VARIANT``, refused in one line without ``intake-esgf``."""
    import importlib.util

    parts = text.split(":")[1:]
    if len(parts) != 3 or not all(part.strip() and part == part.strip() for part in parts):
        raise UsageError(
            f"--source {text!r}: name the CMIP6 run as cmip6:EXPERIMENT:MODEL:VARIANT, e.g. "
            "cmip6:ssp585:CanESM5:r1i1p2f1"
        )
    if importlib.util.find_spec("intake_esgf") is None:
        raise UsageError(
            f"--source {text}: earth2studio's CMIP6 source needs the optional package "
            "intake-esgf, which is not installed: pip install intake-esgf, or pass a file of "
            "the inputs (--source FILE)"
        )
    experiment, model, variant = parts
    return SourceSpec(CMIP6_SOURCE, dataset=(experiment, model, variant))


#: Dimension order earth2studio's ``DataArrayFile`` assumes: it indexes by position.
FILE_DIMS = ("time", "variable", "lat", "lon")


def check_physical(fields: dict[str, np.ndarray], where: str) -> str | None:
    """A one-line complaint about the first input outside its physical range, or None.

    The ranges are :data:`corrdiff_tools.checks.PHYSICAL_RANGES`.
    """
    for name, values in fields.items():
        why = checks.out_of_range(name, values)
        if why:
            return f"input {name} {where} {why}: convert the file to these units"
    return None


@contextlib.contextmanager
def open_file_source(path: Path) -> Iterator[xr.DataArray]:
    """Open a source file as a DataArray with dims (time, variable, lat, lon), checked.

    The dimensions are matched by name and the array is transposed to :data:`FILE_DIMS`:
    earth2studio's ``DataArrayFile`` reads by position, so a file stored as (time, lat,
    lon, variable) would otherwise be read scrambled, without an error. Its coordinates
    are made unambiguous first (see :mod:`corrdiff_tools.checks`): times become
    datetimes on the minute, variable labels plain strings, and lat/lon must be finite,
    strictly monotonic axes. A single NaN latitude, even outside the model's box, would
    make the nearest-point selection copy one row into every row of the inputs.

    Raises
    ------
    UsageError
        Naming the file and what is wrong with it.
    """
    import xarray as xr

    from corrdiff_tools.store import mask_fill_values

    try:
        if path.is_dir():
            # A chunk never written reads as the fill value (0.0 for earth2studio's
            # writer): missing, so refused as a gap, not read as calm winds.
            dataset = mask_fill_values(xr.open_zarr(path, consolidated=None), path)
            names = [str(name) for name in dataset.data_vars]
            if len(names) != 1:
                raise UsageError(
                    f"--source {path} holds {len(names)} arrays ({', '.join(names[:5])}); it must "
                    "hold one DataArray with dims (time, variable, lat, lon), as "
                    "earth2studio's datasource_to_file or --prefetch write"
                )
            array = dataset[names[0]]
        else:
            array = xr.open_dataarray(path)
    except UsageError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure is the same user problem
        raise UsageError(
            f"--source {path} could not be read as NetCDF or Zarr ({type(err).__name__}: {err}); "
            "give a file written by --prefetch or earth2studio's datasource_to_file"
        ) from None
    try:
        yield _checked_coordinates(path, array)
    finally:
        array.close()


def _checked_coordinates(path: Path, array: xr.DataArray) -> xr.DataArray:
    """``array`` in :data:`FILE_DIMS` order with normalised, verified coordinates."""
    if set(array.dims) != set(FILE_DIMS):
        raise UsageError(
            f"--source {path} has dims {tuple(array.dims)}; it needs (time, variable, lat, lon), "
            "the layout earth2studio's datasource_to_file writes"
        )
    array = array.transpose(*FILE_DIMS)
    missing = [name for name in FILE_DIMS if name not in array.coords]
    if missing:
        raise UsageError(
            f"--source {path} has no {missing[0]} coordinate: label every dimension "
            "(times, variable names, latitudes, longitudes)"
        )
    try:
        stamps = checks.normalise_times(array["time"].values)
        labels = checks.decode_labels(array["variable"].values)
    except ValueError as err:
        raise UsageError(f"--source {path}: {err}") from None
    for name in ("lat", "lon"):
        why = checks.axis_problem(name, array[name].values)
        if why:
            raise UsageError(
                f"--source {path}: {why}; every coordinate must be a finite, strictly "
                "monotonic axis: fix or drop the bad points"
            )
    if len(set(labels)) != len(labels):
        raise UsageError(f"--source {path} has a repeated variable label: keep one of each")
    extra = [name for name in array.coords if name not in FILE_DIMS]
    return array.drop_vars(extra).assign_coords(
        time=stamps, variable=np.array(labels, dtype=object)
    )


def check_file_source(
    path: Path, requested: Sequence[datetime], model: Declaration = TAIWAN
) -> list[str]:
    """Check everything ``model`` will read from a file, before anything is written.

    Every input and every requested time on the input grid, finite and physical; the
    optional ``refc`` physical too. Nothing read later can then fail (or, with
    ``--overwrite``, fail after the old store was replaced).

    Returns
    -------
    list of str
        The low-resolution variables to store (the inputs, plus ``refc`` if present).
    """
    with open_file_source(path) as array:
        return _check_file_contents(path, array, requested, model)


def _check_file_contents(
    path: Path, array: Any, requested: Sequence[datetime], model: Declaration
) -> list[str]:
    variables = [str(v) for v in array["variable"].values]
    missing = [v for v in model.inputs if v not in variables]
    if missing:
        needs = "CorrDiff needs" if model.is_taiwan else "the model package reads"
        raise UsageError(
            f"--source {path} lacks the input variable(s) {', '.join(missing)}; "
            f"{needs} {', '.join(model.inputs)}"
        )
    held = np.sort(np.asarray(array["time"].values, dtype="datetime64[ns]"))
    absent = [t for t in requested if np.datetime64(t, "ns") not in held]
    if absent:
        listed = ", ".join(checks.format_time64(t) for t in held[:6])
        more = " ..." if held.size > 6 else ""
        raise UsageError(
            f"{times_mod.format_time(absent[0])} is not in --source {path}"
            f"{f' (nor {len(absent) - 1} more)' if len(absent) > 1 else ''}: "
            f"it holds {listed}{more}"
        )
    lat = np.asarray(array["lat"].values, dtype=float)
    lon = np.asarray(array["lon"].values, dtype=float) % 360.0
    for name, grid, have in (("lat", model.input_lat, lat), ("lon", model.input_lon, lon)):
        _, apart = nearest_points(grid, have, name == "lon")
        gaps = [g for g, off in zip(grid, apart, strict=True) if off > GRID_TOLERANCE]
        if gaps:
            step = f"{abs(float(grid[1] - grid[0])):g} degree" if grid.size > 1 else "one-point"
            raise UsageError(
                f"--source {path} does not contain the model's {step} input grid "
                f"({name} {grid[0]:g} to {grid[-1]:g}; {name} {gaps[0]:g} is missing): "
                f"regrid the file onto a {step} grid covering it"
            )
    extras = [v for v in EXTRA_LOWRES_VARIABLES if v in variables and v not in model.inputs]
    for time in requested:
        when = f"at {times_mod.format_time(time)} in --source {path}"
        box = _model_box(array, model).sel(time=np.datetime64(time, "ns"))
        fields = {
            name: np.asarray(box.sel(variable=name).values, dtype="float64")
            for name in (*model.inputs, *extras)
        }
        for name in model.inputs:
            why = checks.not_finite(fields[name], blanks=name in model.blank_inputs)
            if why:
                raise UsageError(
                    f"input {name} {when} {why} on the model's input grid: fill the gaps or "
                    "pick another time"
                )
        complaint = check_physical(fields, when)
        if complaint:
            raise UsageError(complaint)
    return [*model.inputs, *extras]


def nearest_points(
    wanted: np.ndarray, have: np.ndarray, wrap: bool
) -> tuple[list[int], np.ndarray]:
    """For each wanted coordinate, the index of the nearest one in ``have``, and how far.

    With ``wrap`` (longitudes), distances go round the circle: 359.9996 is 0.0004 from 0.
    """
    apart = np.abs(np.asarray(wanted, dtype=float)[:, None] - np.asarray(have, dtype=float))
    if wrap:  # exact below 180 degrees apart: the same numbers where nothing wraps
        apart = apart % 360.0
        apart = np.minimum(apart, 360.0 - apart)
    index = apart.argmin(axis=1)
    return [int(i) for i in index], apart[np.arange(index.size), index]


def _model_box(array: xr.DataArray, model: Declaration = TAIWAN) -> xr.DataArray:
    """The model's input box of a (time, variable, lat, lon) array (36 x 40 for Taiwan).

    Selected by the nearest labels (any lat order, lon in 0..360 or -180..180) and
    labelled with the model's own lat/lon. The axes were checked finite and monotonic
    by :func:`open_file_source`, and to contain the grid by :func:`check_file_source`.
    """
    lon = np.asarray(array["lon"].values, dtype=float) % 360.0
    lat = np.asarray(array["lat"].values, dtype=float)
    lat_index, _ = nearest_points(model.input_lat, lat, wrap=False)
    lon_index, _ = nearest_points(model.input_lon, lon, wrap=True)
    return array.isel(lat=lat_index, lon=lon_index).assign_coords(
        lat=model.input_lat, lon=model.input_lon
    )


def file_identity(
    path: Path, requested: Sequence[datetime], model: Declaration = TAIWAN
) -> dict[str, Any]:
    """Resolved path and content fingerprint of what a run reads from a ``--source`` file.

    The fingerprint is a SHA-256 of the model's input box (every variable, by name, the
    requested times, float32, in (time, variable, lat, lon) order): ``--resume`` compares
    it, so new content behind the same path is refused, while the same content anywhere
    (another path, spelling, layout or variable order) is the same source. ``same_as``
    holds the digest of the file's own variable order, which earlier versions of this tool
    recorded.
    """
    import hashlib

    def fingerprint(box: Any) -> str:
        values = np.ascontiguousarray(np.asarray(box.values, dtype="float32"))
        digest = hashlib.sha256(",".join(str(v) for v in box["variable"].values).encode())
        digest.update(values.tobytes())
        return digest.hexdigest()

    with open_file_source(path) as array:
        box = _model_box(array, model).sel(time=np.array(requested, dtype="datetime64[ns]"))
        names = [str(v) for v in box["variable"].values]
        canonical = fingerprint(box.sel(variable=sorted(names)))
        legacy = fingerprint(box)
    return {"path": str(path.resolve()), "sha256": canonical, "same_as": [legacy]}


def lowres_variables(
    spec: SourceSpec, file_variables: Sequence[str] | None = None, model: Declaration = TAIWAN
) -> list[str]:
    """Low-resolution fields a run stores: the inputs, plus ``refc`` where the source has it.

    ``refc`` is shown beside radar reflectivity (``mrr``): a model without that output
    (most packages) has it neither fetched nor stored.
    """
    if spec.kind == "file":
        return list(file_variables or model.inputs)
    if spec.kind in ("gfs", "gfs-forecast") and "mrr" in model.outputs:
        extras = [v for v in EXTRA_LOWRES_VARIABLES if v not in model.inputs]
        return [*model.inputs, *extras]
    return list(model.inputs)


def build_source(
    spec: SourceSpec, times: Sequence[datetime] = (), model: Declaration = TAIWAN
) -> InputSource:
    """Construct the earth2studio data source for ``spec``.

    For a file, earth2studio's ``DataArrayFile`` is used, but only the requested times on
    ``model``'s input box are read, into memory, and the file is closed at once. A
    long-lived handle is fragile: netCDF-C shares one HDF5 file among all handles to a
    path, and closing any of them (garbage collection, xarray's file cache) can break
    reads through the others ("NetCDF: HDF error").
    """
    # Each source from its own module: earth2studio.data's __init__ imports every source
    # it has (6.4 s of start-up on 2 cores; see corrdiff_tools.imports).
    from corrdiff_tools.imports import import_alone

    # verbose=False: earth2studio's own progress bars ignore -q, TQDM_DISABLE and a
    # stderr that is not a terminal, and an unfinished one swallows our error line.
    if spec.kind in ("gfs", "gfs-forecast"):
        gfs = import_alone("earth2studio.data.gfs")
        made = gfs.GFS(verbose=False) if spec.kind == "gfs" else gfs.GFS_FX(verbose=False)
        note_cache_origin(Path(made.cache))
        return made
    if spec.kind == "era5":
        return import_alone("earth2studio.data.arco").ARCO(verbose=False)
    if spec.kind == CMIP6_SOURCE:
        return _cmip6_archive(spec)
    assert spec.path is not None  # noqa: S101 - guaranteed by parse_source
    source = import_alone("earth2studio.data.xr").DataArrayFile(str(spec.path))
    source.da.close()
    # By name, then in earth2studio's positional order, with the coordinates checked and
    # normalised as validation saw them (see open_file_source).
    with open_file_source(spec.path) as array:
        window = _model_box(array, model)
        if times:
            window = window.sel(time=np.array(times, dtype="datetime64[ns]"))
        source.da = window.load()
    return source


def _cmip6_archive(spec: SourceSpec) -> InputSource:
    """earth2studio's ``CMIP6MultiRealm`` over :data:`CMIP6_TABLES` of one CMIP6 run.

    As earth2studio's CorrDiffCMIP6 example builds it, with exact time matching: a daily
    field is taken at the time asked for, or the fetch fails (no nearest day instead).
    Each table's catalogue is searched when it is built (the network, from here on).
    """
    from corrdiff_tools.imports import import_alone

    assert spec.dataset is not None  # noqa: S101 - guaranteed by parse_source
    experiment, model, variant = spec.dataset
    archive = import_alone("earth2studio.data.cmip6")
    try:
        tables = [
            archive.CMIP6(
                experiment_id=experiment,
                source_id=model,
                table_id=table,
                variant_label=variant,
                exact_time_match=True,
                verbose=False,
            )
            for table in CMIP6_TABLES
        ]
        return archive.CMIP6MultiRealm(tables)  # type: ignore[no-any-return]
    except Exception as err:  # noqa: BLE001 - intake-esgf raises many types
        from corrdiff_tools import network

        raise RunError(
            f"--source {spec.label}: the CMIP6 archive has no such run, or could not be "
            f"searched ({network.summarise(err)}); check the experiment, model and variant "
            f"at https://aims2.llnl.gov/search, or {OFFLINE_HINT}"
        ) from err


#: The file in earth2studio's GFS cache that lists the servers its files came from.
ORIGINS_FILE = ".corrdiff-tools-origins.json"


def note_cache_origin(cache: Path) -> None:
    """Record which server fills the GFS cache, and warn when it holds more than one's.

    earth2studio keys its GFS cache by object path and byte offset, not by server: a
    file cached from a site mirror is reused when the run switches to another mirror or
    to NOAA. Nothing says so; this does. The server is the one obstore will use (see
    :func:`corrdiff_tools.network.endpoint_from_environment`).
    """
    import json

    from corrdiff_tools import network

    found = network.endpoint_from_environment(network.S3_ENDPOINT_VARIABLES)
    origin = f"{found[0]}:{found[1]}" if found else "NOAA (s3.us-east-1.amazonaws.com)"
    record = cache / ORIGINS_FILE
    try:
        origins = json.loads(record.read_text())
        origins = [str(o) for o in origins] if isinstance(origins, list) else []
    except (OSError, ValueError):
        origins = []
    cached = cache.is_dir() and any(p.name != ORIGINS_FILE for p in cache.iterdir())
    if not cached:
        origins = []
    if origin not in origins:
        origins.append(origin)
        with contextlib.suppress(OSError):  # a read-only cache: the warning still stands
            cache.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps(origins))
    if len(origins) > 1:
        logger.warning(
            "the GFS cache %s holds files from %s: earth2studio reuses a cached file whatever "
            "server it came from; delete the folder if one of them served bad data",
            cache,
            " and ".join(origins),
        )


def cache_hint(source: Any) -> str:
    """What to delete when a source's cached download is corrupt (its own cache directory)."""
    try:
        directory = str(source.cache)  # earth2studio sources expose their cache location
    except Exception:  # noqa: BLE001 - a source without one: name the root instead
        directory = "$EARTH2STUDIO_CACHE (default ~/.cache/earth2studio)"
    # Not "rerun with --resume" alone: a --prefetch refuses --resume (it writes no store).
    return f"delete {directory} and run again (a run with --resume keeps what it has done)"


#: Sources that have delivered in this process (see fetch_fields' retries).
_REACHED: weakref.WeakSet[Any] = weakref.WeakSet()


def _reached(source: object) -> bool:
    try:
        return source in _REACHED
    except TypeError:  # no weak reference: assume it has delivered, and retry
        return True


#: Seconds without an answer before a remote fetch says it is still waiting (earth2studio
#: gives up on a stalled GFS transfer only after 120 s).
PATIENCE = 30.0


@contextlib.contextmanager
def _patience(what: str, spec: SourceSpec) -> Iterator[None]:
    """Say so when a remote fetch has been waiting :data:`PATIENCE` seconds, then go on."""
    if spec.kind == "file":
        yield
        return
    import threading

    timer = threading.Timer(
        PATIENCE,
        lambda: logger.warning(
            "still waiting for %s from %s after %g s (a slow or stalled transfer; it is "
            "retried or reported when the source gives up; Ctrl-C stops, completed samples "
            "are kept)",
            what,
            spec.label,
            PATIENCE,
        ),
    )
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


#: Seconds to wait for cancelled downloads to unwind.
SETTLE_TIMEOUT = 10.0


def _fsspec_loop() -> Any:
    """The IO event loop of fsspec, if it has been started and runs, else None."""
    try:
        import fsspec.asyn
    except ImportError:  # pragma: no cover - earth2studio depends on fsspec
        return None
    loop = fsspec.asyn.loop[0]
    return loop if loop is not None and loop.is_running() else None


def download_tasks() -> set[Any]:
    """The tasks on fsspec's IO loop now (see :func:`settle_downloads`)."""
    import asyncio

    loop = _fsspec_loop()
    if loop is None:
        return set()

    async def tasks() -> set[Any]:
        return set(asyncio.all_tasks())

    try:
        return asyncio.run_coroutine_threadsafe(tasks(), loop).result(SETTLE_TIMEOUT)
    except Exception:  # noqa: BLE001 - best effort: none known, none kept
        return set()


def settle_downloads(keep: set[Any] | None = None) -> None:
    """Cancel what a failed earth2studio fetch left running on fsspec's IO loop.

    earth2studio runs its GFS downloads on fsspec's event loop and gathers them with a
    progress-bar gather that raises at the first failure, leaving the others running:
    they go on hitting the server during our retry waits, and at exit the interpreter can
    crash tearing them down (SIGSEGV after the error line, seen through obstore). The
    tasks that were there before the fetch (``keep``, from :func:`download_tasks`) are not
    ours and are left alone; ``keep=None`` cancels every task (a test's clean-up).
    """
    import asyncio

    loop = _fsspec_loop()
    if loop is None:
        return
    kept = keep or set()

    async def cancel_ours() -> None:
        current = asyncio.current_task()
        ours = [t for t in asyncio.all_tasks() if t is not current and t not in kept]
        for task in ours:
            task.cancel()
        await asyncio.gather(*ours, return_exceptions=True)

    try:
        asyncio.run_coroutine_threadsafe(cancel_ours(), loop).result(SETTLE_TIMEOUT)
    except Exception as err:  # noqa: BLE001 - best effort: the fetch error is what matters
        logger.debug("could not stop the leftover downloads: %s", err)


def fetch_fields(
    source: InputSource,
    spec: SourceSpec,
    time: datetime,
    lead_hours: int,
    variables: Sequence[str],
    model: Declaration = TAIWAN,
) -> dict[str, np.ndarray]:
    """Fetch ``variables`` at one time (and lead) on ``model``'s input grid (Taiwan: 36 x 40).

    Returns
    -------
    dict
        Variable name -> float32 array on the model's input grid (36 x 40 for Taiwan).

    Raises
    ------
    RunError
        If the source cannot be reached, or an input variable is NaN or infinite.
    """
    from earth2studio.utils.coords import map_coords

    from corrdiff_tools.imports import import_alone

    fetch_data = import_alone("earth2studio.data.utils").fetch_data

    from corrdiff_tools import network

    when = times_mod.format_time(time) + (f" +{lead_hours} h" if spec.is_forecast else "")
    what = f"{', '.join(variables)} at {when}"
    delays = () if spec.kind == "file" else RETRY_DELAYS
    if spec.kind != "file":
        logger.debug("fetching %s from %s", what, spec.label)
    for attempt in range(len(delays) + 1):
        before = download_tasks() if spec.kind != "file" else set()
        try:
            with _patience(what, spec):
                x, coords = fetch_data(
                    source,
                    time=np.array([np.datetime64(time, "ns")]),
                    variable=np.array(list(variables)),
                    lead_time=np.array([np.timedelta64(lead_hours, "h")]),
                    device="cpu",
                )
            x, coords = map_coords(
                x,
                coords,
                {
                    "variable": np.array(list(variables)),
                    **_source_labels(coords, model, spec, when),
                },
            )
            with contextlib.suppress(TypeError):  # a source that takes no weak reference
                _REACHED.add(source)
            break
        except RunError:  # the source's grid lacks the model's (_source_labels): said
            raise
        except Exception as err:  # noqa: BLE001 - earth2studio sources raise many types
            if spec.kind == "file":
                raise RunError(
                    f"could not read {what} from {spec.label} ({network.summarise(err)})"
                ) from err
            settle_downloads(keep=before)
            missing = network.missing_reason(err)
            if missing is not None:  # permanent: no retry, and no cache to blame
                raise RunError(
                    f"{spec.label} has no data for {when} ({missing}): pick another time, or "
                    "another --source"
                ) from err
            if network.stalled(err):  # earth2studio waited 120 s: another try would too
                raise RunError(
                    f"fetching the inputs at {when} from {spec.label} timed out: the host "
                    "answered, then sent nothing for minutes; try again later (--resume "
                    f"keeps what is done), or use a mirror or a local file ({OFFLINE_HINT})"
                ) from err
            unreachable = network.unreachable_reason(err)
            transient = network.transient_reason(err)
            # A host never reached in this run will not come back in 20 s: retrying only
            # adds silence. Once it has delivered, a loss is retried (a network hiccup),
            # and so is a transfer that broke off; a file that does not decode is not.
            retry = transient is not None and (unreachable is None or _reached(source))
            if attempt < len(delays) and retry:
                logger.warning(
                    "fetching the inputs at %s failed (%s); retrying in %g s",
                    when,
                    transient,
                    delays[attempt],
                )
                time_mod.sleep(delays[attempt])
                continue
            tries = f" after {attempt + 1} tries" if attempt else ""
            if unreachable is not None:
                raise RunError(
                    f"could not reach {spec.label} for the inputs at {when}{tries} "
                    f"({unreachable}); {OFFLINE_HINT}"
                ) from err
            raise RunError(
                f"could not fetch the inputs at {when} from {spec.label}{tries} "
                f"({network.summarise(err)}); if a cached download is corrupt, "
                f"{cache_hint(source)}"
            ) from err
    grid = (model.input_lat.size, model.input_lon.size)
    values = x.cpu().numpy().reshape(len(variables), *grid).astype("float32")
    return {name: values[i] for i, name in enumerate(variables)}


def _source_labels(
    coords: Mapping[str, Any], model: Declaration, spec: SourceSpec, when: str
) -> dict[str, np.ndarray]:
    """The source's own lat/lon labels of the model's input grid, for ``map_coords``.

    earth2studio's ``map_coords`` takes the nearest label, however far, and without
    going round the globe: a package west of Greenwich read from GFS (longitudes 0..360)
    would get the column at 0 for every point. So each point is matched here, modulo 360
    and within :data:`GRID_TOLERANCE`, or refused. Taiwan's grid is asked for as it
    always was (its points are the sources' own labels).
    """
    if model.is_taiwan:
        return {"lat": model.input_lat, "lon": model.input_lon}
    labels = {}
    for axis, wanted in (("lat", model.input_lat), ("lon", model.input_lon)):
        have = np.asarray(coords[axis], dtype=float)
        index, apart = nearest_points(wanted, have, wrap=axis == "lon")
        if (apart > GRID_TOLERANCE).any():
            first = int(np.flatnonzero(apart > GRID_TOLERANCE)[0])
            raise RunError(
                f"{spec.label} has no {axis} {wanted[first]:g} at {when} (nearest "
                f"{have[index[first]]:g}): the model's input grid is not on its grid; use a "
                "file on the model's input grid (--source FILE)"
            )
        labels[axis] = have[index]
    return labels


def fetch_inputs(
    source: InputSource,
    spec: SourceSpec,
    time: datetime,
    lead_hours: int,
    extras: Sequence[str] = (),
    model: Declaration = TAIWAN,
) -> dict[str, np.ndarray]:
    """Fetch the model's inputs (checked finite and physical) and any extra fields.

    Extra fields (``refc``) are best effort: a failure, or values outside their physical
    range (linear reflectivity instead of dBZ would blank every reflectivity colour
    scale), only log a warning and the field is left out; missing values are kept as NaN.

    A model that reads its inputs at several times (``model.input_leads``, CorrDiffCMIP6's
    days around ``time``) gets each input as (input lead, lat, lon), read at those times
    (its ``lead_hours`` are output lead times, which change no input); extra fields are
    read at ``time``.
    """
    if model.multi_lead:
        read = [
            fetch_fields(source, spec, time + timedelta(hours=hours), 0, model.inputs, model)
            for hours in model.input_leads
        ]
        fields = {name: np.stack([one[name] for one in read]) for name in model.inputs}
        lead_hours = 0
    else:
        fields = fetch_fields(source, spec, time, lead_hours, model.inputs, model)
    for name, values in fields.items():
        wrong = ~np.isfinite(values)
        if name in model.blank_inputs:  # blanks the model reads as 0: only infinities
            wrong &= ~np.isnan(values)
        bad = int(np.count_nonzero(wrong))
        if bad:
            raise RunError(
                f"input {name} at {times_mod.format_time(time)} from {spec.label} has {bad} "
                f"NaN/inf values of {values.size} (the source lacks this field for this time): "
                "pick another time or source"
            )
    complaint = check_physical(fields, f"at {times_mod.format_time(time)} from {spec.label}")
    if complaint:
        raise RunError(complaint)
    for name in extras:
        try:
            extra = fetch_fields(source, spec, time, lead_hours, [name], model)[name]
        except RunError as err:
            logger.warning("%s is not available, plots will lack it: %s", name, err)
            continue
        wrong = checks.out_of_range(name, extra)
        if wrong:
            logger.warning(
                "%s at %s from %s %s: left out, plots will lack it",
                name,
                times_mod.format_time(time),
                spec.label,
                wrong,
            )
            continue
        if not np.isfinite(extra).all():
            logger.warning("%s at %s has missing values", name, times_mod.format_time(time))
        fields[name] = extra
    return fields


def input_dataarray(
    data: np.ndarray,
    times: Sequence[datetime],
    variables: Sequence[str],
    lat: np.ndarray,
    lon: np.ndarray,
) -> xr.DataArray:
    """Wrap fields as the DataArray ``--source PATH`` reads: dims (time, variable, lat, lon).

    The same layout earth2studio's ``datasource_to_file`` writes and ``DataArrayFile`` reads.
    """
    import xarray as xr

    return xr.DataArray(
        data,
        dims=("time", "variable", "lat", "lon"),
        coords={
            "time": np.array(times, dtype="datetime64[ns]"),
            "variable": np.array(variables, dtype=object),
            "lat": lat,
            "lon": lon,
        },
        name="fields",
    )


def write_input_file(
    path: Path,
    times: Sequence[datetime],
    fields: Sequence[dict[str, np.ndarray]],
    model: Declaration = TAIWAN,
) -> None:
    """Write fetched inputs as a DataArray (time, variable, lat, lon) for ``--source PATH``.

    The file is on ``model``'s input grid, as fetched; NetCDF for a ``.nc`` name, else Zarr.
    """
    variables = list(fields[0])
    stacked = np.stack([np.stack([f[v] for v in variables]) for f in fields])
    array = input_dataarray(stacked, times, variables, model.input_lat, model.input_lon)
    tmp = path.with_name(f".{path.name}.partial")
    if path.suffix == ".nc":
        array.to_netcdf(tmp)
    else:
        array.to_zarr(tmp, mode="w", consolidated=False, zarr_format=2)
    tmp.rename(path)
