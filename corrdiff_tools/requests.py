"""What the user asked for, validated: typed requests for both tools.

The command line is parsed in :mod:`corrdiff_tools.cli`; here its namespace is checked,
option by option, and turned into a :class:`RunRequest`, :class:`BenchmarkRequest` or
:class:`PlotRequest`. After this point nothing reads argparse: the workflows
(:mod:`~corrdiff_tools.run_workflow`, :mod:`~corrdiff_tools.plot_workflow`) take a
request. Every check happens before anything is fetched, loaded or written, and every
failure is a :class:`~corrdiff_tools.errors.UsageError` whose one line names the option,
the value and the fix.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corrdiff_tools import times as times_mod
from corrdiff_tools.errors import UsageError
from corrdiff_tools.models.packages import PACKAGING_HINT
from corrdiff_tools.sampling import SamplerSettings

if TYPE_CHECKING:
    import numpy as np
    import xarray as xr

    from corrdiff_tools.models.declaration import Declaration
    from corrdiff_tools.sources import SourceSpec
    from corrdiff_tools.store import StoreLayout

logger = logging.getLogger(__name__)

#: Frame rates a GIF can hold (see the --fps check).
MIN_FPS, MAX_FPS = 0.002, 50.0

#: A progress display: called with the number of steps, gives a context whose value is
#: called with the steps done since the last call (tqdm's ``update``).
ProgressFactory = Callable[[int], AbstractContextManager[Callable[[int], object]]]


# --------------------------------------------------------------------------- run tool


def _taiwan() -> Declaration:
    from corrdiff_tools.store import TAIWAN

    return TAIWAN


@dataclass(frozen=True)
class RunRequest:
    """Everything ``run_corrdiff.py`` was asked to do, validated."""

    #: Valid (analysis) or initialisation (forecast) times, UTC.
    times: list[datetime]
    #: Forecast lead times in hours, or None for analyses.
    lead_times: list[int] | None
    source: SourceSpec
    #: How ``--resume`` recognises the source: its label, or a file's path and content.
    source_identity: str | dict[str, Any]
    #: Low-resolution fields to store: the inputs, plus ``refc`` where the source has it.
    lowres_variables: list[str]
    output: Path
    samples: int
    seed: int
    sampler: SamplerSettings
    #: ``--model-package`` as typed, and what identifies its content.
    model_package: str
    package_identity: dict[str, Any]
    #: ``--stats`` exceedance thresholds, or None without ``--stats``.
    statistics: dict[str, float] | None
    overwrite: bool
    resume: bool
    batch_size: int | None
    device: str
    compile: bool
    #: ``--prefetch FILE``: download the inputs into FILE and stop.
    prefetch: Path | None
    #: The command line, for the store's history.
    command: tuple[str, ...]
    #: ``--precision``: auto, fp32, fp16 or bf16 (resolved against the device at run time).
    precision: str = "auto"
    #: ``--model``: CorrDiff Taiwan, or a generic package's declaration (read from its files).
    model: Declaration = field(default_factory=_taiwan)
    #: A package's own sampler settings, as its ``metadata.json`` was read here (the
    #: options change them): earth2studio must have read the same when it loads it.
    package_sampler: SamplerSettings | None = None

    @property
    def is_taiwan(self) -> bool:
        """Whether this run is CorrDiff Taiwan's (the default ``--model``)."""
        return self.model.name == "taiwan"

    @property
    def geometry(self) -> str:
        """Where the outputs lie, as the store records it."""
        from corrdiff_tools.downscale import GEOMETRY

        if self.is_taiwan:
            return GEOMETRY
        rows, columns = self.model.output_shape
        return f"the package's output grid, {rows}x{columns}, as output_latlon_grid.nc lists it"

    def resume_settings(self) -> dict[str, object]:
        """The settings a ``--resume`` must match, as the store records them (JSON)."""
        from corrdiff_tools.store import CONTENT_SETTINGS, stored_identity

        return {
            key: stored_identity(value) if key in CONTENT_SETTINGS else value
            for key, value in self.comparable_settings().items()
        }

    def layout(self, lat: np.ndarray, lon: np.ndarray) -> StoreLayout:
        """The store this run writes, on the output grid ``lat``/``lon``."""
        from corrdiff_tools.store import StoreLayout

        return StoreLayout(
            times=self.times,
            samples=self.samples,
            lat=lat,
            lon=lon,
            lead_times=self.lead_times,
            lowres_variables=self.lowres_variables,
            statistics=self.statistics,
            model=self.model,
        )

    def comparable_settings(self) -> dict[str, object]:
        """What a store's settings are matched against: :meth:`resume_settings` and more.

        Each identity keeps its ``same_as``: a digest earlier versions recorded for the same
        content matches too.
        """
        settings: dict[str, object] = {
            "times": [times_mod.format_time(t) for t in self.times],
            "lead_times": self.lead_times,
            "samples": self.samples,
            "seed": self.seed,
            "sampler": self.sampler.to_json(),
            "geometry": self.geometry,
            "source": self.source_identity,
            "model_package": self.package_identity,
            "stats": self.statistics,
        }
        if not self.is_taiwan:  # Taiwan's settings stay as its stores have always held them
            settings["model"] = self.model.to_json()
        return settings


