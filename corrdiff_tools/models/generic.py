"""earth2studio's generic CorrDiff package on any regional grid, with our forward pass.

The package format is earth2studio 0.19's ``CorrDiff.load_model`` contract: a folder
(or anything earth2studio's ``Package`` resolves) holding ``metadata.json`` (input and
output variables, ``number_of_steps``, ``solver``, ``sampler_type``,
``inference_mode``, ``hr_mean_conditioning`` (default true), optional ``sigma_min``,
``sigma_max``, ``latlon_res``, ``invariant_variables``), ``stats.json`` (mean and std of
every input, output and invariant), ``output_latlon_grid.nc``, ``input_latlon_grid.nc``
(or ``latlon_res``), optional ``invariants.nc``, ``regression.mdlus`` and
``diffusion.mdlus``. We load it through earth2studio's own ``load_model``; only the
class it builds is ours (:class:`RegionalCorrDiff`), because earth2studio's gets five
things wrong for real regions, all tried with tiny packages (tests/test_models.py pins
earth2studio's behaviour beside ours):

1. A 1-D regular output grid (``lat[H]``, ``lon[W]``) loads, then fails at the first
   call: its interpolation wants 2-D output coordinates. We mesh 1-D output axes to 2-D.
2. A 2-D grid whose rows share one latitude and columns one longitude is refused at load
   ("rectilinear but stored as 2D"), although it is what most regional datasets write.
   We take its axes: an input grid becomes 1-D (earth2studio's regular interpolation),
   an output grid stays 2-D.
3. A non-square output grid: ``__init__`` sizes the output from the first dimension of
   *both* lat and lon (``(lat.shape[0], lon.shape[0])``), and so does ``__call__``
   (``len()`` of each coordinate). We size it from the grid's shape and name the output
   grid's dimensions ``y``/``x``, as our stores do.
4. An output grid whose latitudes run north to south is refused, with advice to reverse
   the file, which would put the grid out of line with ``invariants.nc`` and with what
   the nets were trained on. Its interpolation does not need it: we accept either
   direction.
5. ``sampler_type: deterministic`` with ``hr_mean_conditioning`` raises
   ``NotImplementedError`` in earth2studio's ``_setup_sampler``; physicsnemo's
   ``deterministic_sampler`` takes ``mean_hr`` exactly as the stochastic one does, so we
   pass it.

Where earth2studio is right we use it unchanged: its interpolation, invariants and
normalisation (``preprocess_input``, so a subclass that adds time features keeps them),
its denormalisation (``postprocess_output``), physicsnemo's ``regression_step`` and
sampler functions. What :class:`GenericSampler` does differently from ``CorrDiff.__call__``
is the noise, as for Taiwan (``downscale.py``): sample ``i`` of time ``t`` draws from a
generator seeded by ``(seed, t, lead, i)`` alone, where earth2studio draws one random
seed per call, so an ensemble does not depend on batch size, device count or the other
times of a run. On a CPU, with the seeds ``seed + i`` and one sample per call, it
reproduces earth2studio's own call bitwise (tested; on a GPU earth2studio draws its noise
with a CUDA generator, we draw ours on the CPU so it is the same on every device).
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from corrdiff_tools.imports import import_alone
from corrdiff_tools.models.declaration import (
    CHECKPOINTS,
    REQUIRED_FILES,
    Declaration,
    infer_input_grid,
    metadata_settings,
    missing_files,
)
from corrdiff_tools.sampling import SamplerSettings, draw_residuals
from corrdiff_tools.sources import GRID_TOLERANCE, nearest_points

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch
    import xarray as xr
    from earth2studio.models.batch import batch_coords
    from earth2studio.models.dx.corrdiff import CorrDiff
    from earth2studio.utils.type import CoordSystem
else:
    # Alone: earth2studio.models.dx's __init__ imports every diagnostic model, 23 s of
    # a generic run's start-up on 2 cores (2026-12-03) against about 5 s for CorrDiff.
    batch_coords = import_alone("earth2studio.models.batch").batch_coords
    CorrDiff = import_alone("earth2studio.models.dx.corrdiff").CorrDiff


def _rectilinear_axes(lat: torch.Tensor, lon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1-D axes of a 2-D grid whose rows share a latitude and columns a longitude."""
    if lat.ndim == 2 and lat.shape == lon.shape and CorrDiff._is_rectilinear(lat, lon):
        return lat[:, 0].contiguous(), lon[0, :].contiguous()
    return lat, lon


