"""The run tool's ensemble against an independent CorrDiff reference, for both samplers.

Nothing of corrdiff_tools' forward pass is used on the reference side. It is written from:

* the package as published: the zip extracted here, the nets loaded with physicsnemo's
  ``Module.from_checkpoint`` and rounded through ``use_fp16`` as earth2studio's
  ``load_model`` does, the grid and normalisation read with zarr-python;
* the geometry the checkpoint was trained on (modulus v0.5.0
  ``examples/generative/corrdiff/training/img_utils.py`` lines 56-113 and
  ``training/dataset.py`` lines 362-366): inputs interpolated onto, and outputs labelled
  with, the 448 x 448 window at pixel (0, 0) of the 450 x 450 grid; sin/cos channels over
  450 pixels, cut to that window;
* bilinear interpolation by scipy, from the input file read by variable *name*;
* EDM preconditioning written out from the EDM paper and modulus v0.5.0
  ``modulus/models/diffusion/preconditioning.py`` lines 759-782, including the
  published era's ``scale_cond_input`` (conditioning scaled by c_in with x);
* physicsnemo's ``regression_step`` and its ``deterministic_sampler`` /
  ``stochastic_sampler``, with one generator per sample as EDM's
  ``StackedRandomGenerator`` keeps them, seeded as the README documents.

The run goes through ``run_main`` into a real store, so the whole loop is covered: a
dropped regression mean, swapped channels, a grid shifted by a pixel or a
``scale_cond_input`` net fed like the other kind each fail here.
"""

from __future__ import annotations

import math
import zipfile
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from conftest import lively_package, offline_args
from scipy.interpolate import RegularGridInterpolator

TIME = datetime(2024, 7, 24, 12)
INPUTS = ("tcwv", "z500", "t500", "u500", "v500", "z850", "t850", "u850", "v850",
          "t2m", "u10m", "v10m")  # fmt: skip
OUTPUTS = ("mrr", "t2m", "u10m", "v10m")
ERA5_INDICES = [0, 1, 2, 3, 4, 9, 10, 11, 12, 17, 18, 19]
CWB_INDICES = [0, 17, 18, 19]


def member_seed(seed: int, time: datetime, lead: int, member: int) -> int:
    """The README's noise contract: SeedSequence([seed, minutes since 1900, lead, member])."""
    minutes = int((time - datetime(1900, 1, 1)).total_seconds() // 60)
    state = np.random.SeedSequence([seed, minutes, lead, member]).generate_state(1, np.uint64)
    return int(state[0])


class MemberNoise:
    """EDM's StackedRandomGenerator on the CPU: one generator per member, latent first."""

    def __init__(self, seeds: list[int]) -> None:
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.stack([torch.randn(shape[1:], generator=g) for g in self.generators])

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [torch.randn(x.shape[1:], generator=g, dtype=x.dtype) for g in self.generators]
        )


