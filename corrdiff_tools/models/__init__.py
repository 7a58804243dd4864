"""The CorrDiff family, one module per model family.

``declaration``
    A model as plain data (:class:`~corrdiff_tools.models.declaration.Declaration`): its
    variables and grids, which the store, the sources and the downscaling loop read
    instead of CorrDiff Taiwan's constants (``store.TAIWAN`` is Taiwan's). A generic
    package's is read from its files before it is loaded, and checked against it after.

``generic``
    earth2studio's generic ``CorrDiff`` package format (``metadata.json``, ``stats.json``,
    ``output_latlon_grid.nc``, ``input_latlon_grid.nc``, optional ``invariants.nc``,
    ``regression.mdlus``, ``diffusion.mdlus``): any CorrDiff trained with physicsnemo's
    example on any region. :mod:`corrdiff_tools.models.generic` loads it through
    earth2studio's own ``CorrDiff.load_model``, mends what earth2studio gets wrong for
    real regions (rectangular and regular output grids, the deterministic sampler with
    the regression mean as conditioning), and runs the forward pass with our
    per-(time, lead, sample) noise.

``cmip6``
    earth2studio's ``CorrDiffCMIP6`` (daily CMIP6 fields to hourly ERA5-like fields):
    loaded through its own ``load_model``, its preprocessing kept (with its in-place
    smoothing of the caller's input mended), run with our noise (``Cmip6Sampler``, a
    ``GenericSampler`` with three input lead times and a padded grid).

``packages``
    Where a generic package's files are: a folder, a zip (extracted once) or an
    address (fetched once), made a local folder for the rest of the run.

Each family module answers the same questions, so a new family is one new module:
which variables the model reads and on which grid (``input_coords``), what it writes and
on which grid (``output_variables``, ``lat``/``lon``), which sampler settings its package
asks for (``package_settings``), how a package is found and loaded (``load``), and its
forward pass (a ``downscale.Sampler``: ``declaration``, ``condition``,
``regression_mean``, ``draw``, ``denormalise``, ``lat``/``lon``, as
``downscale.CorrDiffSampler`` has for Taiwan; the generic ``residuals`` also takes the
regression mean, which Taiwan's checkpoint does not read). ``run_corrdiff.py --model
PATH_OR_URL`` runs a generic package, and the plot tool draws and evaluates its stores.
"""
