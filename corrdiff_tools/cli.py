"""Argument parsing, logging, exit codes and the error surface of both tools.

Exit codes: 0 done, 2 bad input (nothing written), 1 runtime failure, 130 on Ctrl-C.
A failure prints one line on stderr; ``--debug`` adds the traceback. Nothing heavy
(torch, earth2studio, matplotlib) is imported before the arguments are parsed, so
``--help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from corrdiff_tools import __version__
from corrdiff_tools.errors import RunError, Terminated, UsageError

if TYPE_CHECKING:
    from corrdiff_tools.network import Endpoint
    from corrdiff_tools.requests import RunRequest
    from corrdiff_tools.run_workflow import ModelLoader, SourceFactory

logger = logging.getLogger("corrdiff_tools")

RUN_EXAMPLES = """\
examples:
  run_corrdiff.py 2024-07-24T12:00 --samples 4
      the blog's job: GFS analysis of Typhoon Gaemi, 4 ensemble members
  run_corrdiff.py 2024-07-24T00/2024-07-25T00 --samples 8 --seed 1
      every 6 h from 00Z on the 24th to 00Z on the 25th (5 times), one model load
  run_corrdiff.py 2024-07-24T12 --source gfs-forecast --lead-time 0 6 12
      a GFS forecast initialised at 12Z, downscaled at three lead times
  run_corrdiff.py 2024-07-24T12:00 --samples 4 --preset paper
      the CorrDiff paper's sampler (stochastic EDM, 18 steps): 35 network calls per
      sample instead of the blog's 8
  run_corrdiff.py 2024-07-24T12 --prefetch gaemi.nc
      download inputs (and the model) now; later, offline:
  run_corrdiff.py 2024-07-24T12 --source gaemi.nc --model-package ~/corrdiff
  run_corrdiff.py 2024-07-24T00/2024-07-31T18 --samples 16 --resume
      continue an interrupted run, computing only what is missing
  run_corrdiff.py --benchmark --samples 4 --peak-tflops 1300
      time the published architecture (random weights) on this machine, no downloads