class Denoiser(torch.nn.Module):
    """EDM preconditioning around the checkpoint's backbone (Karras et al. 2022, Table 1)."""

    def __init__(self, precond: Any) -> None:
        super().__init__()
        self.backbone = precond.model
        self.sigma_data = float(precond.sigma_data)
        self.sigma_min = float(precond.sigma_min)
        self.sigma_max = float(precond.sigma_max)
        self.scale_cond_input = bool(precond.scale_cond_input)

    @staticmethod
    def round_sigma(sigma: Any) -> torch.Tensor:
        return torch.as_tensor(sigma)

    def forward(
        self, x: torch.Tensor, img_lr: torch.Tensor, sigma: Any, class_labels: Any = None
    ) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma).to(torch.float32).reshape(-1, 1, 1, 1)
        c_skip = self.sigma_data**2 / (sigma**2 + self.sigma_data**2)
        c_out = sigma * self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt()
        c_in = 1 / (self.sigma_data**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        if self.scale_cond_input:  # modulus v0.5.0: c_in * cat(x, img_lr)
            arg = c_in * torch.cat([x, img_lr.to(x.dtype)], dim=1)
        else:
            arg = torch.cat([c_in * x, img_lr.to(x.dtype)], dim=1)
        out = self.backbone(arg, c_noise.flatten(), class_labels=None)
        return c_skip * x + c_out * out.to(torch.float32)


def reference_ensemble(
    package: Path, inputs: Path, members: int, sampler: str, settings: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Regression mean, samples and grid of the reference CorrDiff, physical units."""
    from physicsnemo import Module
    from physicsnemo.diffusion.generate.legacy_generate import regression_step
    from physicsnemo.diffusion.samplers.legacy_deterministic_sampler import (
        deterministic_sampler,
    )
    from physicsnemo.diffusion.samplers.legacy_stochastic_sampler import stochastic_sampler

    root = package / "extracted"
    with zipfile.ZipFile(package / "corrdiff_inference_package.zip") as archive:
        archive.extractall(root)  # noqa: S202 - our own test package
    folder = root / "corrdiff_inference_package"
    nets = []
    for name in ("regression", "diffusion"):
        net = Module.from_checkpoint(str(folder / "checkpoints" / f"{name}.mdlus"))
        net.use_fp16 = True  # load_model's rounding of weights and buffers ...
        net.use_fp16 = False  # ... then float32 arithmetic, as on any CPU
        nets.append(net.eval())
    regression, diffusion = nets

    meta = zarr.open_group(str(folder / "dataset" / "2023-01-24-cwb-4years_5times.zarr"), mode="r")
    window = (slice(0, 448), slice(0, 448))
    lat, lon = np.asarray(meta["XLAT"][:])[window], np.asarray(meta["XLONG"][:])[window]
    in_center = np.asarray(meta["era5_center"][:])[ERA5_INDICES, None, None]
    in_scale = np.asarray(meta["era5_scale"][:])[ERA5_INDICES, None, None]
    out_center = np.asarray(meta["cwb_center"][:])[CWB_INDICES, None, None]
    out_scale = np.asarray(meta["cwb_scale"][:])[CWB_INDICES, None, None]

    with xr.open_dataarray(inputs) as array:
        box = (
            array.sel(time=np.datetime64(TIME), variable=list(INPUTS))
            .sortby("lat")
            .sel(
                lat=np.linspace(19.25, 28, 36),
                lon=np.linspace(116, 126, 40, endpoint=False),
                method="nearest",
                tolerance=1e-6,
            )
            .transpose("variable", "lat", "lon")
            .load()
        )
    points = np.stack((lat.ravel(), lon.ravel()), axis=-1)
    fields = np.stack(
        [
            RegularGridInterpolator((box["lat"].values, box["lon"].values), box.values[v])(
                points
            ).reshape(448, 448)
            for v in range(len(INPUTS))
        ]
    )
    axis = np.linspace(0, 2 * np.pi, 450)
    grid = np.stack(
        (
            *np.meshgrid(np.sin(axis), np.sin(axis)),
            *np.meshgrid(np.cos(axis), np.cos(axis)),
        )
    )[(slice(None), *window)]  # (sin x, sin y, cos x, cos y), x along columns
    condition = torch.as_tensor(
        np.concatenate(((fields - in_center) / in_scale, grid)), dtype=torch.float32
    )[None]

    mean = regression_step(regression, condition, (1, 4, 448, 448)).to(torch.float32)
    noise = MemberNoise([member_seed(0, TIME, 0, m) for m in range(members)])
    latents = noise.randn((members, 4, 448, 448))
    function = deterministic_sampler if sampler == "deterministic" else stochastic_sampler
    with torch.inference_mode():
        residual = partial(function, **settings)(
            Denoiser(diffusion),
            latents,
            condition.expand(members, -1, -1, -1),
            randn_like=noise.randn_like,
        )
    to_physical = partial(np.add, out_center)
    return {
        "mean": to_physical(out_scale * mean[0].double().numpy()),
        "samples": np.stack(
            [to_physical(out_scale * (mean[0] + r).double().numpy()) for r in residual]
        ),
        "lat": lat,
        "lon": lon,
    }


@pytest.fixture(scope="module", params=[False, True], ids=["scale_cond_False", "scale_cond_True"])
def package(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, bool]:
    directory = tmp_path_factory.mktemp("fidelity")
    return lively_package(directory, seed=4, scale_cond_input=request.param), bool(request.param)


CASES = {
    # name: (run_corrdiff.py options, reference sampler, its keyword arguments)
    "blog": (
        ["--steps", "2", "--batch-size", "1"],
        "deterministic",
        {"num_steps": 2, "solver": "euler"},
    ),
    "paper": (
        ["--preset", "paper", "--steps", "4"],
        "stochastic",
        {"num_steps": 4, "sigma_min": 0.002, "sigma_max": 800.0, "rho": 7},
    ),
    "churn": (
        ["--sampler", "stochastic", "--steps", "4", "--s-churn", "0.8", "--batch-size", "1"],
        "stochastic",
        {"num_steps": 4, "S_churn": 0.8},
    ),
}


def _run_and_read(
    package: Path, input_file: Path, tmp_path: Path, options: list[str]
) -> xr.Dataset:
    from corrdiff_tools.cli import run_main

    output = tmp_path / "run.zarr"
    argv = [*offline_args(package, input_file), "2024-07-24T12", "--samples", "2"]
    assert run_main([*argv, *options, "--output", str(output)]) == 0
    return xr.open_zarr(output).load()


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c == "churn" else c for c in CASES]
)
def test_ensemble_equals_the_independent_reference(
    case: str, package: tuple[Path, bool], input_file: Path, tmp_path: Path
) -> None:
    directory, scale_cond_input = package
    options, sampler, settings = CASES[case]
    if case == "churn" and scale_cond_input:
        pytest.skip("churn noise is sampler-side; one flag value is enough")
    store = _run_and_read(directory, input_file, tmp_path, options)
    expected = reference_ensemble(directory, input_file, 2, sampler, settings)

    np.testing.assert_array_equal(store["lat"].values, expected["lat"])
    np.testing.assert_array_equal(store["lon"].values, expected["lon"])
    for v, name in enumerate(OUTPUTS):
        scale = float(np.std(expected["samples"][:, v]))
        got = store[name].isel(time=0).transpose("sample", "y", "x").values
        np.testing.assert_allclose(got, expected["samples"][:, v], rtol=1e-5, atol=1e-3 * scale)
        mean = store[f"{name}_regression"].isel(time=0).values
        np.testing.assert_allclose(mean, expected["mean"][v], rtol=1e-5, atol=1e-3 * scale)
        # The residual is a visible part of every sample (a dropped mean or residual fails),
        # and the two members differ (their noise reached them).
        residual = expected["samples"][:, v] - expected["mean"][v]
        assert np.std(residual) > 0.01 * scale
        assert np.abs(got[0] - got[1]).max() > 0.01 * scale


@pytest.mark.slow
def test_scale_cond_input_changes_the_ensemble(input_file: Path, tmp_path: Path) -> None:
    """The two flag values are fed differently, by far more than the tolerance above."""
    stores = []
    for flag in (False, True):
        directory = lively_package(tmp_path / f"flag-{flag}", seed=4, scale_cond_input=flag)
        stores.append(
            _run_and_read(directory, input_file, tmp_path / f"run-{flag}", ["--steps", "2"])
        )
    for name in OUTPUTS:
        scale = float(np.std(stores[0][name].values))
        difference = np.abs(stores[0][name].values - stores[1][name].values).max()
        assert difference > 20 * 1e-3 * scale, name


def test_trained_geometry_is_pinned() -> None:
    """Pins the conclusion of downscale.py's geometry reading either way it goes."""
    from corrdiff_tools.downscale import GEOMETRY, WINDOW, grid_channels

    assert WINDOW == (slice(0, 448), slice(0, 448))
    assert "(0, 0)" in GEOMETRY
    axis = np.linspace(0, 2 * np.pi, 450)[:448]
    np.testing.assert_array_equal(grid_channels()[0, 5], np.sin(axis).astype("float32"))
    np.testing.assert_array_equal(grid_channels()[1, :, 7], np.sin(axis).astype("float32"))
    np.testing.assert_array_equal(grid_channels()[3, :, 0], np.cos(axis).astype("float32"))
    centre = np.sin(np.linspace(0, 2 * np.pi, 448)).astype("float32")
    assert np.abs(grid_channels()[0, 0] - centre).max() > 0.02
    assert math.isclose(float(np.abs(grid_channels()[0, 0] - centre).max()), 0.028, abs_tol=0.003)
