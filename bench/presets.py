"""Cost per sample of each sampler preset, side by side in one run.

Runs ``run_corrdiff.py --benchmark`` once per preset (each in a fresh process, alternating
when repeated), on the published depth at a chosen width with random weights, and prints
the steady-state seconds per sample, the diffusion calls per sample and the ratio to the
``blog`` preset.

    .venv/bin/python bench/presets.py --width narrow --repeat 1
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("blog", "paper")


def measure(preset: str, width: str, device: str) -> tuple[float, int]:
    """Seconds per sample and diffusion calls per sample, from the benchmark's table."""
    command = [
        sys.executable, str(ROOT / "run_corrdiff.py"), "--benchmark",
        "--benchmark-size", width, "--preset", preset, "--samples", "1", "--device", device, "-q",
    ]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    per_sample = re.search(r"^per sample\s+([\d.]+) s", out, re.MULTILINE)
    calls = re.search(r"= (\d+) diffusion call\(s\) per sample", out)
    if per_sample is None or calls is None:
        raise SystemExit(f"unexpected benchmark output:\n{out}")
    return float(per_sample.group(1)), int(calls.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", default="narrow", choices=("full", "small", "narrow", "tiny"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=1, help="rounds, best of each kept")
    args = parser.parse_args()
    best: dict[str, tuple[float, int]] = {}
    for _ in range(args.repeat):
        for preset in PRESETS:
            seconds, calls = measure(preset, args.width, args.device)
            if preset not in best or seconds < best[preset][0]:
                best[preset] = (seconds, calls)
    blog = best["blog"][0]
    print(f"width {args.width}, device {args.device}, 1 sample, best of {args.repeat}")
    print("| preset | diffusion calls per sample | s per sample | vs blog |")
    print("| --- | --- | --- | --- |")
    for preset, (seconds, calls) in best.items():
        print(f"| {preset} | {calls} | {seconds:.2f} | {seconds / blog:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
