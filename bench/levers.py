"""Benchmark: what each hot-path lever gives, one diffusion network call, side by side.

Each configuration runs in a fresh process (the allocator setting is per process) on the
same random-weight net and inputs, adding one lever at a time to the way earth2studio's
``load_model`` leaves the network on a CPU:

1. as loaded: ``channels_last`` weights and inputs, physicsnemo's GroupNorm
2. + contiguous layout (``speed.prefer_layout``)
3. + in-place GroupNorm (``speed.use_inplace_group_norm``)
4. + host allocator keeps large blocks (``speed.tune_host_allocator``)  = the run tool
5. + ``torch.compile`` (only with ``--compile``; reports the first call separately)
6. configuration 4 with ``--precision bf16`` (only with ``--bf16``): bfloat16 autocast

    .venv/bin/python bench/levers.py --width small --batch 1 [--bf16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from workspace import WIDTHS

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
config, width, batch, repeats = json.loads(sys.argv[2])
from corrdiff_tools import speed
if config >= 4:
    speed.tune_host_allocator()
import torch
from corrdiff_tools.synthetic import build_networks
_, net = build_networks(width, seed=0)
layout = torch.channels_last if config == 1 else torch.contiguous_format
net = net.to(memory_format=layout)
if config == 6:
    from corrdiff_tools.model import autocast_network
    net.model = autocast_network(net.model, torch.bfloat16)
if config >= 3:
    speed.use_inplace_group_norm(net)
generator = torch.Generator().manual_seed(0)
x = torch.randn(batch, 4, 448, 448, generator=generator).contiguous(memory_format=layout)
c = torch.randn(batch, 16, 448, 448, generator=generator).contiguous(memory_format=layout)
sigma = torch.tensor(2.5, dtype=torch.float64)
if config == 5:
    net = torch.compile(net)
with torch.inference_mode():
    start = time.perf_counter()
    out = net(x, c, sigma)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        net(x, c, sigma)
        times.append(time.perf_counter() - start)
print(json.dumps({"first": first, "best": min(times), "checksum": float(out.double().sum())}))
"""

NAMES = {
    1: "as earth2studio loads it (channels_last)",
    2: "+ contiguous layout",
    3: "+ in-place GroupNorm",
    4: "+ host allocator (the run tool)",
    5: "+ torch.compile",
    6: "the run tool with --precision bf16",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", choices=WIDTHS, default="small")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--only", type=int, nargs="*", help="just these configurations")
    args = parser.parse_args()

    configs = [1, 2, 3, 4] + ([5] if args.compile else []) + ([6] if args.bf16 else [])
    if args.only:
        configs = [c for c in configs if c in args.only]
    results = {}
    for config in configs:
        payload = json.dumps([config, args.width, args.batch, args.repeats])
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(ROOT), payload],
            capture_output=True,
            text=True,
            check=True,
        )
        results[config] = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"  {NAMES[config]}: {results[config]['best']:.3f} s", flush=True)
    base = results[configs[0]]["best"]
    print()
    first = NAMES[configs[0]]
    print(f"| configuration ({args.width} width, batch {args.batch}) | s per call | vs {first} |")
    print("| --- | --- | --- |")
    for config, result in results.items():
        print(f"| {NAMES[config]} | {result['best']:.3f} | {base / result['best']:.2f}x |")
    if args.compile:
        print(f"first compiled call: {results[5]['first']:.1f} s")
    same = {r["checksum"] for c, r in results.items() if c in (2, 3, 4)}
    print(f"contiguous configurations agree bitwise on the output checksum: {len(same) == 1}")


if __name__ == "__main__":
    main()
