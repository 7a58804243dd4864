"""The GPU kit's measurements: one script, one output folder, a JSON and a Markdown table.

On the lent GPU machine, after ``bench/kit/wheelhouse.py install`` (8 minutes at most):

    PYTHONPATH=/tmp/kit-site:$PWD python3 bench/kit/measure.py --out "$OUT"

and on a CPU, as a rehearsal of every stage at the tiny width (``bench/kit/rehearse.sh``):

    PYTHONPATH=SITE:$PWD python bench/kit/measure.py --cpu --out DIR

Stages, each inside its share of ``--budget`` (what does not fit is reported as skipped):

1. ``device``: the machine, torch, the stand-ins in use;
2. ``tests``: the ``gpu``-marked tests (fp16 and bf16 against fp32 within their bounds,
   batch sizing, halving on a real out-of-memory, a whole run on the device), their
   measured values from the JUnit report;
3. ``benchmark``: the published architecture (random weights) in fp16, bf16 and fp32,
   1, 4 and 16 samples, then compiled: per call, per sample, samples/s, TFLOP/s against
   the 4.09 TFLOP per call torch counts, the fraction of the device's dense peak, peak
   device memory;
4. ``startup``: time to the first sample, cold processes, the blog's way against
   ``run_corrdiff.py`` (``bench/startup.py``, full-size package, 1 time x 4 samples);
5. ``paper``: the paper preset's cost per sample against the blog preset's;
6. ``torchrun``: two ranks, where there are two GPUs (NCCL refuses two ranks on one GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

#: Dense tensor throughput of known devices, TFLOP/s, by precision (NVIDIA's data sheets;
#: float32 convolutions run as TF32 under torch's default cuDNN settings).
PEAKS = {
    "H200": {"float16": 989.4, "bfloat16": 989.4, "float32": 494.7},
    "H100": {"float16": 989.4, "bfloat16": 989.4, "float32": 494.7},
    "MI300X": {"float16": 1307.4, "bfloat16": 1307.4, "float32": 653.7},
}
#: Share of the budget each stage may use (the rest is slack for the last one).
SHARES = {"device": 0.01, "tests": 0.2, "benchmark": 0.35, "startup": 0.3, "paper": 0.07,
          "torchrun": 0.07}  # fmt: skip


class Stage:
    """A deadline for one stage, and the subprocess runner that honours it."""

    def __init__(self, name: str, seconds: float, out: Path) -> None:
        self.name = name
        self.deadline = time.monotonic() + seconds
        self.out = out

    @property
    def left(self) -> float:
        """Seconds left for this stage."""
        return self.deadline - time.monotonic()

    def run(self, command: list[str], log: str, env: dict[str, str] | None = None) -> int:
        """Run ``command`` with what is left of the stage as its timeout; log to ``log``."""
        if self.left < 5:
            raise TimeoutError(f"no time left for {' '.join(command[:3])}")
        with (self.out / log).open("a") as handle:
            handle.write(f"$ {' '.join(command)}\n")
            handle.flush()
            try:
                done = subprocess.run(
                    command,
                    cwd=ROOT,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **(env or {})},
                    timeout=self.left,
                    check=False,
                )
            except subprocess.TimeoutExpired as err:
                raise TimeoutError(f"{command[1:3]} ran past the stage's time") from err
        return done.returncode


def device_stage(args: argparse.Namespace, stage: Stage) -> dict[str, Any]:
    """What machine this is."""
    import torch

    from corrdiff_tools import model

    device = model.resolve_device("cpu" if args.cpu else "cuda")
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "hip": torch.version.hip,
        "device": device.description,
        "stood_in": sorted(
            name
            for name, module in sys.modules.items()
            if type(module).__name__ == "StandInModule" and "." not in name
        ),
    }
    if device.is_gpu:
        props = torch.cuda.get_device_properties(device.device)
        info |= {
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "gpus": torch.cuda.device_count(),
        }
    return info


def tests_stage(args: argparse.Namespace, stage: Stage) -> dict[str, Any]:
    """The gpu-marked tests (on a CPU: a few fast ones, to prove the suite runs in the kit)."""
    report = stage.out / "tests.xml"
    if args.cpu:
        selection = ["-m", "not gpu and not slow and not network", "tests/test_benchmark.py",
                     "tests/test_precision.py", "-k", "benchmark or bf16 or fp32"]  # fmt: skip
    else:
        selection = ["-m", "gpu", "tests/test_gpu.py", "tests/test_precision.py"]
    code = stage.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-q",
         "-rfE", f"--junitxml={report}", *selection],
        "tests.log",
    )  # fmt: skip
    cases = []
    # pytest wrote this report a moment ago: not untrusted input.
    for case in ElementTree.parse(report).getroot().iter("testcase"):  # noqa: S314
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag
        values = {p.get("name"): p.get("value") for p in case.iter("property")}
        cases.append({"test": case.get("name"), "outcome": outcome,
                      "seconds": float(case.get("time", 0)), "measured": values})  # fmt: skip
    return {"exit_code": code, "cases": cases}


def _peak(description: str, precision: str) -> float | None:
    return next(
        (peaks.get(precision) for name, peaks in PEAKS.items() if name in description), None
    )


def benchmark_stage(args: argparse.Namespace, stage: Stage) -> dict[str, Any]:
    """Load each precision once; time 1, 4 and 16 samples, then compiled."""
    import torch

    from corrdiff_tools import benchmark, model, speed
    from corrdiff_tools.sampling import PRESETS

    device = model.resolve_device("cpu" if args.cpu else "cuda")
    precisions = ("fp32", "bf16") if args.cpu else ("fp16", "bf16", "fp32")
    sizes = (1, 2) if args.cpu else (1, 4, 16)
    compiled = () if args.cpu else (("fp16", (4, 16)), ("bf16", (4,)))
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    plan = [(p, False, sizes) for p in precisions] + [(p, True, s) for p, s in compiled]
    for precision, compile_nets, counts in plan:
        label = f"{precision}{' compiled' if compile_nets else ''}"
        if stage.left < (60 if compile_nets else 15):
            skipped.append(f"{label}: out of time")
            continue
        try:
            loaded, dtype = model.load_corrdiff(str(args.package), device, precision)
            if compile_nets:
                speed.compile_networks(loaded)
            for samples in counts:
                if stage.left < 10:
                    skipped.append(f"{label}, {samples} samples: out of time")
                    continue
                batch, _ = model.default_batch_size(samples, None, device)
                result = benchmark.time_ensemble(
                    loaded, device, samples, batch, PRESETS["blog"], compiled=compile_nets,
                    size=args.width, precision=dtype,
                )  # fmt: skip
                rows.append(_row(result, _peak(device.description, dtype)))
            del loaded
            if device.is_gpu:
                torch.cuda.empty_cache()
        except Exception as err:  # noqa: BLE001 - one failed configuration, not the stage
            rows.append({"precision": label, "error": f"{type(err).__name__}: {err}"})
            with (stage.out / "measure.log").open("a") as log:
                log.write(traceback.format_exc())
    return {"width": args.width, "rows": rows, "skipped": skipped}


def _row(result: Any, peak: float | None) -> dict[str, Any]:
    per_call = sum(result.diffusion) / (len(result.diffusion) * result.calls_per_sample)
    achieved = result.flops / result.total / 1e12
    diffusion_rate = (
        result.samples * result.calls_per_sample * result.diffusion_flops
        / sum(result.diffusion) / 1e12
    )  # fmt: skip
    return {
        "precision": result.precision,
        "compiled": result.compiled,
        "samples": result.samples,
        "batch": result.batch_size,
        "first_diffusion_s": round(result.first_diffusion, 3),
        "per_call_s": round(per_call, 4),
        "per_sample_s": round(result.total / result.samples, 4),
        "samples_per_s": round(result.samples / result.total, 3),
        "tflop_per_call_per_sample": round(result.diffusion_flops / 1e12, 3),
        "tflops": round(achieved, 2),
        "diffusion_tflops": round(diffusion_rate, 2),
        "fraction_of_peak": round(diffusion_rate / peak, 3) if peak else None,
        "peak_device_gib": (
            round(result.peak_device_bytes / 2**30, 2) if result.peak_device_bytes else None
        ),
    }


def startup_stage(args: argparse.Namespace, stage: Stage) -> dict[str, Any]:
    """Cold processes, the blog's way against ours (bench/startup.py)."""
    result = stage.out / "startup.json"
    samples, steps = ("2", "2") if args.cpu else ("4", "8")
    code = stage.run(
        [sys.executable, str(ROOT / "bench" / "startup.py"), "--width", args.width,
         "--device", "cpu" if args.cpu else "cuda", "--samples", samples, "--steps", steps,
         "--rounds", str(args.rounds), "--workdir", str(args.workdir), "--json", str(result)],
        "startup.log",
    )  # fmt: skip
    if code != 0 or not result.exists():
        return {"exit_code": code, "error": "see startup.log"}
    best = json.loads(result.read_text())
    blog = best["blog's way"]
    return {
        "job": f"1 time x {samples} samples, {steps} Euler steps, {args.width} width",
        "configurations": best,
        "wall_ratio": {name: round(blog["wall"] / v["wall"], 2) for name, v in best.items()},
        "startup_ratio": {
            name: round(blog["startup"] / v["startup"], 2) for name, v in best.items()
        },
    }