@dataclass(frozen=True)
class BenchmarkRequest:
    """``run_corrdiff.py --benchmark``: time a model on synthetic inputs, write nothing."""

    size: str
    samples: int
    batch_size: int | None
    sampler: SamplerSettings
    compile: bool
    seed: int
    device: str
    peak_tflops: float | None
    precision: str = "auto"
    #: ``--model``: Taiwan's declaration (its published architecture, random weights), or
    #: a package model's, whose folder (made local) is ``model_package``.
    model: Declaration = field(default_factory=_taiwan)
    model_package: str = ""
    #: The package as the user gave it, for messages and the table.
    shown: str = ""
    #: The sampler the run tool read from a package's ``metadata.json``.
    package_sampler: SamplerSettings | None = None


def sampler_settings(
    args: argparse.Namespace, base: SamplerSettings | None = None
) -> SamplerSettings:
    """The :class:`~corrdiff_tools.sampling.SamplerSettings` the options ask for.

    ``base``: a model package's own settings, which the options change (see
    :func:`corrdiff_tools.sampling.resolve`); Taiwan's start from a preset.

    Raises
    ------
    UsageError
        On conflicting options or values out of range.
    """
    from corrdiff_tools import sampling

    overrides = {name: getattr(args, name) for name in sampling.OPTION_FIELDS}
    try:
        return sampling.resolve(args.preset, args.sampler, overrides, base)
    except ValueError as err:
        raise UsageError(str(err)) from None


def validate_run(args: argparse.Namespace, command: Sequence[str]) -> RunRequest:
    """Check every argument of a run before anything is fetched, loaded or written.

    Except a generic package's files: a zip is extracted, an address fetched, to read
    what the model declares (its variables and grids), which the source is checked
    against; the arguments that need no package are checked before.
    """
    from corrdiff_tools import model, sources, store

    if not args.times:
        raise UsageError(
            "no TIME given: name at least one, e.g. run_corrdiff.py 2024-07-24T12:00, "
            "or pass --benchmark to time the model without data"
        )
    times = times_mod.parse_times(args.times)
    for flag, value in (
        ("--source", None if args.source in sources.SOURCE_NAMES else args.source),
        (
            "--model",
            None if args.model == TAIWAN_MODEL or model.is_remote(args.model) else args.model,
        ),
        ("--model-package", None if model.is_remote(args.model_package) else args.model_package),
        ("--output", args.output),
        ("--prefetch", args.prefetch),
    ):
        if value is not None:
            check_lookup(Path(value), flag)
    source = sources.parse_source(args.source)
    lead_times = _lead_times(args, source, times)
    if args.threshold and not args.stats:
        raise UsageError(
            f"--threshold {args.threshold[0]} only applies with --stats: add --stats, or "
            "set thresholds when plotting (plot_corrdiff.py --stats --threshold ...)"
        )
    if args.prefetch is not None:  # it writes the inputs file and stops: no store
        for flag, given in (
            ("--output", args.output is not None),
            ("--resume", args.resume),
            ("--overwrite", args.overwrite),
            ("--stats", args.stats),
        ):
            if given:
                raise UsageError(
                    f"--prefetch only downloads (inputs to {args.prefetch}, the model to the "
                    f"cache) and writes no store, so {flag} does not apply: drop it, and "
                    "pass it to the run that reads the file"
                )
    # A zipped package is extracted, a remote one fetched, here (once): its files declare
    # what the source is checked against. Everything that needs no package is checked first.
    declared, folder = _declared_model(args)
    file_variables = _check_source_times(source, times, declared)
    if folder is None:
        model.check_package_spec(args.model_package)
        package_spec = args.model_package
        identity = model.package_identity(args.model_package)
    else:
        from corrdiff_tools.models.declaration import package_files

        package_spec = str(folder)
        # By content (--resume accepts the same package from anywhere); the path is
        # what was given, a zip or an address too.
        identity = model.folder_identity(folder, package_files(folder))
        location = package_location(args)
        remote = model.is_remote(location)
        given = location if remote else Path(location).expanduser().resolve()
        if str(given) != str(folder):
            identity["path"] = str(given)  # the zip or the address, not the cache folder
    statistics = parse_thresholds(args.threshold, declared.outputs) if args.stats else None
    # A package's own sampler, with what the options change (a --preset replaces it).
    own = None
    if declared.name != TAIWAN_MODEL:
        own = _package_sampler(package_spec, declared, _model_shown(args))
    sampler = sampler_settings(args, own)
    named = CMIP6_MODEL if declared.name == CMIP6_MODEL else ""
    output = args.output or store.default_output(times, source.is_forecast, named)
    if output.is_symlink():
        # --overwrite and --resume act on the store itself, not on the link to it.
        output = output.resolve()
    request = RunRequest(
        times=times,
        lead_times=lead_times,
        source=source,
        # By resolved path and content, not by spelling (see sources.file_identity).
        source_identity=(
            sources.file_identity(source.path, declared.input_times(times), declared)
            if source.path is not None
            else source.label
        ),
        lowres_variables=sources.lowres_variables(source, file_variables, declared),
        output=output,
        samples=args.samples,
        seed=args.seed,
        sampler=sampler,
        model_package=package_spec,
        package_identity=identity,
        statistics=statistics,
        overwrite=args.overwrite,
        resume=args.resume,
        batch_size=args.batch_size,
        device=args.device,
        compile=args.compile,
        prefetch=args.prefetch,
        command=tuple(command),
        precision=args.precision,
        model=declared,
        package_sampler=own,
    )
    if request.prefetch is not None:
        _check_prefetch(request, args.source)
    else:
        _check_output(request)
    return request