def _meshed(lat: torch.Tensor, lon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D (lat, lon) of a grid given as 1-D axes; a 2-D grid as it is."""
    import torch

    if lat.ndim == 1 and lon.ndim == 1:
        rows, cols = torch.meshgrid(lat, lon, indexing="ij")
        return rows, cols
    return lat, lon


class RegionalCorrDiff(CorrDiff):
    """earth2studio's ``CorrDiff`` for rectangular, regular and curvilinear regions.

    Built by earth2studio's own ``load_model`` (``RegionalCorrDiff.load_model(package)``);
    each override below says what earth2studio 0.19 does instead.
    """

    @classmethod
    def _validate_grid_format(
        cls, lat_grid: torch.Tensor, lon_grid: torch.Tensor, grid_name: str = "grid"
    ) -> None:
        # earth2studio refuses a 2-D rectilinear grid ("should be stored as 1D"); we check
        # its axes as earth2studio checks 1-D ones.
        lat, lon = _rectilinear_axes(lat_grid, lon_grid)
        if grid_name == "output" and lat.ndim == 1 and lon.ndim == 1:
            # earth2studio also wants output axes increasing, and advises reversing a
            # north-to-south grid in the file. Its interpolation searches only the input
            # grid, and reversing the output grid would put it out of line with
            # invariants.nc and with the layout the nets were trained on: any direction
            # is accepted (the check below still sees the dimensions).
            lat, lon = lat.sort().values, lon.sort().values
        super()._validate_grid_format(lat, lon, grid_name)

    @staticmethod
    def _infer_input_latlon_grid(
        lat_output_grid: torch.Tensor, lon_output_grid: torch.Tensor, latlon_res: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # earth2studio builds the grid with a float32 arange, which its own spacing check
        # then refuses for a latlon_res such as 0.1 ("must be regularly spaced"): the same
        # formula in float64 (declaration.infer_input_grid, which validation reads too).
        import torch

        lat, lon = infer_input_grid(
            lat_output_grid.cpu().double().numpy(),
            lon_output_grid.cpu().double().numpy(),
            latlon_res,
        )
        device = lat_output_grid.device
        return torch.as_tensor(lat, device=device), torch.as_tensor(lon, device=device)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # earth2studio: (lat.shape[0], lon.shape[0]), which is (H, H) for a 2-D H x W grid.
        self.img_shape = tuple(self.lat_output_grid.shape)

    def _register_buffers(  # type: ignore[override]
        self,
        lat_input_grid: torch.Tensor,
        lon_input_grid: torch.Tensor,
        lat_output_grid: torch.Tensor,
        lon_output_grid: torch.Tensor,
        *rest: Any,
    ) -> None:
        # Input: 1-D axes where the grid is regular, so earth2studio's regular bilinear
        # interpolation runs (it builds a curvilinear interpolator for any 2-D input).
        # Output: always 2-D, which that interpolation needs (earth2studio keeps a 1-D
        # output grid 1-D and fails at the first call).
        lat_in, lon_in = _rectilinear_axes(lat_input_grid, lon_input_grid)
        lat_out, lon_out = _meshed(lat_output_grid, lon_output_grid)
        super()._register_buffers(lat_in, lon_in, lat_out, lon_out, *rest)

    def _setup_sampler(self, sampler_type: Any) -> Any:
        if sampler_type == "deterministic" and self.hr_mean_conditioning:
            # earth2studio raises NotImplementedError here; physicsnemo's sampler takes
            # mean_hr (legacy_deterministic_sampler.py, "conditioning = [mean_hr, img_lr]").
            from physicsnemo.diffusion.samplers.legacy_deterministic_sampler import (
                deterministic_sampler,
            )

            keywords: dict[str, Any] = {"num_steps": self.number_of_steps, "solver": self.solver}
            if self.sigma_min is not None:
                keywords["sigma_min"] = self.sigma_min
            if self.sigma_max is not None:
                keywords["sigma_max"] = self.sigma_max
            return partial(deterministic_sampler, **keywords)
        return super()._setup_sampler(sampler_type)

    @batch_coords()
    def output_coords(self, input_coords: CoordSystem) -> CoordSystem:
        """earth2studio's output coordinates, with the output grid as ``y``/``x``."""
        # earth2studio names the output dims lat/lon and gives them 2-D arrays, so its
        # __call__ sizes a H x W grid as H x H. Ours: y/x index axes (2-D lat/lon are
        # ``self.lat``/``self.lon``), the dimension names of our stores.
        coords = super().output_coords(input_coords)
        height, width = self.img_shape
        named = OrderedDict()
        for key, value in coords.items():
            if key == "lat":
                named["y"] = np.arange(height)
            elif key == "lon":
                named["x"] = np.arange(width)
            else:
                named[key] = value
        return named

    @property
    def lat(self) -> np.ndarray:
        """Output latitudes, 2-D (H, W)."""
        return np.asarray(self.lat_output_grid.cpu().numpy())

    @property
    def lon(self) -> np.ndarray:
        """Output longitudes, 2-D (H, W)."""
        return np.asarray(self.lon_output_grid.cpu().numpy())


#: Backbones whose input is the conditioning plus ``N_grid_channels`` positional channels.
POSITIONAL_BACKBONES = {"SongUNetPosEmbd"}
PLAIN_BACKBONES = {"SongUNet", "DhariwalUNet"}


def check_wiring(model: CorrDiff, shown: str, channels: tuple[int, str] | None = None) -> None:
    """Refuse a package whose files disagree with its nets, naming both sides.

    earth2studio loads such a package and fails at the first call deep inside a
    convolution ("expected input to have 12 channels, but got 9"), or not at all when the
    counts happen to agree. Checked: the invariants' grid against the output grid, and
    each net's input and output channels against the variables, invariants, positional
    channels and (for the diffusion net, with ``hr_mean_conditioning``) the regression mean.
    ``channels`` is (count, in words) where a family's preprocessing makes more of its
    input variables than one channel each (CorrDiffCMIP6's lead times and time features).
    """
    from corrdiff_tools.errors import UsageError

    height, width = model.img_shape
    if model.invariants is not None and tuple(model.invariants.shape[-2:]) != (height, width):
        raise UsageError(
            f"{shown}: invariants.nc holds fields of {tuple(model.invariants.shape[-2:])}, the "
            f"output grid is {(height, width)}"
        )
    count = len(model.input_variables)
    inputs, words = channels or (count, f"{count} input variable(s)")
    invariants = len(model.invariant_variables)
    outputs = len(model.output_variables)
    for kind, net, mean in (
        ("regression", model.regression_model, 0),
        ("diffusion", model.residual_model, outputs if model.hr_mean_conditioning else 0),
    ):
        backbone = type(getattr(net, "model", None)).__name__
        if backbone in POSITIONAL_BACKBONES:
            positional = int(net.model.N_grid_channels)
        elif backbone in PLAIN_BACKBONES:
            positional = 0
        else:  # another backbone (lead-time embeddings, ...): not checked here
            continue
        expected = inputs + invariants + positional + mean
        reads = int(getattr(net, "img_in_channels", expected))
        writes = int(getattr(net, "img_out_channels", outputs))
        if reads != expected:
            parts = [words, f"{invariants} invariant(s)"]
            parts.append(f"{positional} positional channel(s)")
            if kind == "diffusion":
                parts.append(
                    f"{mean} regression mean channel(s) (hr_mean_conditioning: "
                    f"{str(model.hr_mean_conditioning).lower()})"
                )
            raise UsageError(
                f"{shown}: {kind}.mdlus reads {reads} channels, the package's files give "
                f"{expected} ({' + '.join(parts)})"
            )
        if writes != outputs:
            raise UsageError(
                f"{shown}: {kind}.mdlus writes {writes} channels, metadata.json names "
                f"{outputs} output variable(s)"
            )


def load(spec: str | Path, device: str | None = None, shown: str | None = None) -> RegionalCorrDiff:
    """Load a generic CorrDiff package through earth2studio's ``load_model``.

    ``spec`` is a local folder or a remote address earth2studio's ``Package`` reads (its
    files are fetched into earth2studio's cache first). Either way the layout and the
    checkpoints' classes are checked before anything is imported from the package, and
    its files against its nets after loading (:func:`check_wiring`).

    Raises
    ------
    UsageError
        One line naming the package (``shown``, default "package SPEC") and what is
        wrong with it.
    """
    shown = shown or f"package {spec}"
    model = load_checked(spec, partial(RegionalCorrDiff.load_model, device=device), shown)
    check_wiring(model, shown)
    return model  # type: ignore[return-value]


def load_checked(spec: str | Path, loader: Any, shown: str) -> Any:
    """``loader(package)`` on earth2studio's ``Package`` of ``spec``, checked first.

    The generic layout and the checkpoints' classes are checked before anything is
    imported from the package; what earth2studio's ``load_model`` raises for a package
    whose files disagree is one line naming it. Shared by the families built on the
    generic layout (:func:`load`, :func:`corrdiff_tools.models.cmip6_net.load`).
    """
    from earth2studio.models.auto import Package

    from corrdiff_tools.errors import UsageError
    from corrdiff_tools.model import check_checkpoint_classes, is_remote

    text = str(spec)
    hint = " (see the README's 'Other CorrDiff models')"
    if not is_remote(text):  # a relative or ~ path, read from anywhere
        text = str(Path(text).expanduser().resolve())
    package = Package(text)
    if is_remote(text):
        resolved = []
        for name in (*REQUIRED_FILES, *CHECKPOINTS):
            try:
                resolved.append(Path(package.resolve(name)))
            except FileNotFoundError:
                raise UsageError(
                    f"{shown}: not a generic CorrDiff package, missing {name}{hint}"
                ) from None
        checkpoints = [str(path) for path in resolved[-len(CHECKPOINTS) :]]
    else:
        folder = Path(text)
        if not folder.is_dir():
            raise UsageError(f"{shown}: no such folder (a generic CorrDiff package){hint}")
        missing = missing_files(folder)
        if missing:
            raise UsageError(
                f"{shown}: not a generic CorrDiff package, missing {', '.join(missing)}{hint}"
            )
        checkpoints = [str(folder / name) for name in CHECKPOINTS]
    # Absolute paths: Path("/") / "/abs/x" is "/abs/x".
    check_checkpoint_classes(Path("/"), text, checkpoints, option="package", folder="")
    try:
        return loader(package)
    except KeyError as err:  # earth2studio indexes stats.json without a check for outputs
        detail = err.args[0] if err.args else err
        raise UsageError(
            f"{shown}: stats.json lacks an entry: {detail} (it needs the mean and std of "
            "every input, output and invariant)"
        ) from None
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"{shown}: {err}") from None


