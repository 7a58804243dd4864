"""Benchmark: what --precision costs and changes, side by side against fp32, in one run.

Builds one package of the narrow width (published depth, 16 channels) with its last
convolutions re-drawn (``synthetic.enliven``: a random SongUNet's output layer starts near
zero, which would hide any difference in the network's arithmetic), then runs
``run_corrdiff.py`` once per precision on the same inputs, seeds and noise, and compares
each store with the fp32 one:

* speed: the run's inference seconds (network calls and sampler);
* max and RMS difference per variable, for the samples and for the regression mean;
* CRPS against a reference field, and its change: the reference is one more member drawn
  in fp32 with another seed (no observations offline: a draw from the model's own
  distribution, so what matters is the change, not the score);
* power spectra (mean over members): the largest relative change at any wavenumber;
* PDFs (members pooled, 80 common bins): the total-variation distance to fp32's.

    .venv/bin/python bench/precision.py                          # CPU: fp32 vs bf16
    .venv/bin/python bench/precision.py --device cuda --width full   # GPU: also fp16
    # the published weights on your own inputs (a run_corrdiff.py --prefetch file):
    .venv/bin/python bench/precision.py --device cuda --model-package DIR --source FILE \
        --time 2024-07-24T12
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workspace import FIRST_TIME, QUIET, add_job_options  # noqa: E402 - bench/ is the script's dir

VARIABLES = ("mrr", "t2m", "u10m", "v10m")
INFERENCE = re.compile(r"inference (?P<seconds>[\d.]+) s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_job_options(parser, samples=4, device_help="cpu, cuda or cuda:N")
    parser.add_argument("--workdir", type=Path, help="keep the package and stores here")
    parser.add_argument("--model-package", help="a real package instead of a random one")
    parser.add_argument("--source", type=Path, help="an input file instead of synthetic inputs")
    parser.add_argument("--time", help="the time to downscale from --source (YYYY-MM-DDTHH)")
    args = parser.parse_args()

    import xarray as xr

    from corrdiff_tools import diagnostics, synthetic

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="corrdiff-precision-"))
    workdir.mkdir(parents=True, exist_ok=True)
    package = Path(args.model_package or workdir / f"package-{args.width}-lively")
    if not args.model_package and not (package / "corrdiff_inference_package.zip").is_file():
        networks = synthetic.enliven(synthetic.build_networks(args.width, seed=0))
        synthetic.build_package(package, networks=networks)
    inputs = args.source or workdir / "inputs.nc"
    when = args.time or f"{FIRST_TIME:%Y-%m-%dT%H}"
    if args.source is None:
        synthetic.synthetic_inputs([FIRST_TIME]).to_netcdf(inputs)
    precisions = ["fp32", "bf16"] + (["fp16"] if args.device.startswith("cuda") else [])
    env = {**os.environ, **QUIET}

    def run(name: str, precision: str, samples: int, seed: int) -> tuple[xr.Dataset, float]:
        output = workdir / f"{name}.zarr"
        done = subprocess.run(
            [
                sys.executable, str(ROOT / "run_corrdiff.py"), when,
                "--samples", str(samples), "--steps", str(args.steps), "--seed", str(seed),
                "--source", str(inputs), "--model-package", str(package),
                "--device", args.device, "--precision", precision,
                "--output", str(output), "--overwrite",
            ],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"{precision} failed:\n{done.stderr}")
        match = INFERENCE.search(done.stderr.strip().splitlines()[-1])
        seconds = float(match["seconds"]) if match else float("nan")
        print(f"  {name}: inference {seconds:.1f} s", flush=True)
        return xr.open_zarr(output).load(), seconds

    reference, _ = run("reference-fp32-seed1", "fp32", 1, seed=1)
    stores = {p: run(p, p, args.samples, seed=0) for p in precisions}
    base, base_seconds = stores["fp32"]
    spacing = diagnostics.grid_spacing_km(base["lat"].values, base["lon"].values)

    print()
    what = args.model_package or f"{args.width} width (random, enlivened)"
    print(
        f"{what}, 1 time x {args.samples} samples, {args.steps} Euler steps, "
        f"device {args.device}; every figure against fp32 on the same seeds and noise"
    )
    print()
    print("| precision | inference, s | vs fp32 |")
    print("| --- | --- | --- |")
    for precision, (_, seconds) in stores.items():
        print(f"| {precision} | {seconds:.1f} | {base_seconds / seconds:.2f}x |")
    print()
    print(
        "| precision | variable | max abs diff (samples) | RMS diff (samples) | "
        "max abs diff (regression) | field std | CRPS fp32 | CRPS change | "
        "largest spectrum change | PDF total variation |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for precision, (store, _) in stores.items():
        if precision == "fp32":
            continue
        for name in VARIABLES:
            ours, theirs = store[name].values[0], base[name].values[0]  # (sample, y, x)
            difference = ours - theirs
            regression = store[f"{name}_regression"].values - base[f"{name}_regression"].values
            truth = reference[name].values[0, 0]
            crps = {
                key: diagnostics.score(truth, members).crps
                for key, members in (("fp32", theirs), (precision, ours))
            }
            spectra = [
                np.mean([diagnostics.power_spectrum(m, spacing)[1] for m in members], axis=0)
                for members in (theirs, ours)
            ]
            spectrum_change = float(np.max(np.abs(spectra[1] / spectra[0] - 1)))
            bins = diagnostics.common_bins([theirs, ours])
            width = np.diff(bins)
            variation = 0.5 * float(
                np.sum(
                    np.abs(diagnostics.density(ours, bins) - diagnostics.density(theirs, bins))
                    * width
                )
            )
            print(
                f"| {precision} | {name} | {np.abs(difference).max():.3g} | "
                f"{np.sqrt(np.mean(difference**2)):.3g} | {np.abs(regression).max():.3g} | "
                f"{theirs.std():.3g} | {crps['fp32']:.4g} | "
                f"{crps[precision] - crps['fp32']:+.2g} | {spectrum_change:.2%} | "
                f"{variation:.4f} |"
            )


if __name__ == "__main__":
    main()