#: ``--model``'s default: CorrDiff Taiwan (``--model-package`` says where its weights are).
TAIWAN_MODEL = "taiwan"
#: ``--model cmip6``: CorrDiffCMIP6 (``--model-package`` says where, default Hugging Face).
CMIP6_MODEL = "cmip6"


def package_location(args: argparse.Namespace) -> str:
    """Where a package model's files are, as given.

    ``--model``'s path or address; for ``--model cmip6``, its ``--model-package``
    (default: the published package).
    """
    from corrdiff_tools.model import DEFAULT_PACKAGE
    from corrdiff_tools.models import cmip6

    if args.model != CMIP6_MODEL:
        return str(args.model)
    given = args.model_package != DEFAULT_PACKAGE
    return str(args.model_package) if given else cmip6.DEFAULT_PACKAGE


def _lead_times(
    args: argparse.Namespace, source: SourceSpec, times: Sequence[datetime]
) -> list[int] | None:
    """``--lead-time``: a forecast's hours, CorrDiffCMIP6's around its time, or None.

    Given space-separated (``--lead-time 0 6``) or, as the plot tool takes them,
    comma-separated (``--lead-time=0,6``); an empty item is refused as not an hour.
    """
    typed = None
    if args.lead_time is not None:
        typed = [item for given in args.lead_time for item in given.split(",")]
    if args.model == CMIP6_MODEL:
        from corrdiff_tools.models import cmip6

        if source.is_forecast:
            raise UsageError(
                f"--source {args.source}: --model cmip6 reads daily climate-model fields at "
                f"{', '.join(f'{h:+d}' if h else '0' for h in cmip6.INPUT_LEADS)} h around each "
                "time, not a "
                "forecast; give a file of them (--source FILE)"
            )
        cmip6.check_times(times)
        if source.kind == "cmip6":
            cmip6.check_archive_days(times, source.label)
        given = typed or [str(cmip6.OUTPUT_LEADS[0])]
        return times_mod.parse_window_leads(given, cmip6.OUTPUT_LEADS, "CorrDiffCMIP6")
    if typed is not None and not source.is_forecast:
        raise UsageError(
            f"--lead-time needs --source gfs-forecast (got --source {args.source}); "
            "analyses have no lead time"
        )
    return times_mod.parse_lead_times(typed or ["0"]) if source.is_forecast else None


