"""earth2studio's generic CorrDiff package on any regional grid, with our forward pass.

The package format is earth2studio 0.19's ``CorrDiff.load_model`` contract: a folder
(or anything earth2studio's ``Package`` resolves) holding ``metadata.json`` (input and
output variables, ``number_of_steps``, ``solver``, ``sampler_type``,
``inference_mode``, ``hr_mean_conditioning`` (default true), optional ``sigma_min``,
``sigma_max``, ``latlon_res``, ``invariant_variables``), ``stats.json`` (mean and std of
every input, output and invariant), ``output_latlon_grid.nc``, ``input_latlon_grid.nc``
(or ``latlon_res``), optional ``invariants.nc``, ``regression.mdlus`` and
``diffusion.mdlus``. We load it through earth2studio's own ``load_model``; only the
class it builds is ours (:class:`RegionalCorrDiff`), because earth2studio's gets four
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
4. ``sampler_type: deterministic`` with ``hr_mean_conditioning`` raises
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
times of a run. With the seeds ``seed + i`` it reproduces earth2studio's own call
bitwise (tested).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from earth2studio.models.batch import batch_coords
from earth2studio.models.dx.corrdiff import CorrDiff

from corrdiff_tools.sampling import PRESET_OF, PRESETS, SampleNoise, SamplerSettings, run_sampler

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch
    from earth2studio.utils.type import CoordSystem

#: The package's files, as earth2studio's ``CorrDiff.load_model`` reads them.
REQUIRED_FILES = ("metadata.json", "stats.json", "output_latlon_grid.nc")
CHECKPOINTS = ("regression.mdlus", "diffusion.mdlus")


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
        # its axes as earth2studio checks 1-D ones (increasing, same rules).
        super()._validate_grid_format(*_rectilinear_axes(lat_grid, lon_grid), grid_name)

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


def missing_files(folder: Path) -> list[str]:
    """The files of the generic layout that ``folder`` lacks (none of them optional)."""
    names = (*REQUIRED_FILES, *CHECKPOINTS)
    missing = [name for name in names if not (folder / name).is_file()]
    metadata_has_res = False
    if (folder / "metadata.json").is_file():
        import json

        try:
            metadata_has_res = "latlon_res" in json.loads((folder / "metadata.json").read_text())
        except ValueError:
            pass
    if not (folder / "input_latlon_grid.nc").is_file() and not metadata_has_res:
        missing.append("input_latlon_grid.nc (or latlon_res in metadata.json)")
    return missing


def load(spec: str | Path, device: str | None = None) -> RegionalCorrDiff:
    """Load a generic CorrDiff package through earth2studio's ``load_model``.

    ``spec`` is a local folder (checked for the layout and for checkpoint classes before
    anything is imported from it) or a remote address earth2studio's ``Package`` reads.
    """
    from earth2studio.models.auto import Package

    from corrdiff_tools.errors import UsageError
    from corrdiff_tools.model import check_checkpoint_classes, is_remote

    text = str(spec)
    if not is_remote(text):
        folder = Path(text)
        if not folder.is_dir():
            raise UsageError(f"--model {text}: no such folder (a generic CorrDiff package)")
        missing = missing_files(folder)
        if missing:
            raise UsageError(
                f"--model {text}: not a generic CorrDiff package, missing {', '.join(missing)}"
                " (see the README's 'Package your own CorrDiff')"
            )
        check_checkpoint_classes(folder, text, CHECKPOINTS, option="--model", folder="")
    model = RegionalCorrDiff.load_model(Package(text), device=device)
    return model  # type: ignore[return-value]


def package_settings(model: CorrDiff) -> SamplerSettings:
    """The sampler settings a loaded package asks for, as our :class:`SamplerSettings`.

    Steps, solver and sampler come from ``metadata.json`` (earth2studio's defaults where
    it is silent); sigma_min/sigma_max from it too, else physicsnemo's sampler defaults,
    which are our presets' (0.002..80 deterministic, 0.002..800 stochastic).
    """
    kind = model.sampler_type
    if kind not in PRESET_OF:
        raise ValueError(f"metadata.json: sampler_type {kind!r}, need one of {sorted(PRESET_OF)}")
    base = PRESETS[PRESET_OF[kind]]
    return replace(
        base,
        steps=int(model.number_of_steps),
        solver=model.solver if kind == "deterministic" else "heun",
        sigma_min=base.sigma_min if model.sigma_min is None else float(model.sigma_min),
        sigma_max=base.sigma_max if model.sigma_max is None else float(model.sigma_max),
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
        self.img_shape: tuple[int, int] = tuple(model.img_shape)  # type: ignore[assignment]
        self.channels = len(model.output_variables)

    def condition(self, inputs: np.ndarray, valid_time: datetime | None = None) -> torch.Tensor:
        """Interpolate, add invariants, normalise (earth2studio's ``preprocess_input``).

        ``inputs`` is (variables, lat, lon) on the package's input grid, in
        ``model.input_variables`` order; the result is (1, channels, H, W), float32.
        """
        import torch

        x = torch.as_tensor(np.asarray(inputs, dtype="float32"), device=self.device)
        with torch.inference_mode():
            condition = self.model.preprocess_input(x, valid_time).to(torch.float32)
        # channels_last, as earth2studio's _forward and load_model (for the nets) set it.
        return condition.to(memory_format=torch.channels_last)

    def regression_mean(self, condition: torch.Tensor) -> torch.Tensor:
        """The regression net's mean, normalised, (1, outputs, H, W) (physicsnemo's step)."""
        from physicsnemo.diffusion.generate.legacy_generate import regression_step

        return regression_step(
            net=self.model.regression_model,
            img_lr=condition,
            latents_shape=(1, self.channels, *self.img_shape),
        )

    def residuals(
        self, condition: torch.Tensor, mean: torch.Tensor, seeds: Sequence[int]
    ) -> torch.Tensor:
        """Diffusion residuals for one batch of samples, normalised, (B, outputs, H, W).

        The diffusion net is conditioned on the regression mean when the package says
        ``hr_mean_conditioning`` (earth2studio's default), as it was trained.
        """
        import torch

        noise = SampleNoise(seeds)
        latents = noise.latents((self.channels, *self.img_shape), self.device)
        mean_hr = mean if self.model.hr_mean_conditioning else None
        with torch.inference_mode():
            return run_sampler(
                self.model.residual_model,
                latents,
                condition.expand(len(seeds), -1, -1, -1),
                self.settings,
                noise,
                mean_hr=mean_hr,
            )

    def normalised_samples(
        self, inputs: np.ndarray, seeds: Sequence[int], valid_time: datetime | None = None
    ) -> torch.Tensor:
        """One batch of samples before denormalisation: mean, residual or their sum.

        Which one is the package's ``inference_mode`` (``regression``, ``diffusion``,
        ``both``), as in earth2studio.
        """
        condition = self.condition(inputs, valid_time)
        mean = self.regression_mean(condition).to(condition.dtype)
        mode = self.model.inference_mode
        if mode == "regression":
            return mean.expand(len(seeds), -1, -1, -1)
        residual = self.residuals(condition, mean, seeds)
        return residual if mode == "diffusion" else mean + residual

    def samples(
        self, inputs: np.ndarray, seeds: Sequence[int], valid_time: datetime | None = None
    ) -> np.ndarray:
        """One batch of samples in physical units, (B, outputs, H, W), float32 on the host."""
        return self.denormalise(self.normalised_samples(inputs, seeds, valid_time))

    def denormalise(self, x: torch.Tensor) -> np.ndarray:
        """Normalised output -> physical units (earth2studio's ``postprocess_output``).

        In the sampler's precision (float64), rounded to float32 once at the end, as
        earth2studio does.
        """
        import torch

        with torch.inference_mode():
            out = self.model.postprocess_output(x)
        return np.asarray(out.cpu().numpy(), dtype="float32")