"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line through our error surface.

    Two of argparse's defaults hide mistakes, so both are off. Abbreviations: ``--model
    X`` silently meant ``--model-package X`` (until ``--model`` became an option of its
    own), and any new option could change what an old abbreviation means. Repeats:
    ``--samples 4 ... --samples 8`` kept the last value; an
    option given twice with different values is now an error (see :class:`_StoreOnce`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        # Every plain "store" option, in argument groups too (they share the registry).
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        for name in [name for name in vars(parsed) if name.startswith(_StoreOnce.PREFIX)]:
            delattr(parsed, name)
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        if message.startswith("argument --lead-time: expected"):
            # argparse reads "-12,0" as an option, not as the value it is
            message += " (a negative lead time reads as an option: write --lead-time=-12,0)"
        raise UsageError(f"{message} (see {self.prog} --help)")


class _StoreOnce(argparse.Action):
    """argparse's "store", refusing the same option twice with different values."""

    #: Namespace attributes that record which options were given (removed after parsing).
    PREFIX = "_given_"

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        marker = f"{self.PREFIX}{self.dest}"
        if option_string is not None and hasattr(namespace, marker):
            before = getattr(namespace, self.dest)
            if before != values:
                parser.error(
                    f"{option_string} given twice ({_shown(before)}, then {_shown(values)}): "
                    "give it once"
                )
        setattr(namespace, marker, True)
        setattr(namespace, self.dest, values)


def _shown(value: Any) -> str:
    """An option's value as typed: lists space-separated, a flag given alone as such."""
    if value is True:
        return "given alone"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _positive_int(name: str, minimum: int = 1) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a whole number, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be at least {minimum}, got {value}")
        return value

    return parse


def build_run_parser() -> argparse.ArgumentParser:
    """The argument parser of ``run_corrdiff.py``."""
    from corrdiff_tools.model import DEFAULT_PACKAGE
    from corrdiff_tools.sources import SOURCE_NAMES

    parser = _Parser(
        prog="run_corrdiff.py",
        description=(
            "Downscale low-resolution weather over Taiwan to a 448x448 km-scale grid with "
            "NVIDIA CorrDiff, drawing an ensemble per time and writing it to Zarr."
        ),
        epilog=RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "times",
        nargs="*",
        metavar="TIME",
        help="UTC time (2024-07-24T12:00, 2024-07-24T12, '2024-07-24 12:00Z'), or a range "
        "START/END (every 6 h, inclusive) or START/END/12h; at least one unless --benchmark",
    )
    parser.add_argument(
        "--samples", type=_positive_int("--samples"), default=1, help="ensemble size (default 1)"
    )
    parser.add_argument(
        "--seed",
        type=_positive_int("--seed", minimum=0),
        default=0,
        help="base random seed; sample i of time t always gets the same noise (default 0)",
    )
    parser.add_argument(
        "--source",
        default="gfs",
        help=f"input data: {', '.join(SOURCE_NAMES)}, or a NetCDF/Zarr DataArray file with "
        "dims (time, variable, lat, lon) (default gfs)",
    )
    parser.add_argument(
        "--lead-time",
        nargs="+",
        metavar="H",
        help="lead times in hours, space- or comma-separated: of a forecast, with --source "
        "gfs-forecast (default 0); with --model cmip6, the hours -12 to 11 around each "
        "12:00 UTC time (default -12; --lead-time=-12,0 as in the plot tool)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="Zarr store to write (default outputs/corrdiff-<YYYY-MM-DDTHH>.zarr, or "
        "outputs/corrdiff-<first>_<last>.zarr for several times; -forecast.zarr for forecasts)",
    )
    exists = parser.add_mutually_exclusive_group()
    exists.add_argument(
        "--overwrite", action="store_true", help="replace an existing store at --output"
    )
    exists.add_argument(
        "--resume",
        action="store_true",
        help="fill in what an interrupted run with the same settings left missing",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int("--batch-size"),
        help="most samples per diffusion batch, bounds memory (default: all on CPU; on a GPU, "
        "what fits in free memory, halved on out-of-memory)",
    )
    _add_sampler_options(parser)
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (ROCm GPUs are cuda)"
    )
    parser.add_argument(
        "--model",
        default="taiwan",
        metavar="taiwan|cmip6|PATH_OR_URL",
        help="the CorrDiff model: taiwan (default); cmip6 (CorrDiffCMIP6, daily climate-model "
        "fields to hourly ones; its package from --model-package, default Hugging Face's); "
        "or a generic CorrDiff package you trained (metadata.json, stats.json, grids, "
        "regression.mdlus, diffusion.mdlus): its folder, a zip of it, or an address "
        "(hf://, s3://, https://); see the README's 'Other CorrDiff models'",
    )
    parser.add_argument(
        "--model-package",
        default=DEFAULT_PACKAGE,
        metavar="PATH_OR_URL",
        help="CorrDiff Taiwan's package: a directory holding corrdiff_inference_package.zip "
        "or its extracted folder, or a URL (default: NVIDIA's NGC package); with --model "
        "cmip6, CorrDiffCMIP6's package (a folder, zip or address)",
    )
    parser.add_argument(
        "--prefetch",
        type=Path,
        metavar="FILE",
        help="download the inputs for TIME into FILE (.nc for NetCDF, else Zarr) and the "
        "model package into the cache, then stop",
    )
    parser.add_argument(
        "--stats",
        action="store_true",
        help="also store ensemble mean, standard deviation and exceedance probabilities "
        "beside the samples, for each time whose ensemble is complete",
    )
    _add_threshold_option(parser)
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "fp16", "bf16"),
        default="auto",
        help="arithmetic of the networks: auto = fp16 on a GPU (as published), fp32 on a "
        "CPU; bf16 autocasts them to bfloat16 (GPUs, and CPUs with bfloat16 instructions); "
        "see the README's 'Precision' for the measured differences",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile both networks: faster calls after a slow first one (minutes on "
        "a CPU); results equal to rounding, not bitwise",
    )
    bench = parser.add_argument_group("benchmark (no TIME, no input data)")
    bench.add_argument(
        "--benchmark",
        action="store_true",
        help="time CorrDiff Taiwan's published architecture with random weights and synthetic "
        "inputs (no downloads), or with --model cmip6|PATH that package on random inputs; "
        "honouring --samples, --steps, --solver, --batch-size, --device, --precision and "
        "--compile",
    )
    bench.add_argument(
        "--benchmark-size",
        choices=("full", "small", "narrow", "tiny"),
        default="full",
        help="full: the published width (default); small/narrow: same depth at 1/4 or 1/8 of "
        "the width, for quick CPU checks; tiny: a smoke test",
    )
    bench.add_argument(
        "--peak-tflops",
        type=_number("--peak-tflops", positive=True),
        metavar="T",
        help="the device's peak TFLOP/s for the precision used, to report the fraction achieved",
    )
    _add_common_options(parser)
    return parser