def _declared_model(args: argparse.Namespace) -> tuple[Declaration, Path | None]:
    """``--model``: Taiwan's declaration, or a generic package's, read from its files.

    With the package's local folder (None for Taiwan): the one given, or where a zip was
    extracted or an address fetched to (see :mod:`corrdiff_tools.models.packages`).

    Options that only apply to Taiwan (or that this version does not yet carry to other
    models) are refused here, each in one line.
    """
    from corrdiff_tools import model, store
    from corrdiff_tools.model import DEFAULT_PACKAGE
    from corrdiff_tools.models import cmip6
    from corrdiff_tools.models.declaration import from_package, missing_files
    from corrdiff_tools.models.packages import local_package

    if args.model == TAIWAN_MODEL:
        return store.TAIWAN, None
    family = args.model == CMIP6_MODEL
    spec = package_location(args)
    if family:
        given = args.model_package != DEFAULT_PACKAGE
        shown = f"--model cmip6 --model-package {spec}" if given else "--model cmip6"
        kind = "CorrDiffCMIP6 package"
    else:
        shown, kind = f"--model {spec}", "generic CorrDiff package"
    local = None if model.is_remote(spec) else Path(spec).expanduser()
    if local is not None and not local.exists():
        raise UsageError(
            f"{shown} does not exist: give {TAIWAN_MODEL}, {CMIP6_MODEL}, or the folder, zip "
            f"or address of a {kind} ({PACKAGING_HINT})"
        )
    if local is not None and local.is_file() and local.suffix.lower() != ".zip":
        raise UsageError(
            f"{shown} is a file but not a zip: give the folder, zip or address of a {kind} "
            f"({PACKAGING_HINT})"
        )
    if args.model_package != DEFAULT_PACKAGE and not family:
        raise UsageError(
            f"--model-package is for CorrDiff Taiwan (--model {TAIWAN_MODEL}) and "
            f"CorrDiffCMIP6 (--model {CMIP6_MODEL}), not {shown}: drop it"
        )
    # The options first; then a zip is extracted, or an address fetched, once (see
    # corrdiff_tools.models.packages).
    folder = local_package(spec, shown)
    if family and not given:  # the default address: name it, the user never typed it
        shown = f"{shown} ({spec})"
    missing = missing_files(folder)
    if missing:
        raise UsageError(
            f"{shown} is not a {kind}: it lacks {', '.join(missing)} ({PACKAGING_HINT})"
        )
    # Absolute: the loader, torchrun's ranks and --resume read it from anywhere.
    folder = folder.resolve()
    if not family and cmip6.is_cmip6_package(folder):
        raise UsageError(
            f"{shown} is a CorrDiffCMIP6 package (its stats.json has the time features "
            f"{'/'.join(cmip6.TIME_FEATURES)}): run it with --model cmip6 --model-package {spec}"
        )
    return (cmip6.declare if family else from_package)(folder, shown), folder


def _model_shown(args: argparse.Namespace) -> str:
    """The package model as the user named it, for messages (never the cache folder)."""
    if args.model == CMIP6_MODEL and package_location(args) != _cmip6_default():
        return f"--model {CMIP6_MODEL} --model-package {args.model_package}"
    return f"--model {args.model}"


def _cmip6_default() -> str:
    from corrdiff_tools.models import cmip6

    return cmip6.DEFAULT_PACKAGE


def _package_sampler(spec: str, declared: Declaration, shown: str) -> SamplerSettings:
    """The sampler settings a generic package's ``metadata.json`` asks for."""
    import json

    from corrdiff_tools import sampling
    from corrdiff_tools.models import cmip6
    from corrdiff_tools.models.declaration import metadata_settings

    sigmas = cmip6.SIGMAS if declared.name == cmip6.NAME else None
    try:
        metadata = json.loads((Path(spec).expanduser() / "metadata.json").read_text())
        settings = metadata_settings(metadata, sigmas)
        # Its own values are checked as the options are (they are named by option).
        sampling.check(settings)
    except (OSError, ValueError, TypeError) as err:
        why = str(err).removeprefix("metadata.json: ")
        raise UsageError(f"{shown}: its metadata.json: {why}") from None
    return settings


#: The earth2studio lexicon (module, class) that says which variables a named source has.
LEXICONS = {
    "gfs": ("earth2studio.lexicon.gfs", "GFSLexicon"),
    "gfs-forecast": ("earth2studio.lexicon.gfs", "GFSLexicon"),
    "era5": ("earth2studio.lexicon.arco", "ARCO_ERA5Lexicon"),
    "cmip6": ("earth2studio.lexicon.cmip6", "CMIP6Lexicon"),
}


def _check_source_variables(source: SourceSpec, declared: Declaration) -> None:
    """Refuse a named source that lacks some of a package's inputs, naming them.

    Taiwan's inputs are in every named source (tested); a package's may not be, and
    earth2studio would only say so when the first fetch fails.
    """
    from corrdiff_tools.imports import import_alone

    module, name = LEXICONS[source.kind]
    vocabulary = getattr(import_alone(module), name).VOCAB
    missing = [v for v in declared.inputs if v not in vocabulary]
    if missing:
        raise UsageError(
            f"--source {source.kind} has no {', '.join(missing)} (earth2studio's {name}), "
            f"which the model package reads: use a file holding them (--source FILE)"
        )
    import numpy as np

    from corrdiff_tools.sources import GRID_TOLERANCE

    if source.kind == "cmip6":  # each CMIP6 model has its grid: checked at the first fetch
        return
    # GFS and ERA5 (ARCO) are global 0.25-degree grids: the package's points must be theirs.
    for axis, points in (("lat", declared.input_lat), ("lon", declared.input_lon)):
        nearest = (
            np.clip(np.round(points * 4.0) / 4.0, -90.0, 90.0)
            if axis == "lat"
            else (np.round(points * 4.0) / 4.0)
        )
        off = np.abs(points - nearest) > GRID_TOLERANCE
        if off.any():
            first = int(np.flatnonzero(off)[0])
            raise UsageError(
                f"--source {source.kind}: its 0.25 degree grid has no {axis} "
                f"{points[first]:g} (nearest {nearest[first]:g}), a point of the model "
                "package's input grid: use a file on that grid (--source FILE)"
            )


