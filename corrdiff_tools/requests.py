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
import math
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from corrdiff_tools import times as times_mod
from corrdiff_tools.errors import UsageError
from corrdiff_tools.sampling import SamplerSettings

if TYPE_CHECKING:
    import xarray as xr

    from corrdiff_tools.sources import SourceSpec

#: Frame rates a GIF can hold (see the --fps check).
MIN_FPS, MAX_FPS = 0.002, 50.0

#: A progress display: called with the number of steps, gives a context whose value is
#: called with the steps done since the last call (tqdm's ``update``).
ProgressFactory = Callable[[int], AbstractContextManager[Callable[[int], object]]]


# --------------------------------------------------------------------------- run tool


@dataclass(frozen=True)
class RunRequest:
    """Everything ``run_corrdiff.py`` was asked to do, validated."""

    #: Valid (analysis) or initialisation (forecast) times, UTC.
    times: list[datetime]
    #: Forecast lead times in hours, or None for analyses.
    lead_times: list[int] | None
    source: SourceSpec
    #: How ``--resume`` recognises the source: its label, or a file's path and content.
    source_identity: str | dict[str, str]
    #: Low-resolution fields to store: the inputs, plus ``refc`` where the source has it.
    lowres_variables: list[str]
    output: Path
    samples: int
    seed: int
    sampler: SamplerSettings
    #: ``--model-package`` as typed, and what identifies its content.
    model_package: str
    package_identity: dict[str, str]
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

    def resume_settings(self) -> dict[str, object]:
        """The settings a ``--resume`` must match, as stored in the store (JSON)."""
        from corrdiff_tools.downscale import GEOMETRY

        return {
            "times": [times_mod.format_time(t) for t in self.times],
            "lead_times": self.lead_times,
            "samples": self.samples,
            "seed": self.seed,
            "sampler": self.sampler.to_json(),
            "geometry": GEOMETRY,
            "source": self.source_identity,
            "model_package": self.package_identity,
            "stats": self.statistics,
        }


@dataclass(frozen=True)
class BenchmarkRequest:
    """``run_corrdiff.py --benchmark``: time the published architecture, write nothing."""

    size: str
    samples: int
    batch_size: int | None
    sampler: SamplerSettings
    compile: bool
    seed: int
    device: str
    peak_tflops: float | None
    precision: str = "auto"


def sampler_settings(args: argparse.Namespace) -> SamplerSettings:
    """The :class:`~corrdiff_tools.sampling.SamplerSettings` the options ask for.

    Raises
    ------
    UsageError
        On conflicting options or values out of range.
    """
    from corrdiff_tools import sampling

    overrides = {name: getattr(args, name) for name in sampling.OPTION_FIELDS}
    try:
        return sampling.resolve(args.preset, args.sampler, overrides)
    except ValueError as err:
        raise UsageError(str(err)) from None


def validate_run(args: argparse.Namespace, command: Sequence[str]) -> RunRequest:
    """Check every argument of a run before anything is fetched, loaded or written."""
    from corrdiff_tools import model, sources, store

    if not args.times:
        raise UsageError(
            "no TIME given: name at least one, e.g. run_corrdiff.py 2024-07-24T12:00, "
            "or pass --benchmark to time the model without data"
        )
    times = times_mod.parse_times(args.times)
    source = sources.parse_source(args.source)
    if args.lead_time is not None and not source.is_forecast:
        raise UsageError(
            f"--lead-time needs --source gfs-forecast (got --source {args.source}); "
            "analyses have no lead time"
        )
    lead_times = times_mod.parse_lead_times(args.lead_time or ["0"]) if source.is_forecast else None
    file_variables = _check_source_times(source, times)
    model.check_package_spec(args.model_package)
    if args.threshold and not args.stats:
        raise UsageError(
            f"--threshold {args.threshold[0]} only applies with --stats: add --stats, or "
            "set thresholds when plotting (plot_corrdiff.py --stats --threshold ...)"
        )
    statistics = parse_thresholds(args.threshold) if args.stats else None
    sampler = sampler_settings(args)
    output = args.output or store.default_output(times, source.is_forecast)
    if output.is_symlink():
        # --overwrite and --resume act on the store itself, not on the link to it.
        output = output.resolve()
    request = RunRequest(
        times=times,
        lead_times=lead_times,
        source=source,
        # By resolved path and content, not by spelling (see sources.file_identity).
        source_identity=(
            sources.file_identity(source.path, times) if source.path is not None else source.label
        ),
        lowres_variables=sources.lowres_variables(source, file_variables),
        output=output,
        samples=args.samples,
        seed=args.seed,
        sampler=sampler,
        model_package=args.model_package,
        package_identity=model.package_identity(args.model_package),
        statistics=statistics,
        overwrite=args.overwrite,
        resume=args.resume,
        batch_size=args.batch_size,
        device=args.device,
        compile=args.compile,
        prefetch=args.prefetch,
        command=tuple(command),
        precision=args.precision,
    )
    if request.prefetch is not None:
        _check_prefetch(request, args.source)
    else:
        _check_output(request)
    return request