def paper_stage(args: argparse.Namespace, stage: Stage) -> dict[str, Any]:
    """The paper preset's cost per sample against the blog preset's, same precision."""
    from corrdiff_tools import benchmark, model
    from corrdiff_tools.sampling import PRESETS

    device = model.resolve_device("cpu" if args.cpu else "cuda")
    precision = "fp32" if args.cpu else "fp16"
    loaded, dtype = model.load_corrdiff(str(args.package), device, precision)
    samples = 2 if args.cpu else 4
    batch, _ = model.default_batch_size(samples, None, device)
    results = {}
    for preset in ("blog", "paper"):
        settings = PRESETS[preset]
        if args.cpu and preset == "paper":
            settings = replace(settings, steps=4)  # 7 calls: the path, not the figure
        timed = benchmark.time_ensemble(loaded, device, samples, batch, settings,
                                        size=args.width, precision=dtype)  # fmt: skip
        results[preset] = {
            "calls_per_sample": settings.calls_per_sample,
            "per_sample_s": round(timed.total / samples, 4),
        }
    return {
        "precision": dtype,
        "samples": samples,
        **results,
        "paper_over_blog": round(
            results["paper"]["per_sample_s"] / results["blog"]["per_sample_s"], 2
        ),
    }


def torchrun_stage(args: argparse.Namespace, stage: Stage) -> dict[str, Any]:
    """Two ranks: gloo on a CPU; NCCL only with a GPU per rank."""
    import torch

    if not args.cpu and torch.cuda.device_count() < 2:
        return {"skipped": "one GPU: NCCL refuses two ranks on the same GPU"}
    output = args.workdir / "ranks.zarr"
    code = stage.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         str(ROOT / "run_corrdiff.py"), "2024-07-24T00", "--samples", "4", "--steps", "2",
         "--source", str(args.inputs), "--model-package", str(args.package),
         "--device", "cpu" if args.cpu else "cuda", "--output", str(output), "--overwrite"],
        "torchrun.log",
        env={"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"},
    )  # fmt: skip
    if code != 0:
        return {"exit_code": code, "error": "see torchrun.log"}
    import xarray as xr

    with xr.open_zarr(output) as store:
        complete = bool(store["completed"].values.all())
    return {"exit_code": code, "complete": complete}


