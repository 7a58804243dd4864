#!/usr/bin/env python3
"""Downscale weather over Taiwan with NVIDIA CorrDiff and write the ensemble to Zarr."""

from corrdiff_tools.cli import run_main

if __name__ == "__main__":
    raise SystemExit(run_main())
