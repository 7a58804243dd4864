"""Benchmark: time to the first sample on disk, the blog's way against run_corrdiff.py.

The blog's job is one time and four samples; on a GPU its network arithmetic is a few
seconds of its ~30 s, and the rest is start-up. This times that start-up on any machine:
cold processes, side by side, alternating, each split into phases:

* imports (interpreter start included), package extraction, model load, input read,
  regression calls, diffusion calls, the rest of inference, write, and exit;
* the network calls are timed by the same instrument on both sides (``bench/timed.py``:
  forward hooks on the regression and diffusion networks);
* the blog's other phases come from marks that ``bench/blog_way.py --marks`` records,
  ours from the run's own closing summary;
* start-up is the wall time minus the network calls.

Three configurations per round: the blog's way (a fresh copy of the package, which
``load_model`` unzips every time), ours on a first run (a fresh cache: the one-time
extraction is paid) and ours again (the package already extracted, as from then on).
The best wall time of the rounds is reported for each.

    .venv/bin/python bench/startup.py                     # CPU, narrow width, ~3 min
    .venv/bin/python bench/startup.py --width full --device cuda --samples 4   # a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workspace import QUIET, add_job_options, prepare  # noqa: E402 - bench/ is the script's dir

PHASES = (
    ("imports", "imports (interpreter start included)"),
    ("extract", "package extraction"),
    ("load", "model load"),
    ("read", "input read"),
    ("regression", "regression network calls"),
    ("diffusion", "diffusion network calls"),
    ("sampler", "rest of inference (interpolation, sampler, normalisation)"),
    ("write", "write"),
    ("exit", "other, and interpreter exit"),
)
SUMMARY = re.compile(
    r"in (?P<total>[\d.]+) s since start: start-up (?P<startup>[\d.]+) s .*?model load "
    r"(?P<load>[\d.]+) s, waiting for inputs (?P<read>[\d.]+) s, inference "
    r"(?P<inference>[\d.]+) s, write (?P<write>[\d.]+) s"
)
EXTRACTED = re.compile(r"extracted in (?P<extract>[\d.]+) s")


def timed(command: list[str], env: dict[str, str], calls_file: Path) -> tuple[float, float, str]:
    """Spawn time (wall clock), wall seconds and stderr of one instrumented process."""
    spawned = time.time()
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "timed.py"), *command],
        capture_output=True,
        text=True,
        env={**env, "BENCH_CALLS": str(calls_file)},
        check=False,
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr}")
    return spawned, wall, result.stderr


def network_calls(calls_file: Path) -> dict[str, float]:
    counts = json.loads(calls_file.read_text())
    return {kind: float(counts[kind]["seconds"]) for kind in ("regression", "diffusion")}


def blog_phases(marks: dict[str, float], spawned: float, wall: float, calls: dict) -> dict:
    phases = {
        "imports": marks["imports"] - spawned,
        "extract": marks["extract"],
        "load": marks["load"] - marks["imports"] - marks["extract"],
        "read": marks["read"] - marks["load"],
        **calls,
        "sampler": marks["inference"] - marks["read"] - sum(calls.values()),
        "write": marks["write"] - marks["inference"],
    }
    phases["exit"] = wall - (marks["write"] - spawned)
    return phases


def our_phases(log: str, wall: float, calls: dict) -> dict:
    summary = SUMMARY.search(log)
    if summary is None:
        raise SystemExit(f"no closing summary in run_corrdiff.py's log:\n{log}")
    got = {key: float(value) for key, value in summary.groupdict().items()}
    extracted = EXTRACTED.search(log)
    extract = float(extracted["extract"]) if extracted else 0.0
    phases = {
        "imports": got["startup"],
        "extract": extract,
        "load": got["load"] - extract,
        "read": got["read"],
        **calls,
        "sampler": got["inference"] - sum(calls.values()),
        "write": got["write"],
    }
    phases["exit"] = wall - sum(phases.values())
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_job_options(parser, samples=1, device_help="for our tool; the blog picks cuda if any")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="keep the package and stores here")
    parser.add_argument("--json", type=Path, help="also write the best rounds here (JSON)")
    args = parser.parse_args()

    workdir, source_package, inputs, times = prepare(
        args.workdir, args.width, 1, "corrdiff-startup-"
    )
    when = f"{times[0]:%Y-%m-%dT%H:%M}"
    env = {**os.environ, **QUIET}
    calls_file = workdir / "calls.json"
    cache = workdir / "cache"
    print(
        f"width {args.width}, 1 time x {args.samples} sample(s), {args.steps} Euler steps, "
        f"device {args.device}, {args.rounds} round(s); workdir {workdir}",
        flush=True,
    )

    def blog() -> tuple[float, dict]:
        package = workdir / "blog-package"  # load_model unzips next to the zip, every time
        shutil.rmtree(package, ignore_errors=True)
        shutil.copytree(source_package, package)
        marks_file = workdir / "marks.json"
        spawned, wall, _ = timed(
            [
                str(ROOT / "bench" / "blog_way.py"), when, "--samples", str(args.samples),
                "--steps", str(args.steps), "--package", str(package), "--input", str(inputs),
                "--output", str(workdir / "blog.zarr"), "--marks", str(marks_file),
            ],
            env,
            calls_file,
        )  # fmt: skip
        marks = json.loads(marks_file.read_text())
        return wall, blog_phases(marks, spawned, wall, network_calls(calls_file))

    def ours(fresh_cache: bool) -> tuple[float, dict]:
        if fresh_cache:
            shutil.rmtree(cache, ignore_errors=True)
        _, wall, log = timed(
            [
                str(ROOT / "run_corrdiff.py"), when, "--samples", str(args.samples),
                "--steps", str(args.steps), "--source", str(inputs),
                "--model-package", str(source_package), "--device", args.device,
                "--output", str(workdir / "ours.zarr"), "--overwrite",
            ],
            {**env, "CORRDIFF_TOOLS_CACHE": str(cache)},
            calls_file,
        )  # fmt: skip
        return wall, our_phases(log, wall, network_calls(calls_file))

    configurations = {
        "blog's way": blog,
        "run_corrdiff.py, first run": lambda: ours(True),
        "run_corrdiff.py, package cached": lambda: ours(False),
    }
    best: dict[str, tuple[float, dict]] = {}
    for round_number in range(args.rounds):
        for name, measure in configurations.items():
            wall, phases = measure()
            print(f"  round {round_number + 1}, {name}: {wall:.1f} s", flush=True)
            if name not in best or wall < best[name][0]:
                best[name] = (wall, phases)

    names = list(configurations)
    print()
    print("| phase, s | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    for key, label in PHASES:
        print(f"| {label} | " + " | ".join(f"{best[n][1][key]:.2f}" for n in names) + " |")
    print(
        "| **wall, start to exit** | " + " | ".join(f"**{best[n][0]:.2f}**" for n in names) + " |"
    )
    startup = {n: best[n][0] - best[n][1]["regression"] - best[n][1]["diffusion"] for n in names}
    print("| **start-up** (wall minus network calls) | "
          + " | ".join(f"**{startup[n]:.2f}**" for n in names) + " |")  # fmt: skip
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    name: {"wall": best[name][0], "startup": startup[name], **best[name][1]}
                    for name in names
                },
                indent=1,
            )
        )
    blog_startup = startup[names[0]]
    for name in names[1:]:
        print(
            f"{name}: start-up {startup[name] / blog_startup:.2f} of the blog's "
            f"({blog_startup / startup[name]:.2f}x less); wall "
            f"{best[names[0]][0] / best[name][0]:.2f}x faster"
        )


if __name__ == "__main__":
    main()
