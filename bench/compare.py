"""Benchmark: the blog's way against our run tool, side by side, in one run.

Builds one random-weight package in the published layout and one synthetic input file,
then runs each job both ways as fresh processes and times them end to end (start-up,
imports, load, fetch, inference, write):

* the blog's way (``bench/blog_way.py``): one process per time, ``load_model`` (unzip)
  every time, earth2studio's ``CorrDiffTaiwan`` call, ``ZarrBackend``;
* ours: one ``run_corrdiff.py`` process for all times, package extracted once (into a
  fresh cache, so that one-time cost is counted), the hot-path levers of ``speed.py``.

Jobs: 1 time x 4 samples and 4 times x 4 samples, 8 Euler steps. Then peak host memory
of our tool for 2 and for 16 samples at ``--batch-size 2`` (steps do not change memory,
so those two runs use 2 steps to save time).

    .venv/bin/python bench/compare.py                      # CPU, narrow width, ~12 min
    .venv/bin/python bench/compare.py --width full --device cuda   # on a GPU

``narrow`` is the published depth at an eighth of the width (16 channels): on a 2-core CPU
one diffusion call costs about 1.3 s, so the comparison finishes in minutes. Both sides
always use the same package, input file, samples and steps.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workspace import QUIET, add_job_options, prepare  # noqa: E402 - bench/ is the script's dir

#: Runs a command and reports its peak resident memory (its own and its children's).
MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "print(f'PEAK_RSS_KIB {peak}', file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def run(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one process, run to completion."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, *command],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr}")
    match = re.search(r"PEAK_RSS_KIB (\d+)", result.stderr)
    return elapsed, int(match.group(1)) * 1024 if match else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_job_options(parser, samples=4, device_help="for our tool; the blog picks cuda if any")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--workdir", type=Path, help="keep the package and stores here")
    args = parser.parse_args()

    workdir, source_package, inputs, times = prepare(
        args.workdir, args.width, 4, "corrdiff-compare-"
    )
    env = {**os.environ, **QUIET}
    python = sys.executable
    print(
        f"width {args.width}, {args.samples} samples, {args.steps} Euler steps, "
        f"device {args.device}; workdir {workdir}"
    )

    def blog(job_times: list[datetime]) -> float:
        total = 0.0
        for when in job_times:
            # A private copy: load_model unzips next to the zip, as it would in the blog.
            package = workdir / "blog-package"
            shutil.rmtree(package, ignore_errors=True)
            shutil.copytree(source_package, package)
            seconds, _ = run(
                [
                    python, str(ROOT / "bench" / "blog_way.py"), f"{when:%Y-%m-%dT%H:%M}",
                    "--samples", str(args.samples), "--steps", str(args.steps),
                    "--package", str(package), "--input", str(inputs),
                    "--output", str(workdir / "blog.zarr"),
                ],
                env,
            )  # fmt: skip
            total += seconds
        return total

    def ours(
        job_times: list[datetime], samples: int, steps: int, extra: list[str]
    ) -> tuple[float, int]:
        cache = workdir / "cache"
        shutil.rmtree(cache, ignore_errors=True)  # pay the one-time extraction, as a first run
        return run(
            [
                python, str(ROOT / "run_corrdiff.py"), *[f"{t:%Y-%m-%dT%H}" for t in job_times],
                "--samples", str(samples), "--steps", str(steps), "--source", str(inputs),
                "--model-package", str(source_package), "--device", args.device,
                "--output", str(workdir / "ours.zarr"), "--overwrite", *extra,
            ],
            {**env, "CORRDIFF_TOOLS_CACHE": str(cache)},
        )  # fmt: skip

    rows = []
    for label, job_times in (("1 time", times[:1]), ("4 times", times)):
        blog_seconds = blog(job_times)
        our_seconds, _ = ours(job_times, args.samples, args.steps, [])
        rows.append((f"{label} x {args.samples} samples", blog_seconds, our_seconds))
        print(f"  {rows[-1][0]}: blog {blog_seconds:.1f} s, ours {our_seconds:.1f} s", flush=True)

    print()
    print("| job | blog's way, s | run_corrdiff.py, s | speed-up |")
    print("| --- | --- | --- | --- |")
    for label, blog_seconds, our_seconds in rows:
        ratio = blog_seconds / our_seconds
        print(f"| {label} | {blog_seconds:.1f} | {our_seconds:.1f} | {ratio:.2f}x |")

    if args.skip_memory:
        return
    peaks = {}
    for samples in (2, 16):
        _, peaks[samples] = ours(times[:1], samples, 2, ["--batch-size", "2"])
    print()
    print("| run_corrdiff.py, 1 time, --batch-size 2 | peak RSS, GiB |")
    print("| --- | --- |")
    for samples, peak in peaks.items():
        print(f"| {samples} samples | {peak / 2**30:.2f} |")
    print(f"ratio 16 / 2 samples: {peaks[16] / peaks[2]:.2f}")


if __name__ == "__main__":
    main()
