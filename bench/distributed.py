"""Benchmark: the same job with 1 process and with N torchrun ranks, side by side.

Builds a random-weight package (``small``: the published depth at a quarter of the width,
or ``full``/``tiny``) and a synthetic input file, then times ``run_corrdiff.py`` end to end
(start-up, load, fetch, inference, write) as one process and as N ranks, checks that both
stores hold the same ensemble, and prints the wall times and their ratio.

    .venv/bin/python bench/distributed.py --width small --times 2 --samples 2 --steps 8

On CPU the ranks share the machine's cores: one process uses all of them through torch's
threads, N ranks get one thread each (torchrun sets OMP_NUM_THREADS=1). On GPUs each rank
gets its own device (``--device cuda``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr}")
    summary = [line for line in result.stderr.splitlines() if "done:" in line or "rank " in line]
    print("\n".join(f"    {line.strip()}" for line in summary))
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", choices=("tiny", "small", "full"), default="small")
    parser.add_argument("--times", type=int, default=2)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, help="keep the package and stores here")
    args = parser.parse_args()

    from workspace import prepare

    workdir, package, inputs, times = prepare(
        args.workdir, args.width, args.times, "corrdiff-bench-"
    )
    env = {**os.environ, "CORRDIFF_TOOLS_CACHE": str(workdir / "cache"), "TQDM_DISABLE": "1"}
    job = [
        f"{times[0]:%Y-%m-%dT%H}/{times[-1]:%Y-%m-%dT%H}",
        "--samples", str(args.samples), "--steps", str(args.steps), "--source", str(inputs),
        "--model-package", str(package), "--device", args.device,
    ]  # fmt: skip
    script = str(ROOT / "run_corrdiff.py")
    # Warm the package cache so neither side pays the one-time extraction.
    os.environ["CORRDIFF_TOOLS_CACHE"] = env["CORRDIFF_TOOLS_CACHE"]
    from corrdiff_tools.model import prepare_package

    prepare_package(str(package))

    print(
        f"job: {args.times} time(s) x {args.samples} sample(s), {args.steps} steps, "
        f"width {args.width}"
    )
    print("1 process:")
    single = run(
        [sys.executable, script, *job, "--output", str(workdir / "one.zarr"), "--overwrite"], env
    )
    print(f"{args.ranks} ranks (torchrun):")
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.ranks}",
    ]
    ranked = run(
        [*launcher, script, *job, "--output", str(workdir / "many.zarr"), "--overwrite"], env
    )

    import xarray as xr

    one = xr.open_zarr(workdir / "one.zarr").load()
    many = xr.open_zarr(workdir / "many.zarr").load()
    worst = max(
        float(np.max(np.abs(one[v].values - many[v].values)))
        for v in ("mrr", "t2m", "u10m", "v10m")
    )
    pieces = args.times * args.samples
    print()
    print("| configuration | wall s | samples/s |")
    print("| --- | --- | --- |")
    print(f"| 1 process | {single:.1f} | {pieces / single:.3f} |")
    print(f"| {args.ranks} ranks | {ranked:.1f} | {pieces / ranked:.3f} |")
    print(f"speed-up {single / ranked:.2f}x; largest difference between the stores {worst:.2e}")


if __name__ == "__main__":
    main()