def _check_source_times(source: SourceSpec, times: Sequence[datetime]) -> list[str] | None:
    """Each time exists at the source; for a file, the variables it holds."""
    from corrdiff_tools import sources

    if source.kind in ("gfs", "gfs-forecast"):
        for time in times:
            times_mod.check_gfs_time(time)
    elif source.kind == "era5":
        for time in times:
            times_mod.check_era5_time(time)
    elif source.path is not None:
        return sources.check_file_source(source.path, times)
    return None


def _check_prefetch(request: RunRequest, typed_source: str) -> None:
    assert request.prefetch is not None  # noqa: S101 - the caller checks
    if request.source.kind not in ("gfs", "era5"):
        raise UsageError(
            f"--prefetch downloads from --source gfs or era5, not {typed_source}: "
            "forecasts and files cannot be prefetched into an analysis file"
        )
    if request.prefetch.exists():
        raise UsageError(
            f"--prefetch {request.prefetch} already exists: remove it or pick another name"
        )
    check_writable_location(request.prefetch, "--prefetch")


def _check_output(request: RunRequest) -> None:
    """``--output`` may be created, replaced (--overwrite) or completed (--resume)."""
    from corrdiff_tools import store

    check_writable_location(request.output, "--output")
    store.check_target(request.output, request.overwrite, request.resume, request.resume_settings())


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
    ):
        if given:
            raise UsageError(f"--benchmark writes nothing, so {flag} does not apply: drop it")
    return BenchmarkRequest(
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


def check_writable_location(path: Path, flag: str) -> None:
    """Refuse a path whose nearest existing parent cannot be written."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    try:
        # A real probe: os.access says yes to root even where writes fail (/proc, read-only
        # mounts). The probe file is anonymous and gone when closed.
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise UsageError(
            f"{flag} {path}: cannot write in {parent} ({err.strerror}); choose another location"
        ) from None


def parse_thresholds(values: Sequence[str]) -> dict[str, float]:
    """``VAR=VALUE`` pairs over the defaults (mrr=35 dBZ, wind=17.2 m/s)."""
    from corrdiff_tools.quantities import DEFAULT_THRESHOLDS, THRESHOLD_VARIABLES

    thresholds = dict(DEFAULT_THRESHOLDS)
    for text in values:
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or name not in THRESHOLD_VARIABLES:
            raise UsageError(
                f"--threshold {text!r}: use VAR=VALUE with VAR one of "
                f"{', '.join(THRESHOLD_VARIABLES)}, e.g. --threshold mrr=40"
            )
        try:
            thresholds[name] = float(value)
        except ValueError:
            raise UsageError(f"--threshold {text!r}: {value!r} is not a number") from None
        if not math.isfinite(thresholds[name]):
            raise UsageError(f"--threshold {text!r}: the value must be finite")
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


def validate_plot(args: argparse.Namespace) -> PlotRequest:
    """Check the plot tool's arguments against the store before anything is drawn."""
    from corrdiff_tools import store

    if not args.store.exists():
        raise UsageError(f"STORE {args.store} does not exist: give the path of a .zarr store")
    try:
        dataset = store.open_store(args.store)
    except ValueError as err:
        raise UsageError(str(err)) from None
    times = select_times(args.time, dataset)
    leads = select_leads(args.lead_time, dataset)
    samples = (
        []  # no sample maps: only what --plot-lowres/--stats/--spectra/--pdf/--truth ask for
        if args.sample.strip().lower() == "none"
        else parse_selection(args.sample, dataset.sizes["sample"], "--sample")
    )
    thresholds = parse_thresholds(args.threshold)
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
    if args.plot_lowres and not store.has_lowres(dataset):
        raise UsageError(
            f"--plot-lowres: {args.store} holds no low-resolution inputs (made by the blog's "
            "script?); rerun it with run_corrdiff.py, or drop --plot-lowres"
        )
    outdir = args.outdir or args.store.absolute().parent / f"{args.store.absolute().stem}-plots"
    if args.gif and not samples:
        raise UsageError("--gif animates samples: drop --sample none, or drop --gif")
    gif = args.gif if args.gif is None or args.gif is True else Path(args.gif)
    if isinstance(gif, Path) and gif.suffix.lower() != ".gif":
        raise UsageError(f"--gif {gif}: the file name must end in .gif")
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
        value = times_mod.parse_hours(part)
        if value is None or value not in hours:
            raise UsageError(
                f"--lead-time {text}: {part.strip()} is not in the store, which holds "
                f"{', '.join(str(h) for h in hours)} h"
            )
        chosen.append(hours.index(value))
    return chosen