def _check_source_times(
    source: SourceSpec, times: Sequence[datetime], declared: Declaration
) -> list[str] | None:
    """Each time exists at the source; for a file, the variables it holds."""
    from corrdiff_tools import sources

    if source.kind == sources.CMIP6_SOURCE and declared.name == TAIWAN_MODEL:
        raise UsageError(
            f"--source {source.label}: CorrDiff Taiwan reads GFS-like fields, not a CMIP6 run; "
            "pass --model cmip6 (or a package that reads CMIP6 variables)"
        )
    if declared.name != TAIWAN_MODEL and source.kind in LEXICONS:
        _check_source_variables(source, declared)
    times = declared.input_times(times)  # CorrDiffCMIP6 reads the days around each time
    if source.kind in ("gfs", "gfs-forecast"):
        for time in times:
            times_mod.check_gfs_time(time)
    elif source.kind == "era5":
        for time in times:
            times_mod.check_era5_time(time)
    elif source.path is not None:
        return sources.check_file_source(source.path, times, declared)
    return None


def _check_prefetch(request: RunRequest, typed_source: str) -> None:
    assert request.prefetch is not None  # noqa: S101 - the caller checks
    from corrdiff_tools import sources

    if request.source.kind not in ("gfs", "era5", sources.CMIP6_SOURCE):
        raise UsageError(
            f"--prefetch downloads from --source gfs, era5 or cmip6:..., not {typed_source}: "
            "forecasts and files cannot be prefetched into an analysis file"
        )
    if request.prefetch.exists():
        raise UsageError(
            f"--prefetch {request.prefetch} already exists: remove it or pick another name"
        )
    check_writable_location(request.prefetch, "--prefetch", (f".{request.prefetch.name}.partial",))


def _check_output(request: RunRequest) -> None:
    """``--output`` may be created, replaced (--overwrite) or completed (--resume)."""
    from corrdiff_tools import store

    check_writable_location(request.output, "--output", store.sibling_names(request.output.name))
    store.check_target(
        request.output, request.overwrite, request.resume, request.comparable_settings()
    )
    if request.resume and request.output.exists():
        import numpy as np

        if (request.output / ".zgroup").is_file():
            raise UsageError(
                f"--resume {request.output} is a Zarr v2 copy of a store (made by a copying "
                "tool): it cannot be completed in place; start a new store, or --overwrite"
            )
        # Shapes only: the grid's values come with the model, which is not loaded yet.
        grid = np.zeros(request.model.output_shape, dtype="float32")
        _, wrong = store.layout_problems(request.output, request.layout(grid, grid))
        if wrong:
            raise UsageError(
                f"--resume {request.output} is a damaged store: {wrong[0]}; restore it from a "
                "copy, or start a new store (--overwrite or another --output)"
            )


def validate_benchmark(args: argparse.Namespace) -> BenchmarkRequest:
    """``--benchmark`` takes no TIME and writes nothing: refuse what does not apply."""
    if args.times:
        raise UsageError(
            f"--benchmark takes no TIME (got {' '.join(args.times)}): it uses synthetic "
            "inputs; drop the time, or drop --benchmark to downscale it"
        )
    for flag, given in (
        ("--resume", args.resume),
        ("--overwrite", args.overwrite),
        ("--prefetch", args.prefetch is not None),
        ("--output", args.output is not None),
        ("--lead-time", args.lead_time is not None),
        ("--stats", args.stats),
        ("--threshold", bool(args.threshold)),
    ):
        if given:
            raise UsageError(f"--benchmark writes nothing, so {flag} does not apply: drop it")
    from corrdiff_tools.model import DEFAULT_PACKAGE

    for flag, given in (
        ("--source", args.source != "gfs"),
        ("--model-package", args.model == TAIWAN_MODEL and args.model_package != DEFAULT_PACKAGE),
    ):
        if given:
            raise UsageError(
                f"--benchmark times random inputs (and CorrDiff Taiwan's architecture with "
                f"random weights), so {flag} does not apply: drop it"
            )
    request = BenchmarkRequest(
        size=args.benchmark_size,
        samples=args.samples,
        batch_size=args.batch_size,
        sampler=sampler_settings(args),
        compile=args.compile,
        seed=args.seed,
        device=args.device,
        peak_tflops=args.peak_tflops,
        precision=args.precision,
    )
    if args.model == TAIWAN_MODEL:
        return request
    if args.benchmark_size != "full":
        raise UsageError(
            f"--benchmark-size {args.benchmark_size} sizes CorrDiff Taiwan's architecture; "
            f"--model {args.model} is timed as its package is: drop --benchmark-size"
        )

    # The package is checked, and fetched or extracted, as a run's is.
    declared, folder = _declared_model(args)
    assert folder is not None  # noqa: S101 - a package model has a folder
    shown = _model_shown(args)
    own = _package_sampler(str(folder), declared, shown)
    return replace(
        request,
        sampler=sampler_settings(args, own),
        model=declared,
        model_package=str(folder),
        shown=shown,
        package_sampler=own,
    )