def _add_sampler_options(parser: argparse.ArgumentParser) -> None:
    """The diffusion sampler: a preset, or physicsnemo's sampler settings one by one."""
    from corrdiff_tools.sampling import PRESETS, SAMPLERS, SOLVERS

    lines = [f"  {name}: {preset.describe()}" for name, preset in PRESETS.items()]
    group = parser.add_argument_group(
        "diffusion sampler (physicsnemo's own samplers; each option overrides the preset)",
        "\n".join(
            [
                *lines,
                "  blog is earth2studio's CorrDiffTaiwan and the blog's figures (the default);",
                "  paper is the CorrDiff paper's evaluation (see the README's 'Samplers').",
            ]
        ),
    )
    group.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        help="sampler settings to start from (default blog, or the preset of --sampler)",
    )
    group.add_argument("--sampler", choices=SAMPLERS, help="EDM sampler (default deterministic)")
    group.add_argument(
        "--steps",
        type=_positive_int("--steps", minimum=2),
        help="sampler steps, 2 or more (blog 8, paper 18)",
    )
    group.add_argument(
        "--solver",
        choices=SOLVERS,
        help="deterministic sampler's ODE solver (default euler; stochastic is always heun)",
    )
    for flag, name, text in (
        ("--sigma-min", "sigma_min", "lowest noise level (default 0.002)"),
        ("--sigma-max", "sigma_max", "highest noise level (blog 80, paper 800)"),
        ("--rho", "rho", "time-step exponent (default 7)"),
        ("--s-churn", "s_churn", "stochasticity strength S_churn (default 0: no churn)"),
        ("--s-min", "s_min", "lowest noise level that churns, S_min (default 0)"),
        ("--s-max", "s_max", "highest noise level that churns, S_max (default inf)"),
        ("--s-noise", "s_noise", "churn noise inflation S_noise (default 1)"),
    ):
        group.add_argument(flag, dest=name, type=_number(flag), metavar="X", help=text)


def _number(name: str, positive: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite-or-infinite real number (no NaN), or a positive finite one."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if math.isnan(value) or (positive and not 0 < value < math.inf):
            kind = "a positive number" if positive else "a number"
            raise argparse.ArgumentTypeError(f"{name} must be {kind}, got {text!r}")
        return value

    return parse


def _add_threshold_option(parser: argparse.ArgumentParser) -> None:
    """``--threshold VAR=VALUE``, the same for both tools (see :func:`parse_thresholds`)."""
    parser.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="VAR=VALUE",
        help="exceedance threshold for --stats: mrr (dBZ), t2m (deg C) or wind (m/s); "
        "defaults mrr=35, wind=17.2 (another model's: any output, a u10m/v10m pair as "
        "wind; in store units, t2m in deg C)",
    )


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log more")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log only problems")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def configure_logging(args: argparse.Namespace) -> None:
    """Send our log records to stderr at the level -v/-q asks for."""
    level = logging.DEBUG if args.verbose or args.debug else logging.INFO
    if args.quiet:
        level = logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    if not args.debug:
        warnings.filterwarnings("ignore")


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the tool runs, SIGTERM unwinds like Ctrl-C does (see errors.Terminated)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _missing_module(err: ModuleNotFoundError) -> str:
    """What to do when this Python lacks a requirement (say, ``python3`` outside the venv)."""
    name = (err.name or str(err)).split(".")[0]
    return (
        f"this Python ({sys.executable}) has no {name!r}: run the tool with the Python you "
        "installed the requirements into (e.g. .venv/bin/python), or install them: "
        "python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -r requirements.txt"
    )


