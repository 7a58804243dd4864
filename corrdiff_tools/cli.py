"""Argument parsing, logging, exit codes and the error surface of both tools.

Exit codes: 0 done, 2 bad input (nothing written), 1 runtime failure, 130 on Ctrl-C.
A failure prints one line on stderr; ``--debug`` adds the traceback. Nothing heavy
(torch, earth2studio, matplotlib) is imported before the arguments are parsed, so
``--help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import shlex
import sys
import tempfile
import time as clock
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from corrdiff_tools import __version__
from corrdiff_tools import times as times_mod
from corrdiff_tools.errors import RunError, Terminated, UsageError
from corrdiff_tools.sampling import SamplerSettings

logger = logging.getLogger("corrdiff_tools")

#: Frame rates a GIF can hold (see the --fps check).
MIN_FPS, MAX_FPS = 0.002, 50.0

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
    """An ArgumentParser whose errors are one line through our error surface."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


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
        help="forecast lead times in hours, with --source gfs-forecast (default 0)",
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
        "--model-package",
        default=DEFAULT_PACKAGE,
        metavar="PATH_OR_URL",
        help="CorrDiff package: a directory holding corrdiff_inference_package.zip or its "
        "extracted folder, or a URL (default: NVIDIA's NGC package)",
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
        "--compile",
        action="store_true",
        help="torch.compile both networks: faster calls after a slow first one (minutes on "
        "a CPU); results equal to rounding, not bitwise",
    )
    bench = parser.add_argument_group("benchmark (no TIME, no downloads)")
    bench.add_argument(
        "--benchmark",
        action="store_true",
        help="time the published architecture with random weights and synthetic inputs, "
        "honouring --samples, --steps, --solver, --batch-size, --device and --compile",
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
        "defaults mrr=35, wind=17.2",
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


def tame_library_logging(args: argparse.Namespace) -> None:
    """Quieten earth2studio's loguru sink (it is reconfigured at import, so call after)."""
    try:
        from loguru import logger as loguru_logger
    except ImportError:  # pragma: no cover - loguru comes with earth2studio
        return
    loguru_logger.remove()
    level = "DEBUG" if args.debug else "WARNING" if args.verbose else "ERROR"
    loguru_logger.add(sys.stderr, level=level, format="{level}: {message}")


@contextlib.contextmanager
def quiet_native_output(enabled: bool) -> Iterator[None]:
    """Silence stdout and stderr at the C level while heavy libraries import.

    warp (imported by physicsnemo) prints "Could not find or load the NVIDIA CUDA driver"
    from native code on every machine without an NVIDIA driver, ROCm ones included.
    It is harmless and unrelated to the user's run, so it is hidden unless --debug.
    Python exceptions raised by the import still propagate and are reported.
    """
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def import_model_stack(args: argparse.Namespace) -> None:
    """Import earth2studio's CorrDiff (15-25 s) once, quietly, then tame its logging."""
    with quiet_native_output(not args.debug):
        import earth2studio.models.dx  # noqa: F401
    tame_library_logging(args)


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


@dataclass(frozen=True)
class RunRequest:
    """Everything a run needs, validated."""

    times: list[datetime]
    lead_times: list[int] | None
    source: Any
    lowres_variables: list[str]
    output: Path
    settings: dict[str, Any]
    sampler: SamplerSettings


def default_output(times: Sequence[datetime], forecast: bool = False) -> Path:
    """``outputs/corrdiff-<first>[_<last>][-forecast].zarr``.

    Forecasts get their own suffix, so downscaling the 12Z forecast never collides with
    (or is refused because of) the 12Z analysis downscaled before it.
    """
    first = times_mod.time_label(times[0])
    span = first if len(times) == 1 else f"{first}_{times_mod.time_label(times[-1])}"
    return Path("outputs") / f"corrdiff-{span}{'-forecast' if forecast else ''}.zarr"


def _check_writable_location(path: Path, flag: str) -> None:
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


def validate_run(args: argparse.Namespace) -> RunRequest:
    """Check every argument before anything is fetched, loaded or written."""
    from corrdiff_tools import model as model_mod
    from corrdiff_tools import sources

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
    lead_times = None
    if source.is_forecast:
        lead_times = times_mod.parse_lead_times(args.lead_time or ["0"])
    file_variables = None
    if source.kind in ("gfs", "gfs-forecast"):
        for time in times:
            times_mod.check_gfs_time(time)
    elif source.kind == "era5":
        for time in times:
            times_mod.check_era5_time(time)
    elif source.path is not None:
        file_variables = sources.check_file_source(source.path, times)
    model_mod.check_package_spec(args.model_package)
    if args.threshold and not args.stats:
        raise UsageError(
            f"--threshold {args.threshold[0]} only applies with --stats: add --stats, or "
            "set thresholds when plotting (plot_corrdiff.py --stats --threshold ...)"
        )
    thresholds = parse_thresholds(args.threshold) if args.stats else None
    sampler = sampler_settings(args)

    from corrdiff_tools.downscale import GEOMETRY

    settings = {
        "times": [times_mod.format_time(t) for t in times],
        "lead_times": lead_times,
        "samples": args.samples,
        "seed": args.seed,
        "sampler": sampler.to_json(),
        "geometry": GEOMETRY,
        # By resolved path and content, not by spelling (see sources.file_identity).
        "source": (
            sources.file_identity(source.path, times) if source.path is not None else source.label
        ),
        "model_package": model_mod.package_identity(args.model_package),
        "stats": thresholds,
    }
    output = args.output or default_output(times, source.is_forecast)
    if output.is_symlink():
        # --overwrite and --resume act on the store itself, not on the link to it.
        output = output.resolve()
    if args.prefetch is not None:
        if source.kind not in ("gfs", "era5"):
            raise UsageError(
                f"--prefetch downloads from --source gfs or era5, not {args.source}: "
                "forecasts and files cannot be prefetched into an analysis file"
            )
        if args.prefetch.exists():
            raise UsageError(
                f"--prefetch {args.prefetch} already exists: remove it or pick another name"
            )
        _check_writable_location(args.prefetch, "--prefetch")
    else:
        _check_output(output, args, settings)
    return RunRequest(
        times=times,
        lead_times=lead_times,
        source=source,
        lowres_variables=sources.lowres_variables(source, file_variables),
        output=output,
        settings=settings,
        sampler=sampler,
    )


def _check_output(output: Path, args: argparse.Namespace, settings: dict[str, Any]) -> None:
    from corrdiff_tools import store

    _check_writable_location(output, "--output")
    if not output.exists():
        return
    if not store.is_store(output):
        raise UsageError(
            f"--output {output} exists and is not a corrdiff-tools store; refusing to touch it: "
            "choose another --output"
        )
    if args.overwrite:
        return
    if not args.resume:
        raise UsageError(
            f"--output {output} already exists: pass --resume to complete it, --overwrite to "
            "replace it, or choose another --output"
        )
    mismatch = store.settings_mismatch(store.read_settings(output) or {}, settings)
    if mismatch:
        raise UsageError(
            f"--resume: {output} was made with other settings ({'; '.join(mismatch)}): "
            "rerun with the same settings, or use --overwrite or another --output"
        )


def _provenance(
    args: argparse.Namespace, request: RunRequest, device: str, precision: str
) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    from corrdiff_tools.downscale import GEOMETRY

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"

    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    argv = args.argv if hasattr(args, "argv") else sys.argv[1:]
    return {
        "Conventions": "CF-1.10",
        "title": "CorrDiff Taiwan km-scale downscaled ensemble",
        "institution": "produced with corrdiff-tools",
        "source": "NVIDIA CorrDiff Taiwan (Mardani et al. 2024, arXiv:2309.15214)",
        "references": "https://arxiv.org/abs/2309.15214",
        "history": f"{now} run_corrdiff.py {shlex.join(argv)}",
        "corrdiff_tools_version": __version__,
        "earth2studio_version": ver("earth2studio"),
        "physicsnemo_version": ver("nvidia-physicsnemo"),
        "torch_version": ver("torch"),
        "model_package": args.model_package,
        "input_source": (
            str(request.source.path.resolve())
            if request.source.path is not None
            else request.source.label
        ),
        "seed": args.seed,
        **_sampler_attrs(request.sampler),
        "geometry": GEOMETRY,
        "device": device,
        "precision": precision,
        "conditioning": "diffusion: [noisy(4), input(12), grid(4)], no regression-mean "
        "conditioning (as the checkpoint was trained)",
    }


def _sampler_attrs(settings: SamplerSettings) -> dict[str, Any]:
    """The sampler's settings as store attributes, under physicsnemo's config names."""
    from corrdiff_tools.sampling import PRESETS

    values = settings.to_json()
    preset = next((name for name, known in PRESETS.items() if known == settings), "custom")
    return {
        "sampler": values["sampler"],
        "sampler_preset": preset,
        "steps": values["steps"],
        "solver": values["solver"],
        "network_calls_per_sample": settings.calls_per_sample,
        "sigma_min": values["sigma_min"],
        "sigma_max": values["sigma_max"],
        "rho": values["rho"],
        "S_churn": values["s_churn"],
        "S_min": values["s_min"],
        "S_max": values["s_max"],
        "S_noise": values["s_noise"],
    }


def _default_batch_size(args: argparse.Namespace, device: Any) -> tuple[int, bool]:
    """``--batch-size``, or all samples on CPU / what fits in free GPU memory."""
    if args.batch_size is not None:
        return args.batch_size, False
    if not device.is_gpu:
        return args.samples, False
    import torch

    free, _ = torch.cuda.mem_get_info(device.device)
    # About 1.7 GiB per sample in float16 at full width (the blog's 7.5 GB for 4 samples,
    # weights included); keep a quarter of free memory in reserve.
    per_sample = int(1.7 * 2**30)
    return max(1, min(args.samples, int(free * 0.75) // per_sample)), True


def _benchmark(args: argparse.Namespace) -> int:
    """``--benchmark``: time a random-weight model of the published shape, write nothing."""
    from corrdiff_tools import benchmark, speed
    from corrdiff_tools import model as model_mod

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
    device = model_mod.resolve_device(args.device)
    speed.tune_host_allocator()
    logger.info("device: %s", device.description)
    import_model_stack(args)
    batch_size, _ = _default_batch_size(args, device)
    result = benchmark.run_benchmark(
        device,
        args.benchmark_size,
        samples=args.samples,
        batch_size=batch_size,
        sampler_settings=sampler_settings(args),
        compile_nets=args.compile,
        seed=args.seed,
    )
    benchmark.report(result, args.peak_tflops)
    return 0


def _run(args: argparse.Namespace) -> int:
    from corrdiff_tools import distributed
    from corrdiff_tools import model as model_mod

    if args.benchmark:
        return _benchmark(args)
    request = validate_run(args)
    rank, world, local_rank = distributed.launched_ranks()
    device_spec = args.device
    if world > 1 and device_spec in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            device_spec = f"cuda:{local_rank}"  # one GPU per rank, pinned by LOCAL_RANK
    device = model_mod.resolve_device(device_spec)
    if rank != 0:
        logger.setLevel(max(logger.level, logging.WARNING))  # one report, from rank 0
    # Every rank has validated before any joins, so none can see another's store as
    # "already existing"; joining the group is the first synchronisation point.
    from corrdiff_tools import store
    from corrdiff_tools.lock import StoreLock

    lock = StoreLock(request.output) if rank == 0 and args.prefetch is None else None
    if lock is not None:
        try:
            lock.acquire()  # after validation: a refused run has written nothing
        except ValueError as err:
            raise UsageError(str(err)) from None
    try:
        if lock is not None:
            store.clean_leftovers(request.output)  # of a run killed mid-creation
        ranks = distributed.start(device.is_gpu)
        try:
            return _run_ranked(args, request, device, ranks)
        finally:
            ranks.close()
    finally:
        if lock is not None:
            lock.release()


def _run_ranked(args: argparse.Namespace, request: RunRequest, device: Any, ranks: Any) -> int:
    from corrdiff_tools import distributed
    from corrdiff_tools import model as model_mod

    wall_start = clock.perf_counter()
    logger.info(
        "device: %s%s",
        device.description,
        f" (rank {ranks.rank} of {ranks.world})" if ranks.enabled else "",
    )
    import_model_stack(args)

    from corrdiff_tools import sources

    source = sources.build_source(request.source, request.times) if ranks.is_root else None
    extras = [v for v in request.lowres_variables if v not in sources.INPUT_VARIABLES]

    if args.prefetch is not None:
        code = _prefetch(args, request, source, extras) if ranks.is_root else 0
        ranks.barrier()
        return code

    from corrdiff_tools import speed

    speed.tune_host_allocator()  # before the first large allocation (see speed.py)
    load_start = clock.perf_counter()
    if ranks.enabled and ranks.is_root:
        model_mod.prepare_package(args.model_package)  # extract once, before the others load
    ranks.barrier()
    corrdiff, precision = model_mod.load_corrdiff(args.model_package, device)
    load_time = clock.perf_counter() - load_start
    logger.info("model loaded in %.1f s (%s)", load_time, precision)
    if args.compile:
        speed.compile_networks(corrdiff)
        logger.info("networks will be compiled on their first call (slow once)")

    from corrdiff_tools import downscale, store

    sampler = downscale.CorrDiffSampler(corrdiff, request.sampler)
    logger.info("%s", request.sampler.describe())
    layout = store.StoreLayout(
        times=request.times,
        samples=args.samples,
        lat=sampler.lat,
        lon=sampler.lon,
        lead_times=request.lead_times,
        lowres_variables=request.lowres_variables,
        statistics=request.settings["stats"],
    )
    output = request.output
    resuming = args.resume and output.exists()
    if resuming and ranks.is_root:
        _recompute_damaged(store.StoreWriter(output))
    ranks.barrier()  # every rank plans from the verified flags
    done = store.StoreWriter(output).completed() if resuming else None
    leads = request.lead_times or [0]
    jobs = []
    dealt = 0
    for ti, time in enumerate(request.times):
        for li, lead in enumerate(leads):
            index = (ti,) if request.lead_times is None else (ti, li)
            todo = tuple(
                s for s in range(args.samples) if done is None or not bool(done[(*index, s)])
            )
            if todo:
                # Every rank keeps every job (rank 0 fetches and broadcasts its inputs),
                # even one whose share of samples here is empty.
                mine = distributed.share(todo, ranks, dealt)
                # The rank holding the first sample stores the regression mean.
                jobs.append(downscale.Job(index, time, lead, mine, todo[0] in mine))
                dealt += len(todo)
    total = sum(len(job.samples) for job in jobs)
    if resuming:
        left = sum(ranks.gather(total))
        logger.info("resuming %s: %d sample(s) left to compute", output, left)
        if left == 0:
            logger.info("nothing to do: %s is complete", output)
            _store_statistics(output, request.settings["stats"], ranks)
            return 0

    attrs = _provenance(args, request, device.description, precision)

    def open_writer() -> downscale.Writer:
        if ranks.is_root and not resuming:
            if output.exists() and args.overwrite:
                logger.info("replacing %s (--overwrite)", output)
            output.parent.mkdir(parents=True, exist_ok=True)
            store.create_store(output, layout, attrs, request.settings, replace=args.overwrite)
        ranks.barrier()  # every array exists before any rank writes
        writer = store.StoreWriter(output)
        return writer if ranks.is_root else _SamplesOnly(writer)

    def fetch(job: downscale.Job) -> dict[str, Any]:
        return sources.fetch_inputs(source, request.source, job.time, job.lead_hours, extras)

    batch_size, adaptive = _default_batch_size(args, device)
    if device.is_gpu:
        import torch

        torch.cuda.reset_peak_memory_stats(device.device)
    with _progress(total, args) as bar:
        timings = downscale.downscale(
            jobs,
            distributed.broadcast_fetch(fetch, ranks),
            sampler,
            open_writer,
            seed=args.seed,
            batch_size=batch_size,
            adaptive_batch=adaptive,
            progress=bar.update,
            overlap_fetch=request.source.kind != "file",
        )
    _store_statistics(output, request.settings["stats"], ranks)
    wall = clock.perf_counter() - wall_start
    per_rank = ranks.gather((timings.samples, timings.inference, _peak_memory(device)))
    logger.info(
        "done: %d sample(s) for %d time(s) in %.1f s (fetch %.1f s, load %.1f s, inference "
        "%.1f s, write %.1f s); peak %s memory %s; wrote %s",
        sum(samples for samples, _, _ in per_rank),
        len(jobs),
        wall,
        timings.fetch,
        load_time,
        timings.inference,
        timings.write,
        "device" if device.is_gpu else "host",
        _peak_memory(device),
        output,
    )
    if ranks.enabled:
        for rank, (samples, seconds, peak) in enumerate(per_rank):
            rate = samples / seconds if seconds > 0 else 0.0
            logger.info(
                "  rank %d: %d sample(s), %.1f s inference, %.3f samples/s, peak %s",
                rank,
                samples,
                seconds,
                rate,
                peak,
            )
    return 0


def _recompute_damaged(writer: Any) -> None:
    """``--resume`` trusts no completion flag it has not read back (see StoreWriter.damaged)."""
    damaged = writer.damaged()
    if not damaged:
        return
    logger.warning(
        "%d piece(s) marked complete in %s are missing or unreadable (first: %s); "
        "computing them again",
        len(damaged),
        writer.path,
        damaged[0][1],
    )
    writer.unmark([piece for piece, _ in damaged])


def _store_statistics(output: Path, thresholds: dict[str, float] | None, ranks: Any) -> None:
    """``--stats``: once every rank's samples are on disk, rank 0 fills the statistics."""
    from corrdiff_tools import store

    if thresholds is None:
        return
    ranks.barrier()
    if ranks.is_root:
        written, waiting = store.write_statistics(output, thresholds)
        logger.info(
            "ensemble statistics stored for %d time(s)%s",
            written,
            f"; {waiting} incomplete, filled by a later --resume" if waiting else "",
        )


class _SamplesOnly:
    """A store writer for ranks other than 0: inputs are written by rank 0 alone."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer

    def write_inputs(self, index: tuple[int, ...], fields: Any) -> None:
        """Leave the inputs to rank 0."""

    def write_regression(self, index: tuple[int, ...], fields: Any) -> None:
        """Write the regression mean of a job whose first sample is this rank's."""
        self._writer.write_regression(index, fields)

    def write_samples(self, index: tuple[int, ...], samples: Any, fields: Any) -> None:
        """Write this rank's samples."""
        self._writer.write_samples(index, samples, fields)


def _prefetch(args: argparse.Namespace, request: RunRequest, source: Any, extras: list[str]) -> int:
    from corrdiff_tools import model as model_mod
    from corrdiff_tools import sources

    fields = []
    for time in request.times:
        logger.info("fetching %s", times_mod.format_time(time))
        fields.append(sources.fetch_inputs(source, request.source, time, 0, extras))
    args.prefetch.parent.mkdir(parents=True, exist_ok=True)
    sources.write_input_file(args.prefetch, request.times, fields)
    logger.info("inputs for %d time(s) written to %s", len(request.times), args.prefetch)
    directory = model_mod.prepare_package(args.model_package)
    logger.info("model package ready in %s: offline, pass --model-package %s", directory, directory)
    return 0


def _peak_memory(device: Any) -> str:
    if device.is_gpu:
        import torch

        return f"{torch.cuda.max_memory_allocated(device.device) / 2**30:.2f} GiB"
    import resource

    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


@contextlib.contextmanager
def _progress(total: int, args: argparse.Namespace) -> Iterator[Any]:
    from tqdm import tqdm

    disable = (
        args.quiet or not sys.stderr.isatty() or os.environ.get("TQDM_DISABLE", "") not in ("", "0")
    )
    with tqdm(total=total, unit="sample", disable=disable, file=sys.stderr) as bar:
        yield bar


def run_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``run_corrdiff.py``; returns the exit code."""
    parser = build_run_parser()

    def body(args: argparse.Namespace) -> int:
        args.argv = list(sys.argv[1:] if argv is None else argv)
        return _run(args)

    return guarded(body, parser, resume_hint)(argv)


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
        "--lead-time", default="all", help="all (default) or hours, e.g. 6 or 0,6 (forecast stores)"
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
    parser.add_argument("--dpi", type=_positive_int("--dpi", minimum=20), default=100)
    parser.add_argument("--colormap", help="one matplotlib colormap for every map panel")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace images that already exist in --outdir"
    )
    parser.add_argument("--show", action="store_true", help="also open the figures in a window")
    parser.add_argument(
        "--jobs",
        type=_positive_int("--jobs"),
        help="render in this many processes (default: the cores available)",
    )
    _add_common_options(parser)
    return parser


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


def _select_times(text: str, dataset: Any) -> list[int]:
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


def _select_leads(text: str, dataset: Any) -> list[int | None]:
    if "lead_time" not in dataset.dims:
        if text.strip().lower() != "all":
            raise UsageError(f"--lead-time {text}: this store has no lead times (an analysis)")
        return [None]
    hours = [int(h) for h in dataset["lead_time"].values.astype("timedelta64[h]").astype(int)]
    if text.strip().lower() == "all":
        return list(range(len(hours)))
    chosen: list[int | None] = []
    for part in text.split(","):
        value = part.strip().removesuffix("h")
        if not (value.isascii() and value.isdigit()) or int(value) not in hours:
            raise UsageError(
                f"--lead-time {text}: {part.strip()} is not in the store, which holds "
                f"{', '.join(str(h) for h in hours)} h"
            )
        chosen.append(hours.index(int(value)))
    return chosen


def parse_thresholds(values: Sequence[str]) -> dict[str, float]:
    """``VAR=VALUE`` pairs over the defaults (mrr=35 dBZ, wind=17.2 m/s)."""
    from corrdiff_tools.plotting import DEFAULT_THRESHOLDS, THRESHOLD_VARIABLES

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


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _plot(args: argparse.Namespace) -> int:
    import numpy as np

    from corrdiff_tools import render, store

    if not args.store.exists():
        raise UsageError(f"STORE {args.store} does not exist: give the path of a .zarr store")
    try:
        dataset = store.open_store(args.store)
    except ValueError as err:
        raise UsageError(str(err)) from None
    times = _select_times(args.time, dataset)
    leads = _select_leads(args.lead_time, dataset)
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
    if args.plot_lowres and "lr_t2m" not in dataset:
        raise UsageError(
            f"--plot-lowres: {args.store} holds no low-resolution inputs (made by the blog's "
            "script?); rerun it with run_corrdiff.py, or drop --plot-lowres"
        )
    outdir = args.outdir or args.store.absolute().parent / f"{args.store.absolute().stem}-plots"
    if args.gif and not samples:
        raise UsageError("--gif animates samples: drop --sample none, or drop --gif")
    problems: dict[tuple[int, ...], str] = {}
    if "completed" in dataset:
        samples_ok = dataset["completed"].values.astype(bool)
        # Only the selected times (and lead times) are read back: the ones drawn.
        selected = np.zeros_like(samples_ok)
        for ti in times:
            for li in leads:
                selected[(ti,) if li is None else (ti, li)] = True
        problems = render.piece_problems(dataset, args.store, samples_ok & selected)
        for piece, why in problems.items():
            when = times_mod.format_time(
                np.datetime64(dataset["time"].values[piece[0]], "s").astype(datetime)
            )
            logger.warning(
                "skipping sample %d of %s%s: it is marked complete but %s; "
                "run_corrdiff.py --resume recomputes it",
                piece[-1],
                when,
                f" (lead index {piece[1]})" if len(piece) == 3 else "",
                why,
            )
            samples_ok[piece] = False
    else:
        # Stores from other tools have no completion record: a sample whose 2 m
        # temperature is missing everywhere was never written (or was lost).
        samples_ok = dataset["t2m"].notnull().any(dim=("y", "x")).values
    tasks = render.plan(
        dataset, times, leads, samples, outdir, args.format, args.plot_lowres, args.stats
    )
    if samples_ok is not None:
        kept = []
        for task in tasks:
            index = (
                (task.time_index,)
                if task.lead_index is None
                else (task.time_index, task.lead_index)
            )
            if task.kind == "sample" and not samples_ok[(*index, task.sample)]:
                logger.warning(
                    "skipping %s: that sample is not complete in the store", task.path.name
                )
                continue
            if task.kind == "stats" and not samples_ok[index].all():
                logger.warning("skipping %s: the ensemble is not complete", task.path.name)
                continue
            kept.append(task)
        tasks = kept
    gifs = _gif_paths(args, dataset, times, leads, outdir)
    entries, science = _evaluation_request(args, dataset, times, leads, samples_ok, outdir)
    from corrdiff_tools import evaluate

    targets = [task.path for task in tasks] + list(gifs.values())
    if science is not None:
        targets += evaluate.planned_paths(entries, science)
    existing = [path for path in targets if path.exists()]
    if existing and not args.overwrite:
        raise UsageError(
            f"{len(existing)} output file(s) already exist, e.g. {existing[0]}: pass --overwrite "
            "to replace them, or choose another --outdir"
        )
    _check_writable_location(outdir / "probe", "--outdir")
    if not tasks and science is None:
        if not samples:
            raise UsageError(
                "nothing to draw: --sample none with no --plot-lowres, --stats, --spectra, "
                "--pdf or --truth"
            )
        raise UsageError("nothing to draw: every selected sample is incomplete in the store")
    if not tasks:
        outdir.mkdir(parents=True, exist_ok=True)
        written = evaluate.evaluate(dataset, entries, science) if science else []
        logger.info("wrote %d file(s) to %s", len(written), outdir)
        return 0

    from corrdiff_tools.coastlines import load_coastlines

    coastlines = load_coastlines()
    context = render.RenderContext(
        store_path=args.store.absolute(),
        scales=render.colour_scales(
            dataset, args.plot_lowres, args.colormap, samples_ok if problems else None
        ),
        coastlines=coastlines.segments,
        thresholds=thresholds,
        fmt=args.format,
        dpi=args.dpi,
        frames=bool(gifs),
    )
    outdir.mkdir(parents=True, exist_ok=True)
    jobs = min(args.jobs or _available_cores(), len(tasks))
    with _progress(len(tasks), args) as bar:
        frames = render.render_all(tasks, context, jobs, progress=bar.update)
    from corrdiff_tools.animation import write_gif

    for key, path in gifs.items():
        sequence = [
            frame
            for task, frame in zip(tasks, frames, strict=True)
            if frame is not None and (task.time_index, task.lead_index) == key
        ]
        if sequence:
            write_gif(sequence, path, args.fps)
    written = evaluate.evaluate(dataset, entries, science) if science is not None else []
    logger.info(
        "wrote %d figure(s)%s%s to %s (coastlines: %s)",
        len(tasks),
        f" and {len(written)} evaluation file(s)" if written else "",
        f" and {len(gifs)} animation(s)" if gifs else "",
        outdir,
        coastlines.origin,
    )
    if args.show:
        _show(tasks, context)
    return 0


def _evaluation_request(
    args: argparse.Namespace,
    dataset: Any,
    times: Sequence[int],
    leads: Sequence[int | None],
    samples_ok: Any,
    outdir: Path,
) -> tuple[list[Any], Any]:
    """The (time, lead) entries and request for --spectra/--pdf/--truth, validated."""
    import numpy as np

    from corrdiff_tools import diagnostics, evaluate, render

    if not (args.spectra or args.pdf or args.truth is not None):
        return [], None
    entries = []
    for ti in times:
        for li in leads:
            index = (ti,) if li is None else (ti, li)
            whole = tuple(int(s) for s in np.flatnonzero(samples_ok[index]))
            valid, _ = render.valid_time(dataset, ti, li)
            if not whole:
                logger.warning("no complete sample at %s: left out of the evaluation", valid)
                continue
            entries.append(
                evaluate.Entry(
                    ti, li, whole, render.stem(dataset, ti, li), np.datetime64(valid, "ns")
                )
            )
    truth = None
    if args.truth is not None:
        if not args.truth.exists():
            raise UsageError(f"--truth {args.truth} does not exist: give a NetCDF or Zarr path")
        try:
            truth = diagnostics.load_truth(
                args.truth,
                np.asarray(dataset["lat"].values, dtype="float64"),
                np.asarray(dataset["lon"].values, dtype="float64"),
                [entry.valid_time for entry in entries],
            )
        except ValueError as err:
            raise UsageError(f"--truth {args.truth}: {err}") from None
    request = evaluate.Request(
        spectra=args.spectra,
        pdf=args.pdf,
        truth=truth,
        truth_path=args.truth,
        outdir=outdir,
        fmt=args.format,
        dpi=args.dpi,
    )
    return entries, request


def _gif_paths(
    args: argparse.Namespace, dataset: Any, times: list[int], leads: list[int | None], outdir: Path
) -> dict[tuple[int, int | None], Path]:
    from corrdiff_tools.render import stem

    if args.gif is None:
        return {}
    keys = [(t, lead) for t in times for lead in leads]
    if args.gif is True:
        return {key: outdir / f"{stem(dataset, *key)}.gif" for key in keys}
    path = Path(args.gif)
    if path.suffix.lower() != ".gif":
        raise UsageError(f"--gif {path}: the file name must end in .gif")
    if len(keys) == 1:
        return {keys[0]: path}
    return {
        key: path.with_name(f"{path.stem}-{stem(dataset, *key).removeprefix('corrdiff-')}.gif")
        for key in keys
    }


def _show(tasks: Sequence[Any], context: Any) -> None:
    import matplotlib.pyplot as plt

    from corrdiff_tools.render import build_figure

    for task in tasks:
        build_figure(task, context, fig=plt.figure())
    plt.show()


def plot_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``plot_corrdiff.py``; returns the exit code."""
    return guarded(_plot, build_plot_parser())(argv)