def check_lookup(path: Path, flag: str) -> None:
    """Refuse a path the system cannot even look up (a name too long, a loop of links).

    ``Path.exists()`` and ``Path.resolve()`` raise for those instead of answering, which
    surfaced as "unexpected OSError" (or RuntimeError) wherever the path was first touched.
    """
    try:
        path.expanduser().exists()
        path.expanduser().resolve()
    except (OSError, RuntimeError) as err:  # pathlib's resolve() raises RuntimeError on loops
        text = str(path)
        shown = text if len(text) <= 60 else f"{text[:28]}...{text[-28:]} ({len(text)} characters)"
        why = getattr(err, "strerror", None) or "a loop of symbolic links"
        raise UsageError(
            f"{flag} {shown}: the system cannot look this path up ({why}); choose a "
            "shorter or simpler one"
        ) from None


def check_writable_location(
    path: Path, flag: str, siblings: Sequence[str] = (), shown: Path | None = None
) -> None:
    """Refuse a path that cannot be created: an unwritable parent, or names that do not fit.

    ``siblings`` are names the tool will create beside ``path`` (a store's staging
    directory and lock file, which are longer than its own name). Every name that does
    not exist yet must fit the filesystem's limit, and the first one created is tried for
    real (in the nearest existing parent, then removed), so a name the filesystem refuses
    (too long, a character it cannot hold) is a one-line error now, not after the model
    has loaded. ``shown`` is the path messages name (the directory a probe goes into).
    """
    shown = shown or path
    absolute = path.absolute()
    parent = absolute.parent
    missing: list[str] = []
    while not parent.exists():
        missing.insert(0, parent.name)
        parent = parent.parent
    try:
        # A real probe: os.access says yes to root even where writes fail (/proc, read-only
        # mounts). The probe file is anonymous and gone when closed.
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise UsageError(
            f"{flag} {shown}: cannot write in {parent} ({err.strerror}); choose another location"
        ) from None
    names = [*missing, absolute.name, *siblings]
    try:
        limit = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for name in names:
        if len(os.fsencode(name)) > limit:
            raise UsageError(
                f"{flag} {shown}: the name {name[:32]!r}... is {len(os.fsencode(name))} bytes, "
                f"more than the {limit} this filesystem holds (with what the tool adds to it): "
                "choose a shorter name"
            )
    name = missing[0] if missing else max([absolute.name, *siblings], key=len)
    # The same length and characters, but hidden and not the name itself: a kill between
    # the two calls leaves no folder where the store, figure or GIF goes.
    probe = parent / (f".{name[1:]}" if not name.startswith(".") else f"_{name[1:]}")
    try:
        probe.mkdir()
    except FileExistsError:
        return
    except OSError as err:
        raise UsageError(
            f"{flag} {shown}: this filesystem cannot hold the name {name!r} "
            f"({err.strerror}); choose another name"
        ) from None
    probe.rmdir()


def parse_thresholds(
    values: Sequence[str], outputs: Sequence[str] | None = None
) -> dict[str, float]:
    """``VAR=VALUE`` pairs over the defaults (mrr=35 dBZ, wind=17.2 m/s, where they apply).

    ``outputs`` are the model's output variables (default Taiwan's); VAR is one of their
    display quantities (see :func:`corrdiff_tools.quantities.threshold_quantities`).
    """
    from corrdiff_tools import quantities
    from corrdiff_tools.store import OUTPUT_VARIABLES

    outputs = OUTPUT_VARIABLES if outputs is None else outputs
    allowed = quantities.threshold_quantities(outputs)
    thresholds = quantities.default_thresholds(outputs)
    given: dict[str, str] = {}
    for text in values:
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or name not in allowed:
            raise UsageError(
                f"--threshold {text!r}: use VAR=VALUE with VAR one of "
                f"{', '.join(allowed)}, e.g. --threshold {allowed[0]}="
                f"{40 if allowed[0] == 'mrr' else 1}"
            )
        try:
            thresholds[name] = float(value)
        except ValueError:
            raise UsageError(f"--threshold {text!r}: {value!r} is not a number") from None
        if not math.isfinite(thresholds[name]):
            raise UsageError(f"--threshold {text!r}: the value must be finite")
        if name in given and float(given[name].partition("=")[2]) != thresholds[name]:
            raise UsageError(
                f"--threshold {name} given twice ({given[name]!r}, then {text!r}): give it once"
            )
        given[name] = text
    return thresholds