def _broken_import(err: ImportError) -> str:
    """What to do when a library is there but cannot be loaded (memory, a broken install)."""
    text = " ".join(str(err).split())
    if "failed to map segment" in text or "cannot allocate memory" in text.lower():
        return (
            f"could not load {err.name or 'a library'} into memory ({text[:120]}): the process "
            "may run under a memory limit (ulimit -v, a batch job's); raise it, torch alone maps "
            "several GB"
        )
    return (
        f"could not import {err.name or 'a library'} ({text[:160]}): the installation looks "
        "broken; reinstall: .venv/bin/pip install -c constraints.txt -r requirements.txt"
    )


def guarded(
    main: Callable[[argparse.Namespace], int],
    parser: argparse.ArgumentParser,
    after_interrupt: Callable[[Sequence[str]], str | None] | None = None,
) -> Callable[[Sequence[str] | None], int]:
    """Wrap a tool's body in the one error surface: exit codes, one-line messages.

    ``after_interrupt`` turns the command line into the hint printed after Ctrl-C (exit
    130) or SIGTERM (exit 143), e.g. the ``--resume`` command that finishes the job.
    """

    def run(argv: Sequence[str] | None = None) -> int:
        prog = parser.prog
        words = list(sys.argv[1:] if argv is None else argv)
        debug = "--debug" in words
        try:
            with _sigterm_raises():
                args = parser.parse_args(words)
                configure_logging(args)
                return main(args)
        except UsageError as err:
            _report(prog, err, debug)
            return UsageError.exit_code
        except RunError as err:
            _report(prog, err, debug)
            return RunError.exit_code
        except (KeyboardInterrupt, Terminated) as err:
            terminated = isinstance(err, Terminated)
            what, code = ("terminated", 143) if terminated else ("interrupted", 130)
            extra = after_interrupt(words) if after_interrupt else None
            hint = f"; {extra}" if extra else ""
            print(f"{prog}: {what}{hint}", file=sys.stderr)  # noqa: T201
            return code
        except ModuleNotFoundError as err:
            _report(prog, _missing_module(err), debug)
            return 1
        except ImportError as err:
            _report(prog, _broken_import(err), debug)
            return 1
        except Exception as err:  # noqa: BLE001 - the last line of defence: one line, exit 1
            _report(prog, f"unexpected {type(err).__name__}: {err} (rerun with --debug)", debug)
            return 1

    return run


def resume_hint(words: Sequence[str]) -> str | None:
    """What to run after an interrupted run: the same command with ``--resume``."""
    kept = [word for word in words if word not in ("--overwrite", "--resume")]
    if "--benchmark" in kept or "--prefetch" in kept or "--help" in kept or "-h" in kept:
        return None
    return (
        "completed samples are kept; finish with: run_corrdiff.py "
        f"{shlex.join([*kept, '--resume'])}"
    )