STAGES: dict[str, Callable[[argparse.Namespace, Stage], dict[str, Any]]] = {
    "device": device_stage,
    "tests": tests_stage,
    "benchmark": benchmark_stage,
    "startup": startup_stage,
    "paper": paper_stage,
    "torchrun": torchrun_stage,
}


def markdown(results: dict[str, Any]) -> str:
    """The report's tables."""
    lines = [f"# GPU kit: {results['device'].get('device', '?')}", ""]
    lines += [f"- {key}: {value}" for key, value in results["device"].items()]
    tests = results.get("tests", {})
    if "cases" in tests:
        lines += [
            "",
            "## Tests",
            "",
            "| test | outcome | s | measured |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {c['test']} | {c['outcome']} | {c['seconds']:.1f} | "
            + "; ".join(f"{k} {v}" for k, v in c["measured"].items())
            + " |"
            for c in tests["cases"]
        ]
    bench = results.get("benchmark", {})
    if bench.get("rows"):
        lines += ["", f"## Benchmark ({bench['width']} width, random weights, blog preset)", "",
                  "| precision | compiled | samples | batch | per call, s | per sample, s | "
                  "samples/s | TFLOP/s (diffusion) | of peak | peak GiB |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for row in bench["rows"]:
            if "error" in row:
                lines.append(f"| {row['precision']} | error: {row['error']} |")
                continue
            lines.append(
                f"| {row['precision']} | {row['compiled']} | {row['samples']} | {row['batch']} "
                f"| {row['per_call_s']} | {row['per_sample_s']} | {row['samples_per_s']} "
                f"| {row['diffusion_tflops']} | {row['fraction_of_peak']} "
                f"| {row['peak_device_gib']} |"
            )
        lines += [f"- skipped: {item}" for item in bench.get("skipped", [])]
    start = results.get("startup", {})
    if "configurations" in start:
        lines += ["", f"## Time to the first sample ({start['job']})", "",
                  "| configuration | wall, s | start-up, s | network calls, s | wall ratio |",
                  "| --- | --- | --- | --- | --- |"]  # fmt: skip
        for name, v in start["configurations"].items():
            calls = v["regression"] + v["diffusion"]
            lines.append(
                f"| {name} | {v['wall']:.2f} | {v['startup']:.2f} | {calls:.2f} "
                f"| {start['wall_ratio'][name]} |"
            )
    for name in ("paper", "torchrun"):
        if name in results:
            lines += ["", f"## {name}", "", "```", json.dumps(results[name], indent=1), "```"]
    lines += ["", f"Stages: {json.dumps(results['stages'])}"]
    return "\n".join(lines) + "\n"


def _failed(result: object) -> bool:
    """Whether a stage failed: it raised, a command it ran failed, or a configuration did."""
    if not isinstance(result, dict):
        return False
    rows = result.get("rows", [])
    return (
        "error" in result
        or result.get("exit_code", 0) != 0
        or any(isinstance(row, dict) and "error" in row for row in rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="where the results go")
    parser.add_argument("--cpu", action="store_true", help="the rehearsal: tiny width, CPU")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds in all")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kit-work"))  # noqa: S108
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", nargs="+", choices=tuple(STAGES), help="these stages only")
    args = parser.parse_args()
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    args.width = "tiny" if args.cpu else "full"

    from workspace import prepare

    prepared = time.monotonic()
    args.workdir, args.package, args.inputs, _ = prepare(args.workdir, args.width, 1, "kit-")
    results: dict[str, Any] = {"stages": {"prepare": round(time.monotonic() - prepared, 1)}}
    for name, function in STAGES.items():
        if args.only and name not in args.only:
            continue
        left = args.budget - (time.monotonic() - started)
        stage = Stage(name, max(0.0, min(left, SHARES[name] * args.budget + 30)), args.out)
        begun = time.monotonic()
        try:
            results[name] = function(args, stage)
        except Exception as err:  # noqa: BLE001 - report it and go on to the next stage
            results[name] = {"error": f"{type(err).__name__}: {err}"}
            with (args.out / "measure.log").open("a") as log:
                log.write(traceback.format_exc())
        results["stages"][name] = round(time.monotonic() - begun, 1)
        (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
        print(f"{name}: {results['stages'][name]} s", flush=True)
    (args.out / "results.md").write_text(markdown(results))
    failed = [name for name, result in results.items() if _failed(result)]
    print(f"done in {time.monotonic() - started:.0f} s; failed stages: {failed or 'none'}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