# --------------------------------------------------------------------------- plot tool


@dataclass(frozen=True)
class PlotRequest:
    """Everything ``plot_corrdiff.py`` was asked to do, validated against the store."""

    store: Path
    #: The store, opened (see :func:`corrdiff_tools.store.open_store`).
    dataset: xr.Dataset
    #: Selected indices into the store's time and lead_time axes (None: no lead axis).
    times: list[int]
    leads: list[int | None]
    #: Selected samples; empty with ``--sample none``.
    samples: list[int]
    thresholds: dict[str, float]
    plot_lowres: bool
    stats: bool
    #: ``--gif``: off (None), into --outdir (True), or this path.
    gif: Path | bool | None
    fps: float
    colormap: str | None
    spectra: bool
    pdf: bool
    truth: Path | None
    outdir: Path
    fmt: str
    dpi: int
    overwrite: bool
    show: bool
    jobs: int | None
    #: Arrays of the store left out as unphysical (see store.implausible_arrays).
    left_out: tuple[str, ...] = ()


def _check_other_lowres(path: Path, dataset: xr.Dataset) -> None:
    """Refuse ``--plot-lowres`` for another model's store with no usable input to draw.

    ``dataset`` is without the arrays left out as unphysical.
    """
    from corrdiff_tools import quantities, render
    from corrdiff_tools.models.declaration import stored_outputs
    from corrdiff_tools.store import OUTPUT_VARIABLES

    outputs = stored_outputs(dataset.attrs, OUTPUT_VARIABLES)
    if not render.lowres_panels_of(dataset, quantities.panels_of(outputs)):
        raise UsageError(
            f"--plot-lowres: {path} holds no usable input of the same name as its outputs "
            f"({', '.join(outputs)}), so there is no low-resolution map to set beside them: "
            "drop --plot-lowres"
        )


def validate_plot(args: argparse.Namespace) -> PlotRequest:
    """Check the plot tool's arguments against the store before anything is drawn."""
    from corrdiff_tools import store

    for flag, value in (
        ("STORE", args.store),
        ("--outdir", args.outdir),
        ("--truth", args.truth),
        ("--gif", args.gif if isinstance(args.gif, str) else None),
    ):
        if value is not None:
            check_lookup(Path(value), flag)
    if not args.store.exists():
        raise UsageError(f"STORE {args.store} does not exist: give the path of a .zarr store")
    try:
        dataset = store.open_store(args.store)
    except ValueError as err:
        raise UsageError(str(err)) from None
    from corrdiff_tools import render
    from corrdiff_tools.models.declaration import stored_outputs

    taiwan = render.is_taiwan(dataset)
    times = select_times(args.time, dataset)
    leads = select_leads(args.lead_time, dataset)
    # Drawn or scored, every field is checked: an input or regression mean out of its
    # physical range at the selected times is left out, with a warning, not drawn on a
    # blanked colour scale.
    left_out = store.implausible_arrays(dataset, times, leads)
    for name, why in left_out.items():
        logger.warning(
            "%s in %s %s: left out of the maps and the evaluation", name, args.store, why
        )
    dataset = dataset.drop_vars(list(left_out))
    if not taiwan and args.plot_lowres:
        _check_other_lowres(args.store, dataset)
    samples = (
        []  # no sample maps: only what --plot-lowres/--stats/--spectra/--pdf/--truth ask for
        if args.sample.strip().lower() == "none"
        else parse_selection(args.sample, dataset.sizes["sample"], "--sample")
    )
    thresholds = parse_thresholds(
        args.threshold, stored_outputs(dataset.attrs, store.OUTPUT_VARIABLES)
    )
    # A GIF frame lasts a whole number of 1/100 s, at most 655.35 s (16 bits), and
    # viewers show frames shorter than 0.02 s at 0.1 s: outside that, Pillow fails (or
    # the animation lies) only after every figure has been drawn.
    if not (MIN_FPS <= args.fps <= MAX_FPS):
        raise UsageError(
            f"--fps {args.fps:g}: a GIF frame lasts 0.02 s to 655 s, so use {MIN_FPS} to "
            f"{MAX_FPS:g} frames per second"
        )
    if args.colormap is not None:
        import matplotlib

        if args.colormap not in matplotlib.colormaps:
            raise UsageError(
                f"--colormap {args.colormap!r} is not a matplotlib colormap (e.g. viridis, "
                "turbo, RdYlBu_r)"
            )
    if taiwan and args.plot_lowres and not store.has_lowres(dataset):
        unusable = [name for name in left_out if name.startswith("lr_") and name != "lr_refc"]
        if unusable:
            raise UsageError(
                f"--plot-lowres: {unusable[0]} in {args.store} {left_out[unusable[0]]}: the "
                "low-resolution input cannot be drawn; drop --plot-lowres"
            )
        raise UsageError(
            f"--plot-lowres: {args.store} holds no low-resolution inputs (made by the blog's "
            "script?); rerun it with run_corrdiff.py, or drop --plot-lowres"
        )
    outdir = args.outdir or args.store.absolute().parent / f"{args.store.absolute().stem}-plots"
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"--outdir {outdir} is a file, not a directory: choose another")
    check_writable_location(outdir / "probe", "--outdir", shown=outdir)
    if args.gif and not samples:
        raise UsageError("--gif animates samples: drop --sample none, or drop --gif")
    gif = args.gif if args.gif is None or args.gif is True else Path(args.gif)
    if isinstance(gif, Path) and gif.suffix.lower() != ".gif":
        raise UsageError(f"--gif {gif}: the file name must end in .gif")
    if isinstance(gif, Path):
        if gif.is_dir():
            raise UsageError(f"--gif {gif} is a directory: name the .gif file to write")
        check_writable_location(gif, "--gif")
    return PlotRequest(
        store=args.store,
        dataset=dataset,
        times=times,
        leads=leads,
        samples=samples,
        thresholds=thresholds,
        plot_lowres=args.plot_lowres,
        stats=args.stats,
        gif=gif,
        fps=args.fps,
        colormap=args.colormap,
        spectra=args.spectra,
        pdf=args.pdf,
        truth=args.truth,
        outdir=outdir,
        fmt=args.format,
        dpi=args.dpi,
        overwrite=args.overwrite,
        show=args.show,
        jobs=args.jobs,
        left_out=tuple(left_out),
    )


