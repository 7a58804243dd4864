"""What the side-by-side benchmarks share: a work directory, a package, an input file."""

from __future__ import annotations

import argparse
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

#: The first of the benchmark times (Typhoon Gaemi); the others follow every 6 h.
FIRST_TIME = datetime(2024, 7, 24, 0)
#: Package widths (``corrdiff_tools.synthetic.WIDTHS``), narrowest first.
WIDTHS = ("tiny", "narrow", "small", "full")
#: Environment for the benchmarked processes: no progress bars, no warnings on stderr.
QUIET = {"TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}


def add_job_options(parser: argparse.ArgumentParser, samples: int, device_help: str) -> None:
    """The job every side-by-side benchmark runs: package width, samples, steps, device."""
    parser.add_argument("--width", choices=WIDTHS, default="narrow")
    parser.add_argument("--samples", type=int, default=samples)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cpu", help=device_help)


def prepare(
    workdir: Path | None, width: str, count: int, prefix: str
) -> tuple[Path, Path, Path, list[datetime]]:
    """A work directory with a random-weight package and a synthetic input file.

    The directory is kept if given (the package is built once in it); the input file
    holds ``count`` times 6 h apart. Returns the work directory, the package directory,
    the input file and the times.
    """
    from corrdiff_tools.synthetic import build_package, synthetic_inputs

    workdir = workdir or Path(tempfile.mkdtemp(prefix=prefix))
    workdir.mkdir(parents=True, exist_ok=True)
    package = workdir / f"package-{width}"
    if not (package / "corrdiff_inference_package.zip").is_file():
        build_package(package, width=width, seed=0)
    times = [FIRST_TIME + timedelta(hours=6 * i) for i in range(count)]
    inputs = workdir / "inputs.nc"
    synthetic_inputs(times).to_netcdf(inputs)
    return workdir, package, inputs, times
