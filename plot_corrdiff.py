#!/usr/bin/env python3
"""Draw maps and animations of a CorrDiff ensemble stored by run_corrdiff.py."""

from corrdiff_tools.cli import plot_main

if __name__ == "__main__":
    raise SystemExit(plot_main())