def parse_selection(text: str, size: int, flag: str) -> list[int]:
    """Parse ``all``, ``N``, ``N,M`` and ``A-B`` (inclusive) into sorted indices < size."""
    if text.strip().lower() == "all":
        return list(range(size))
    chosen: set[int] = set()
    for part in text.split(","):
        bounds = part.strip().split("-")
        if len(bounds) > 2 or not all(b.strip().isascii() and b.strip().isdigit() for b in bounds):
            raise UsageError(f"{flag} {text!r}: use all, N, N,M or A-B (e.g. 0-3,7)")
        low, high = int(bounds[0]), int(bounds[-1])
        if low > high:
            raise UsageError(f"{flag} {text!r}: range {part.strip()} runs backwards")
        if high >= size:
            raise UsageError(f"{flag} {text!r}: the store has {size}, numbered 0 to {size - 1}")
        chosen.update(range(low, high + 1))
    return sorted(chosen)


def select_times(text: str, dataset: xr.Dataset) -> list[int]:
    """``--time``: all, indices (as :func:`parse_selection`), or one ISO time in the store."""
    import numpy as np

    size = dataset.sizes["time"]
    if text.strip().lower() == "all" or (text.strip().isascii() and text.strip().isdigit()):
        return parse_selection(text, size, "--time")
    wanted = np.datetime64(times_mod.parse_time(text), "ns")
    matches = np.flatnonzero(dataset["time"].values == wanted)
    if matches.size == 0:
        held = ", ".join(
            times_mod.format_time(np.datetime64(t, "s").astype(datetime))
            for t in dataset["time"].values[:6]
        )
        raise UsageError(f"--time {text}: not in the store, which holds {held}")
    return [int(matches[0])]


def select_leads(text: str, dataset: xr.Dataset) -> list[int | None]:
    """``--lead-time``: all, or hours held by a forecast store, as indices into it."""
    from corrdiff_tools.store import lead_hours

    if "lead_time" not in dataset.dims:
        if text.strip().lower() != "all":
            raise UsageError(f"--lead-time {text}: this store has no lead times (an analysis)")
        return [None]
    hours = lead_hours(dataset)
    if text.strip().lower() == "all":
        return list(range(len(hours)))
    chosen: list[int | None] = []
    for part in text.split(","):
        raw = part.strip().removesuffix("h").removesuffix("H")
        # Signed: CorrDiffCMIP6's stores hold hours before their times too.
        value = int(raw) if re.fullmatch(r"[+-]?[0-9]+", raw) else None
        if value is None or value not in hours:
            raise UsageError(
                f"--lead-time {text}: {part.strip()} is not in the store, which holds "
                f"{', '.join(str(h) for h in hours)} h"
            )
        chosen.append(hours.index(value))
    return chosen