def _report(prog: str, err: object, debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()
    message = " ".join(str(err).split())
    print(f"{prog}: error: {message}", file=sys.stderr)  # noqa: T201


# --------------------------------------------------------------------------- run tool


def run_main(
    argv: Sequence[str] | None = None,
    *,
    build_source: SourceFactory | None = None,
    load_model: ModelLoader | None = None,
) -> int:
    """Entry point of ``run_corrdiff.py``; returns the exit code.

    ``build_source`` and ``load_model`` replace the real data sources
    (:func:`corrdiff_tools.sources.build_source`) and model loader
    (:func:`corrdiff_tools.model.load_corrdiff`): how tests run the whole tool offline
    against a fake GFS, an unreachable one or a failing one.
    """
    import time

    # From the command line, the summary's clock starts with the process (interpreter
    # and imports included); called from Python, with the call.
    started = time.monotonic()
    if argv is None:
        from corrdiff_tools.imports import pause_collection
        from corrdiff_tools.run_workflow import process_age

        started -= process_age()
        pause_collection()  # until the heavy imports are done (see corrdiff_tools.imports)
    parser = build_run_parser()
    command = list(sys.argv[1:] if argv is None else argv)

    def body(args: argparse.Namespace) -> int:
        from corrdiff_tools import model, requests, run_workflow, sources

        def import_libraries() -> None:
            from corrdiff_tools.imports import resume_collection

            model.import_model_stack(args.debug, args.verbose)
            resume_collection()

        if args.benchmark:
            benchmark = requests.validate_benchmark(args)
            result = run_workflow.benchmark(benchmark, import_libraries)
            # The table is the command's result, not a log line: stdout.
            sys.stdout.write(result.table(benchmark.peak_tflops))
            sys.stdout.flush()
            return 0
        request = requests.validate_run(args, command)
        if build_source is not None:
            source_factory = build_source
        elif request.is_taiwan:
            source_factory = sources.build_source
        else:  # the package's input box, not Taiwan's
            source_factory = functools.partial(sources.build_source, model=request.model)
        if load_model is not None:
            loader = load_model
        elif request.is_taiwan:
            loader = model.load_corrdiff
        else:
            loader = functools.partial(model.load_generic, declared=request.model)
        parts = run_workflow.RunParts(
            build_source=source_factory,
            load_model=loader,
            import_libraries=import_libraries,
            progress=functools.partial(progress_bar, quiet=args.quiet, unit="sample"),
            endpoints=functools.partial(
                network_needs, model=load_model is None, inputs=build_source is None
            ),
            started=started,
        )
        return run_workflow.run(request, parts)

    return guarded(body, parser, resume_hint)(argv)


def network_needs(request: RunRequest, *, model: bool, inputs: bool) -> list[Endpoint]:
    """The hosts a run downloads from: the model registry and the input archive.

    Injected fakes (tests) replace the real model loader or sources: their hosts are not
    needed then.
    """
    from corrdiff_tools import network
    from corrdiff_tools.model import DEFAULT_PACKAGE, PACKAGE_ZIP

    found = [
        network.package_endpoint(request.model_package, DEFAULT_PACKAGE, PACKAGE_ZIP)
        if model
        else None,
        network.source_endpoint(request.source.kind) if inputs else None,
    ]
    return [endpoint for endpoint in found if endpoint is not None]


@contextlib.contextmanager
def progress_bar(total: int, quiet: bool, unit: str) -> Iterator[Callable[[int], object]]:
    """A tqdm bar on stderr (off with -q, when stderr is not a terminal, or TQDM_DISABLE)."""
    from tqdm import tqdm

    disable = (
        quiet or not sys.stderr.isatty() or os.environ.get("TQDM_DISABLE", "") not in ("", "0")
    )
    with tqdm(total=total, unit=unit, disable=disable, file=sys.stderr) as bar:
        yield bar.update


# --------------------------------------------------------------------------- plot tool

PLOT_EXAMPLES = """\
examples:
  plot_corrdiff.py outputs/corrdiff-2024-07-24T12.zarr --plot-lowres
      every sample, plus the low-resolution input, into outputs/corrdiff-2024-07-24T12-plots/
  plot_corrdiff.py STORE --sample 0-3 --time 2024-07-24T12 --gif --fps 2
      four samples of one time, and an animation through them
  plot_corrdiff.py STORE --stats --threshold mrr=40 --threshold wind=25 --sample 0
      ensemble mean, spread and P(mrr >= 40 dBZ), P(wind >= 25 m/s), plus one sample
  plot_corrdiff.py STORE --sample none --spectra --pdf --truth obs.nc
      the paper's evaluation: power spectra, distributions, CRPS and rank histograms
"""


def build_plot_parser() -> argparse.ArgumentParser:
    """The argument parser of ``plot_corrdiff.py``."""
    from corrdiff_tools.render import FORMATS

    parser = _Parser(
        prog="plot_corrdiff.py",
        description="Draw maps of a CorrDiff ensemble stored by run_corrdiff.py (or the blog's "
        "script): one figure per time and sample, the low-resolution input, ensemble "
        "statistics and an animation through the samples. Works offline.",
        epilog=PLOT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("store", type=Path, metavar="STORE", help="Zarr store to plot")
    parser.add_argument(
        "--sample",
        default="all",
        help="all (default), N, N,M or A-B (inclusive), e.g. 0-3,7; none: no sample maps "
        "(only what other options ask for)",
    )
    parser.add_argument(
        "--time", default="all", help="all (default), an ISO time, or an index into the store"
    )
    parser.add_argument(
        "--lead-time",
        default="all",
        help="all (default) or hours, e.g. 6 or 0,6; signed where a store has negative ones "
        "(--lead-time=-12,0)",
    )
    parser.add_argument(
        "--plot-lowres", action="store_true", help="also draw the low-resolution input"
    )
    parser.add_argument(
        "--stats",
        action="store_true",
        help="also draw ensemble mean, standard deviation and exceedance probabilities",
    )
    _add_threshold_option(parser)
    parser.add_argument(
        "--gif",
        nargs="?",
        const=True,
        default=None,
        metavar="PATH",
        help="write an animation through the samples of each time (default name in --outdir)",
    )
    parser.add_argument("--fps", type=float, default=1.0, help="GIF frames per second (default 1)")
    science = parser.add_argument_group("evaluation (the CorrDiff paper's diagnostics)")
    science.add_argument(
        "--spectra",
        action="store_true",
        help="radially averaged power spectra per variable: each sample, the ensemble mean, "
        "the regression mean and the interpolated input (and --truth)",
    )
    science.add_argument(
        "--pdf",
        action="store_true",
        help="probability densities (log scale) of the same fields, showing the tails",
    )
    science.add_argument(
        "--truth",
        type=Path,
        metavar="PATH",
        help="NetCDF/Zarr of reference fields (mrr, t2m, u10m, v10m; dims time, y, x on the "
        "output grid, or on a lat/lon grid covering it): CRPS, MAE, RMSE, spread-skill and "
        "rank histograms, written as scores.csv/.json and figures",
    )
    parser.add_argument(
        "--outdir", type=Path, help="where to write (default <store name>-plots/ beside the store)"
    )
    parser.add_argument(
        "--format", choices=FORMATS, default="jpg", help="image format (default jpg)"
    )
    parser.add_argument(
        "--dpi",
        type=_positive_int("--dpi", minimum=20),
        default=100,
        help="image resolution in dots per inch, 20 or more (default 100)",
    )
    parser.add_argument("--colormap", help="one matplotlib colormap for every map panel")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="draw everything again, replacing existing files (up-to-date ones are else kept)",
    )
    parser.add_argument("--show", action="store_true", help="also open the figures in a window")
    parser.add_argument(
        "--jobs",
        type=_positive_int("--jobs"),
        help="render in this many processes (default: the cores available)",
    )
    _add_common_options(parser)
    return parser


def plot_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``plot_corrdiff.py``; returns the exit code."""

    def body(args: argparse.Namespace) -> int:
        from corrdiff_tools import plot_workflow, requests

        request = requests.validate_plot(args)
        progress = functools.partial(progress_bar, quiet=args.quiet, unit="figure")
        return plot_workflow.plot(request, progress)

    return guarded(body, build_plot_parser())(argv)