def package_settings(model: CorrDiff) -> SamplerSettings:
    """The sampler settings a loaded package asks for, as our :class:`SamplerSettings`.

    What earth2studio's ``load_model`` read from ``metadata.json`` (its defaults where the
    file is silent), through :func:`~corrdiff_tools.models.declaration.metadata_settings`:
    the run tool reads the file itself before loading, and checks the two agree.
    """
    return metadata_settings(
        {
            "sampler_type": model.sampler_type,
            "number_of_steps": model.number_of_steps,
            "solver": model.solver,
            "sigma_min": model.sigma_min,
            "sigma_max": model.sigma_max,
        }
    )


class GenericSampler:
    """The forward pass of a generic CorrDiff package with per-sample seeded noise.

    Parameters
    ----------
    model : RegionalCorrDiff
        A loaded package (:func:`load`); a ``CorrDiff`` subclass that adds features in
        ``preprocess_input`` (as CorrDiffCMIP6 does) keeps them.
    settings : SamplerSettings, optional
        The sampler (default: what the package's ``metadata.json`` asks for).
    """

    def __init__(self, model: CorrDiff, settings: SamplerSettings | None = None) -> None:
        self.model = model
        self.settings = settings if settings is not None else package_settings(model)
        self.device = model.in_center.device
        self.channels = len(model.output_variables)
        grid = model.input_coords()
        #: The model's variables and grids, as the run tool and the store read them.
        self.declaration = Declaration(
            "package",
            tuple(model.input_variables),
            tuple(model.output_variables),
            np.asarray(grid["lat"], dtype="float64"),
            np.asarray(grid["lon"], dtype="float64"),
            (int(model.img_shape[0]), int(model.img_shape[1])),
        )

    @property
    def lat(self) -> np.ndarray:
        """Output latitudes, 2-D (H, W)."""
        return np.asarray(self.model.lat_output_grid.cpu().numpy())

    @property
    def lon(self) -> np.ndarray:
        """Output longitudes, 2-D (H, W)."""
        return np.asarray(self.model.lon_output_grid.cpu().numpy())

    def align(self, array: xr.DataArray) -> np.ndarray:
        """The package's inputs from a (variable, lat, lon) DataArray, taken by name.

        Variables are picked by their labels in ``model.input_variables`` order, and each
        point of the package's 1-D input grid from the array's own coordinates (either
        direction, longitudes modulo 360), within :data:`GRID_TOLERANCE` degrees.

        Raises
        ------
        ValueError
            Naming the missing variables or grid points, or the non-finite values.
        """
        from corrdiff_tools import checks

        wanted = list(self.model.input_variables)
        if set(array.dims) != {"variable", "lat", "lon"}:
            raise ValueError(
                f"inputs have dims {tuple(array.dims)}; need (variable, lat, lon): select one "
                "time first"
            )
        names = checks.decode_labels(array["variable"].values)
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(
                f"inputs name {', '.join(twice)} more than once: which one is meant is unknown"
            )
        missing = [name for name in wanted if name not in names]
        if missing:
            raise ValueError(
                f"inputs lack {', '.join(missing)}: this package reads {', '.join(wanted)}"
            )
        grid = self.model.input_coords()
        rows = cols = None
        for axis in ("lat", "lon"):
            have = np.asarray(array[axis].values, dtype="float64")
            problem = checks.axis_problem(axis, have)
            need = np.asarray(grid[axis], dtype="float64")
            if problem is None and need.ndim != 1:
                problem = "the package's input grid is curvilinear: pass a numpy array on it"
            if problem is not None:
                raise ValueError(f"inputs: {problem}")
            nearest, off = nearest_points(need, have, wrap=axis == "lon")
            if (off > GRID_TOLERANCE).any():
                first = int(np.flatnonzero(off > GRID_TOLERANCE)[0])
                raise ValueError(
                    f"inputs do not hold the package's input grid: {axis} {need[first]:g} "
                    f"is missing (nearest {have[nearest[first]]:g}); the package reads "
                    f"{axis} {need[0]:g}..{need[-1]:g} in {need.size} points"
                )
            rows, cols = (nearest, cols) if axis == "lat" else (rows, nearest)
        ordered = array.transpose("variable", "lat", "lon").values
        picked = np.stack([ordered[names.index(name)][rows][:, cols] for name in wanted])
        for name, values in zip(wanted, picked, strict=True):
            why = checks.not_finite(values, blanks=name in self.declaration.blank_inputs)
            if why is not None:
                raise ValueError(f"inputs: {name} {why}")
        return picked.astype("float32")

    def condition(
        self, inputs: np.ndarray | xr.DataArray, valid_time: datetime | None = None
    ) -> torch.Tensor:
        """Interpolate, add invariants, normalise (earth2studio's ``preprocess_input``).

        ``inputs`` is a (variable, lat, lon) DataArray (taken by name, :meth:`align`) or
        an array already in ``model.input_variables`` order on the package's input grid;
        the result is (1, channels, H, W), float32.
        """
        import torch
        import xarray as xr

        if isinstance(inputs, xr.DataArray):
            inputs = self.align(inputs)
        inputs = np.asarray(inputs, dtype="float32")
        grid = self.model.input_coords()
        lat = np.asarray(grid["lat"])
        points = (lat.size, np.size(grid["lon"])) if lat.ndim == 1 else lat.shape
        shape = (len(self.model.input_variables), *points)
        if inputs.shape != shape:
            raise ValueError(
                f"inputs have shape {inputs.shape}; the package reads {shape}: "
                f"({', '.join(self.model.input_variables)}) on its input grid"
            )
        x = torch.as_tensor(inputs, device=self.device)
        with torch.inference_mode():
            condition = self.model.preprocess_input(x, valid_time).to(torch.float32)
        # channels_last, as earth2studio's _forward and load_model (for the nets) set it.
        return condition.to(memory_format=torch.channels_last)

    def regression_mean(self, condition: torch.Tensor) -> torch.Tensor:
        """The regression net's mean, normalised, (1, outputs, H, W) (physicsnemo's step)."""
        from physicsnemo.diffusion.generate.legacy_generate import regression_step

        with self.model._inference_context():
            return regression_step(
                net=self.model.regression_model,
                img_lr=condition,
                latents_shape=(1, self.channels, *condition.shape[-2:]),
            )

    def residuals(
        self, condition: torch.Tensor, mean: torch.Tensor, seeds: Sequence[int]
    ) -> torch.Tensor:
        """Diffusion residuals for one batch of samples, normalised, (B, outputs, H, W).

        The diffusion net is conditioned on the regression mean when the package says
        ``hr_mean_conditioning`` (earth2studio's default), as it was trained.
        """
        import torch

        mean_hr = mean if self.model.hr_mean_conditioning else None
        # channels_last, as physicsnemo's diffusion_step lays out earth2studio's latents:
        # the same layout keeps the nets' arithmetic the same as theirs on any CPU. The
        # latents lie on the conditioning's grid, which a subclass may pad.
        with self.model._inference_context():
            return draw_residuals(
                self.model.residual_model,
                condition,
                self.channels,
                seeds,
                self.settings,
                mean_hr=mean_hr,
                memory_format=torch.channels_last,
            )

    def normalised_samples(
        self,
        inputs: np.ndarray | xr.DataArray,
        seeds: Sequence[int],
        valid_time: datetime | None = None,
    ) -> torch.Tensor:
        """One batch of samples before denormalisation: mean, residual or their sum.

        Which one is the package's ``inference_mode`` (``regression``, ``diffusion``,
        ``both``), as in earth2studio.
        """
        condition = self.condition(inputs, valid_time)
        return self.draw(condition, self.regression_mean(condition), seeds)

    def draw(
        self, condition: torch.Tensor, mean: torch.Tensor, seeds: Sequence[int]
    ) -> torch.Tensor:
        """One batch of normalised samples from a conditioning and its regression mean.

        Mean, residual or their sum, by the package's ``inference_mode`` (``regression``,
        ``diffusion``, ``both``), as in earth2studio.
        """
        mean = mean.to(condition.dtype)
        mode = self.model.inference_mode
        if mode == "regression":
            return mean.expand(len(seeds), -1, -1, -1)
        residual = self.residuals(condition, mean, seeds)
        return residual if mode == "diffusion" else mean + residual

    def samples(
        self,
        inputs: np.ndarray | xr.DataArray,
        seeds: Sequence[int],
        valid_time: datetime | None = None,
    ) -> np.ndarray:
        """One batch of samples in physical units, (B, outputs, H, W), float32 on the host."""
        return self.denormalise(self.normalised_samples(inputs, seeds, valid_time))

    def denormalise(self, x: torch.Tensor) -> np.ndarray:
        """Normalised output -> physical units (earth2studio's ``postprocess_output``).

        In the precision the sampler returns (float64 from the deterministic one),
        rounded to float32 once at the end, as earth2studio does.
        """
        import torch

        with torch.inference_mode():
            out = self.model.postprocess_output(x)
        return np.asarray(out.cpu().numpy(), dtype="float32")
