"""corrdiff-tools: km-scale generative downscaling over Taiwan with NVIDIA CorrDiff.

Two command-line tools share this package: ``run_corrdiff.py`` (inputs -> CorrDiff ->
Zarr ensemble) and ``plot_corrdiff.py`` (Zarr ensemble -> maps and animations).
Importing the package is cheap: torch and earth2studio are imported only when needed.
"""

__version__ = "0.1.0"
