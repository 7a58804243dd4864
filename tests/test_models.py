"""Generic CorrDiff packages (earth2studio's ``CorrDiff`` format) through ``models.generic``.

Tiny packages in earth2studio's published generic layout, loaded through earth2studio's own
``load_model``. Each grid earth2studio 0.19 gets wrong is pinned twice: what earth2studio
does with it, and that ours runs it and matches an independent reference. The references
are earth2studio's own ``CorrDiff.__call__`` where it works (a square curvilinear grid),
and physicsnemo's ``regression_step``/``diffusion_step`` fed by hand everywhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from corrdiff_tools import synthetic
from corrdiff_tools.errors import UsageError
from corrdiff_tools.models import generic

#: Two variable sets, as two trained regions would have.
SURFACE_IN = ("t2m", "u10m", "v10m", "tcwv")
SURFACE_OUT = ("t2m", "u10m", "v10m")
LEVELS_IN = ("z500", "t850", "u850", "v850", "t2m")
LEVELS_OUT = ("mrr", "t2m")
#: A 32 x 48 regular 1/16-degree output grid and its 1/4-degree input box.
REGULAR_OUT = synthetic.regular_grid(21.0, 118.0, (32, 48), 0.0625)
REGULAR_IN = synthetic.regular_grid(20.0, 117.0, (16, 20), 0.25)
#: Curvilinear 2 km Lambert grids over Taiwan, square and not, and their input box.
CURVED_IN = synthetic.regular_grid(22.0, 119.5, (16, 16), 0.25)
STEPS = 4
SEEDS = [11, 12]


def _orography(shape: tuple[int, int]) -> np.ndarray:
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    return (
        800.0 * np.exp(-((rows - shape[0] / 2) ** 2 + (cols - shape[1] / 3) ** 2) / 60.0)
    ).astype("float32")


@dataclass(frozen=True)
class Case:
    """One package: its variables, grids and metadata."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    output_grid: tuple[np.ndarray, np.ndarray]
    input_grid: tuple[np.ndarray, np.ndarray]
    metadata: dict[str, Any]
    invariants: bool = False


def _curvilinear(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    lat, lon = synthetic.curvilinear_grid(shape)
    return lat.astype("float64"), lon.astype("float64")


def _meshed(grid: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lat, lon = np.meshgrid(*grid, indexing="ij")
    return lat, lon


CASES = {
    # A square curvilinear grid, stochastic: the one layout earth2studio runs correctly.
    "square": Case(
        SURFACE_IN, SURFACE_OUT, _curvilinear((32, 32)), CURVED_IN,
        {"number_of_steps": STEPS, "number_of_samples": 2, "seed": SEEDS[0]},
    ),
    # A regular grid as 1-D axes, non-square, with invariants; sigmas of its own.
    "regular": Case(
        SURFACE_IN, SURFACE_OUT, REGULAR_OUT, REGULAR_IN,
        {"number_of_steps": STEPS, "sigma_min": 0.01, "sigma_max": 400.0}, invariants=True,
    ),
    # The same axes with latitudes north to south, as many datasets write them.
    "north_to_south": Case(
        SURFACE_IN, SURFACE_OUT, (REGULAR_OUT[0][::-1].copy(), REGULAR_OUT[1]), REGULAR_IN,
        {"number_of_steps": STEPS},
    ),
    # The same grid written as 2-D arrays, another variable set.
    "regular_2d": Case(
        LEVELS_IN, LEVELS_OUT, _meshed(REGULAR_OUT), _meshed(REGULAR_IN),
        {"number_of_steps": STEPS},
    ),
    # A non-square curvilinear grid, a diffusion net that does not read the mean.
    "oblong": Case(
        LEVELS_IN, LEVELS_OUT, _curvilinear((32, 48)), CURVED_IN,
        {"number_of_steps": STEPS, "hr_mean_conditioning": False},
    ),
    # The deterministic sampler with the regression mean as conditioning.
    "deterministic": Case(
        SURFACE_IN, SURFACE_OUT, REGULAR_OUT, REGULAR_IN,
        {"number_of_steps": STEPS, "sampler_type": "deterministic", "solver": "heun",
         "sigma_min": 0.005, "sigma_max": 60.0},
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generic")
    built = {}
    for name, case in CASES.items():
        shape = case.output_grid[0].shape
        if case.output_grid[0].ndim == 1:
            shape = (case.output_grid[0].size, case.output_grid[1].size)
        built[name] = synthetic.build_generic_package(
            root / name,
            case.inputs,
            case.outputs,
            case.output_grid,
            case.input_grid,
            invariants={"orog": _orography(shape)} if case.invariants else None,
            metadata=case.metadata,
            seed=len(name),
        )
    return built


def _inputs(case: Case, seed: int = 0) -> np.ndarray:
    """Plausible fields on the case's input grid, (variables, lat, lon)."""
    lat = case.input_grid[0]
    shape = lat.shape if lat.ndim == 2 else (case.input_grid[0].size, case.input_grid[1].size)
    rng = np.random.default_rng(seed)
    fields = []
    for name in case.inputs:
        centre, scale = synthetic.TYPICAL[name]
        fields.append(centre + scale * rng.standard_normal(shape))
    return np.stack(fields).astype("float32")


def _stats(package: Path) -> dict[str, Any]:
    return dict(json.loads((package / "stats.json").read_text()))


def _reference(
    package: Path, case: Case, inputs: np.ndarray, seeds: list[int], mean_only: bool = False
) -> np.ndarray:
    """physicsnemo's own steps fed by hand from the package's files: no code of ours.

    Interpolation with earth2studio's regular bilinear function onto the 2-D output grid,
    invariants appended, normalisation from stats.json, ``regression_step``, then
    ``diffusion_step`` with physicsnemo's sampler, the seeds and the regression mean.
    """
    from functools import partial

    import xarray as xr
    from earth2studio.utils import interp
    from physicsnemo import Module
    from physicsnemo.diffusion.generate.legacy_generate import diffusion_step, regression_step
    from physicsnemo.diffusion.samplers.legacy_deterministic_sampler import (
        deterministic_sampler,
    )
    from physicsnemo.diffusion.samplers.legacy_stochastic_sampler import stochastic_sampler

    stats = _stats(package)
    metadata = json.loads((package / "metadata.json").read_text())
    with xr.open_dataset(package / "output_latlon_grid.nc", engine="h5netcdf") as grid:
        lat_out, lon_out = np.asarray(grid["lat"]), np.asarray(grid["lon"])
    if lat_out.ndim == 1:
        lat_out, lon_out = np.meshgrid(lat_out, lon_out, indexing="ij")
    lat_in, lon_in = case.input_grid
    if lat_in.ndim == 2:
        lat_in, lon_in = np.ascontiguousarray(lat_in[:, 0]), np.ascontiguousarray(lon_in[0, :])
    x = interp.latlon_interpolation_regular(
        torch.as_tensor(inputs),
        torch.as_tensor(lat_in),
        torch.as_tensor(lon_in),
        torch.as_tensor(lat_out),
        torch.as_tensor(lon_out),
    )
    centre = [stats["input"][v]["mean"] for v in case.inputs]
    scale = [stats["input"][v]["std"] for v in case.inputs]
    if case.invariants:
        with xr.open_dataset(package / "invariants.nc", engine="h5netcdf") as inv:
            x = torch.cat([x, torch.as_tensor(np.asarray(inv["orog"]))[None]])
        centre.append(stats["invariants"]["orog"]["mean"])
        scale.append(stats["invariants"]["orog"]["std"])
    img_lr = ((x - torch.tensor(centre)[:, None, None]) / torch.tensor(scale)[:, None, None])[
        None
    ].float()
    regression = Module.from_checkpoint(str(package / "regression.mdlus")).eval()
    diffusion = Module.from_checkpoint(str(package / "diffusion.mdlus")).eval()
    shape = tuple(lat_out.shape)
    channels = len(case.outputs)
    mean = regression_step(net=regression, img_lr=img_lr, latents_shape=(1, channels, *shape))
    sigmas = {key: metadata[key] for key in ("sigma_min", "sigma_max") if key in metadata}
    if metadata.get("sampler_type") == "deterministic":
        sampler = partial(
            deterministic_sampler,
            num_steps=metadata["number_of_steps"],
            solver=metadata["solver"],
            **sigmas,
        )
    else:
        sampler = partial(stochastic_sampler, num_steps=metadata["number_of_steps"], **sigmas)
    residuals = [
        diffusion_step(
            net=diffusion,
            sampler_fn=sampler,
            img_shape=shape,
            img_out_channels=channels,
            rank_batches=[[seed]],
            img_lr=img_lr,
            rank=1,
            device=torch.device("cpu"),
            mean_hr=mean if metadata.get("hr_mean_conditioning", True) else None,
        )
        for seed in seeds
    ]
    out = mean.expand(len(seeds), -1, -1, -1) if mean_only else mean + torch.cat(residuals)
    out_centre = torch.tensor([stats["output"][v]["mean"] for v in case.outputs])
    out_scale = torch.tensor([stats["output"][v]["std"] for v in case.outputs])
    return (out * out_scale[:, None, None] + out_centre[:, None, None]).float().numpy()


# earth2studio's behaviour, pinned: if a release fixes one, its test says so.


def _earth2studio(package: Path) -> Any:
    from earth2studio.models.auto import Package
    from earth2studio.models.dx.corrdiff import CorrDiff

    return CorrDiff.load_model(Package(str(package)))


def _call(model: Any, inputs: np.ndarray) -> tuple[torch.Tensor, Any]:
    coords = model.input_coords()
    coords["batch"] = np.array([0])
    return model(torch.as_tensor(inputs)[None], coords)


def test_earth2studio_loads_a_1d_regular_grid_and_fails_at_the_first_call(
    packages: dict[str, Path],
) -> None:
    model = _earth2studio(packages["regular"])
    with pytest.raises(ValueError, match=r"not enough values to unpack \(expected 2, got 1\)"):
        _call(model, _inputs(CASES["regular"]))


def test_earth2studio_refuses_a_north_to_south_output_grid(packages: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="latitude must be increasing"):
        _earth2studio(packages["north_to_south"])


def test_earth2studio_refuses_a_2d_regular_grid_at_load(packages: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="rectilinear but stored as 2D"):
        _earth2studio(packages["regular_2d"])


def test_earth2studio_sizes_a_non_square_grid_from_the_first_dimensions(
    packages: dict[str, Path],
) -> None:
    model = _earth2studio(packages["oblong"])
    assert model.img_shape == (32, 32)  # the grid is 32 x 48
    with pytest.raises(RuntimeError, match=r"expanded size of the tensor \(32\) must match"):
        _call(model, _inputs(CASES["oblong"]))


def test_earth2studio_refuses_the_deterministic_sampler_with_mean_conditioning(
    packages: dict[str, Path],
) -> None:
    with pytest.raises(NotImplementedError, match="deterministic"):
        _earth2studio(packages["deterministic"])


# Ours.


@pytest.fixture(scope="module")
def loaded(packages: dict[str, Path]) -> dict[str, generic.RegionalCorrDiff]:
    return {name: generic.load(path) for name, path in packages.items()}


def test_square_grid_matches_earth2studios_own_call_bitwise(
    packages: dict[str, Path], loaded: dict[str, generic.RegionalCorrDiff]
) -> None:
    """Where earth2studio conditions correctly, its own call is the reference."""
    case = CASES["square"]
    inputs = _inputs(case)
    theirs, coords = _call(_earth2studio(packages["square"]), inputs)
    assert theirs.shape == (1, 2, len(case.outputs), 32, 32)
    assert list(coords["variable"]) == list(case.outputs)
    # earth2studio seeds sample i with seed + i and runs one sample per network call (a
    # batch of two rounds differently on CPU, see below).
    sampler = generic.GenericSampler(loaded["square"])
    ours = np.concatenate([sampler.samples(inputs, [SEEDS[0] + i]) for i in range(2)])
    np.testing.assert_array_equal(ours, theirs[0].numpy())
    assert np.ptp(ours[0] - ours[1]) > 0.1, "two samples must differ"


@pytest.mark.parametrize(
    "name", ["regular", "north_to_south", "regular_2d", "oblong", "deterministic"]
)
def test_every_grid_matches_physicsnemos_steps(
    name: str, packages: dict[str, Path], loaded: dict[str, generic.RegionalCorrDiff]
) -> None:
    case = CASES[name]
    model = loaded[name]
    height, width = (32, 48)
    assert model.img_shape == (height, width)
    assert model.lat.shape == model.lon.shape == (height, width)
    assert model.lat.min() > 20.0 and model.lon.min() > 116.0
    # The grid as the package wrote it, in its own direction.
    lat = case.output_grid[0] if case.output_grid[0].ndim == 2 else case.output_grid[0][:, None]
    np.testing.assert_allclose(model.lat, np.broadcast_to(lat, (height, width)), atol=1e-6)
    inputs = _inputs(case, seed=3)
    ours = generic.GenericSampler(model).samples(inputs, SEEDS)
    assert ours.shape == (len(SEEDS), len(case.outputs), height, width)
    assert np.isfinite(ours).all()
    expected = _reference(packages[name], case, inputs, SEEDS)
    # The reference runs one sample per call and without channels_last: float32 rounding
    # of fields whose spread is tens of units (3e-4 seen); the mutations below move 0.1+.
    np.testing.assert_allclose(ours, expected, rtol=0, atol=5e-3)
    # The fields vary and the two members differ: a constant output would pass nothing.
    assert np.ptp(ours[0, 0]) > 0.1 and np.abs(ours[0] - ours[1]).max() > 0.1


def test_earth2studios_call_works_on_our_class_for_a_non_square_grid(
    loaded: dict[str, generic.RegionalCorrDiff],
) -> None:
    """Our y/x output coordinates size earth2studio's own __call__ right."""
    model = loaded["oblong"]
    out, coords = _call(model, _inputs(CASES["oblong"]))
    assert out.shape == (1, 1, len(LEVELS_OUT), 32, 48)
    assert list(coords) == ["batch", "sample", "variable", "y", "x"]
    assert np.isfinite(out.numpy()).all()


def test_a_sample_does_not_depend_on_its_batch(
    loaded: dict[str, generic.RegionalCorrDiff],
) -> None:
    """Same noise whatever the batch; only the network's rounding may differ (2e-4 here)."""
    sampler = generic.GenericSampler(loaded["regular"])
    inputs = _inputs(CASES["regular"])
    both = sampler.samples(inputs, SEEDS)
    for index, seed in enumerate(SEEDS):
        np.testing.assert_allclose(sampler.samples(inputs, [seed])[0], both[index], atol=1e-2)
    assert np.abs(both[0] - both[1]).max() > 1.0


# Mutations: each breaks one thing the forward pass must get right; the reference sees it.


def _mutated(loaded: dict[str, generic.RegionalCorrDiff], mutate: str) -> np.ndarray:
    case = CASES["regular"]
    sampler = generic.GenericSampler(loaded["regular"])
    inputs = _inputs(case, seed=3)
    if mutate == "swap two channels":
        inputs = inputs[[1, 0, 2, 3]]
    elif mutate == "drop the mean":
        regression = sampler.regression_mean
        sampler.regression_mean = lambda condition: torch.zeros_like(regression(condition))  # type: ignore[method-assign]
    elif mutate == "drop the invariants":
        model = loaded["regular"]
        saved = model.invariants.clone()
        model.invariants.zero_()
        try:
            return sampler.samples(inputs, SEEDS)
        finally:
            model.invariants.copy_(saved)
    return sampler.samples(inputs, SEEDS)


@pytest.mark.parametrize("mutate", ["swap two channels", "drop the mean", "drop the invariants"])
def test_the_reference_catches(
    mutate: str, packages: dict[str, Path], loaded: dict[str, generic.RegionalCorrDiff]
) -> None:
    expected = _reference(
        packages["regular"], CASES["regular"], _inputs(CASES["regular"], 3), SEEDS
    )
    got = _mutated(loaded, mutate)
    assert np.abs(got - expected).max() > 0.1


def test_the_package_sets_the_sampler(loaded: dict[str, generic.RegionalCorrDiff]) -> None:
    paper = generic.package_settings(loaded["regular"])
    assert (paper.sampler, paper.steps, paper.solver, paper.sigma_min, paper.sigma_max) == (
        "stochastic", STEPS, "heun", 0.01, 400.0,
    )  # fmt: skip
    # Where metadata.json is silent: physicsnemo's defaults, which earth2studio leaves to it.
    default = generic.package_settings(loaded["north_to_south"])
    assert (default.sigma_min, default.sigma_max, default.rho) == (0.002, 800.0, 7.0)
    blog = generic.package_settings(loaded["deterministic"])
    assert (blog.sampler, blog.steps, blog.solver, blog.sigma_min, blog.sigma_max) == (
        "deterministic", STEPS, "heun", 0.005, 60.0,
    )  # fmt: skip


def test_regression_mode_returns_the_mean_for_every_member(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    package = Path(shutil.copytree(packages["regular"], tmp_path / "regression-only"))
    metadata = json.loads((package / "metadata.json").read_text())
    (package / "metadata.json").write_text(json.dumps({**metadata, "inference_mode": "regression"}))
    sampler = generic.GenericSampler(generic.load(package))
    inputs = _inputs(CASES["regular"])
    out = sampler.samples(inputs, SEEDS)
    np.testing.assert_array_equal(out[0], out[1])
    assert np.ptp(out[0, 0]) > 0.1
    expected = _reference(package, CASES["regular"], inputs, SEEDS, mean_only=True)
    np.testing.assert_allclose(out, expected, rtol=0, atol=5e-3)


# Bad packages: one clear error, naming what is wrong, before anything is imported from them.


def test_a_folder_missing_files_names_them(packages: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    package = Path(shutil.copytree(packages["regular"], tmp_path / "partial"))
    (package / "stats.json").unlink()
    (package / "input_latlon_grid.nc").unlink()
    with pytest.raises(UsageError) as caught:
        generic.load(package)
    message = str(caught.value)
    assert message.startswith(f"package {package}: not a generic CorrDiff package, missing ")
    assert "stats.json" in message and "input_latlon_grid.nc (or latlon_res" in message
    assert "regression.mdlus" not in message


def _foreign_diffusion(source: Path, package: Path) -> None:
    """Rewrite ``package``'s diffusion checkpoint to name ``os.system`` as its class."""
    import zipfile

    with zipfile.ZipFile(source / "diffusion.mdlus") as original:
        members = {name: original.read(name) for name in original.namelist()}
    name = next(n for n in members if n.endswith("args.json"))
    args = json.loads(members[name])
    args["__module__"], args["__name__"] = "os", "system"
    members[name] = json.dumps(args).encode()
    with zipfile.ZipFile(package / "diffusion.mdlus", "w") as target:
        for member, data in members.items():
            target.writestr(member, data)


def test_a_checkpoint_naming_a_foreign_class_is_refused(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    package = Path(shutil.copytree(packages["regular"], tmp_path / "foreign"))
    _foreign_diffusion(packages["regular"], package)
    with pytest.raises(UsageError, match=r"diffusion.mdlus asks to import os\.system"):
        generic.load(package)


def _edited(packages: dict[str, Path], tmp_path: Path, name: str, **metadata: Any) -> Path:
    """A copy of the ``regular`` package, its metadata.json updated with ``metadata``."""
    import shutil

    package = Path(shutil.copytree(packages["regular"], tmp_path / name))
    original = json.loads((package / "metadata.json").read_text())
    (package / "metadata.json").write_text(json.dumps({**original, **metadata}))
    return package


def test_stats_lacking_an_output_is_named(packages: dict[str, Path], tmp_path: Path) -> None:
    package = _edited(packages, tmp_path, "no-output-stats")
    stats = _stats(package)
    del stats["output"]["v10m"]
    (package / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(UsageError) as caught:
        generic.load(package)
    assert str(caught.value) == (
        f"package {package}: stats.json lacks an entry: v10m (it needs the mean and std of "
        "every input, output and invariant)"
    )


def test_a_diffusion_net_trained_without_the_mean_is_named(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    """Metadata saying no mean conditioning, nets wired for it: refused at load, counted."""
    package = _edited(packages, tmp_path, "no-mean", hr_mean_conditioning=False)
    with pytest.raises(UsageError) as caught:
        generic.load(package)
    assert str(caught.value) == (
        f"package {package}: diffusion.mdlus reads 12 channels, the package's files give 9 "
        "(4 input variable(s) + 1 invariant(s) + 4 positional channel(s) + 0 regression "
        "mean channel(s) (hr_mean_conditioning: false))"
    )


def test_a_package_without_its_invariants_is_refused(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    package = _edited(packages, tmp_path, "no-invariants")
    (package / "invariants.nc").unlink()
    with pytest.raises(UsageError, match=r"regression.mdlus reads 9 channels, .* give 8"):
        generic.load(package)


def test_invariants_on_another_grid_are_refused(packages: dict[str, Path], tmp_path: Path) -> None:
    import xarray as xr

    package = _edited(packages, tmp_path, "small-invariants")
    xr.Dataset({"orog": (("lat", "lon"), _orography((16, 48)))}).to_netcdf(
        package / "invariants.nc", engine="h5netcdf"
    )
    with pytest.raises(UsageError) as caught:
        generic.load(package)
    assert str(caught.value) == (
        f"package {package}: invariants.nc holds fields of (16, 48), the output grid is (32, 48)"
    )


def test_a_remote_package_is_checked_before_it_is_loaded(
    packages: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """earth2studio's loader imports what a checkpoint names: a remote one is checked first."""
    import shutil

    from earth2studio.models.auto import Package

    from corrdiff_tools import model as model_module

    package = Path(shutil.copytree(packages["regular"], tmp_path / "remote"))
    _foreign_diffusion(packages["regular"], package)
    fetched: list[str] = []

    def resolve(self: Any, name: str) -> str:
        fetched.append(name)
        return str(package / name)

    monkeypatch.setattr(model_module, "is_remote", lambda spec: True)
    monkeypatch.setattr(Package, "resolve", resolve)
    loads: list[Any] = []
    monkeypatch.setattr(generic.RegionalCorrDiff, "load_model", lambda *a, **k: loads.append(a))
    with pytest.raises(UsageError, match=r"diffusion.mdlus asks to import os\.system"):
        generic.load("https://example.org/my-corrdiff")
    assert loads == []
    assert set(fetched) == {*generic.REQUIRED_FILES, *generic.CHECKPOINTS}


def test_no_such_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such folder"):
        generic.load(tmp_path / "nowhere")


def test_the_readmes_python_example_runs_as_written(
    packages: dict[str, Path], loaded: dict[str, generic.RegionalCorrDiff], tmp_path: Path
) -> None:
    import re

    from corrdiff_tools.downscale import sample_seed

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Other CorrDiff models", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    inputs = _inputs(CASES["regular"], seed=5)
    np.save(tmp_path / "inputs.npy", inputs)
    assert code.count('"my_corrdiff_package"') == 1 and code.count('"my_inputs.npy"') == 1
    code = code.replace('"my_corrdiff_package"', repr(str(packages["regular"])))
    code = code.replace('"my_inputs.npy"', repr(str(tmp_path / "inputs.npy")))
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    members = namespace["members"]
    assert members.shape == (4, len(SURFACE_OUT), 32, 48)
    assert namespace["lat"].shape == (32, 48)
    time = namespace["time"]
    seeds = [sample_seed(0, time, 0, member) for member in range(4)]
    expected = generic.GenericSampler(loaded["regular"]).samples(inputs, seeds)
    np.testing.assert_array_equal(members, expected)


# Inputs taken by name: what a data source or file gives, in any order and orientation.


def _as_dataarray(case: Case, inputs: np.ndarray) -> Any:
    import xarray as xr

    return xr.DataArray(
        inputs,
        dims=("variable", "lat", "lon"),
        coords={
            "variable": list(case.inputs),
            "lat": case.input_grid[0],
            "lon": case.input_grid[1],
        },
    )


def test_inputs_are_taken_by_name_whatever_their_order(
    loaded: dict[str, generic.RegionalCorrDiff],
) -> None:
    case = CASES["regular"]
    sampler = generic.GenericSampler(loaded["regular"])
    inputs = _inputs(case, seed=7)
    array = _as_dataarray(case, inputs)
    # Shuffled variables, latitudes descending (as GFS stores them), longitudes written
    # 360 degrees off (117 E as -243), an extra variable, dims transposed.
    messy = array.isel(variable=[2, 0, 3, 1], lat=slice(None, None, -1))
    extra = messy.isel(variable=[0]).assign_coords(variable=["msl"])
    import xarray as xr

    messy = xr.concat([messy, extra], dim="variable").transpose("lon", "variable", "lat")
    messy = messy.assign_coords(lon=messy["lon"] - 360.0)
    np.testing.assert_array_equal(sampler.align(messy), inputs)
    np.testing.assert_array_equal(
        sampler.samples(messy, SEEDS[:1]), sampler.samples(inputs, SEEDS[:1])
    )


def test_inputs_missing_a_variable_name_what_the_package_reads(
    loaded: dict[str, generic.RegionalCorrDiff],
) -> None:
    case = CASES["regular"]
    sampler = generic.GenericSampler(loaded["regular"])
    array = _as_dataarray(case, _inputs(case)).isel(variable=[0, 2])
    with pytest.raises(ValueError) as caught:
        sampler.align(array)
    assert str(caught.value) == ("inputs lack u10m, tcwv: this package reads t2m, u10m, v10m, tcwv")
    labels = ["t2m", "u10m", "t2m", "tcwv"]
    twice = _as_dataarray(case, _inputs(case)).assign_coords(variable=labels)
    with pytest.raises(ValueError) as caught:
        sampler.align(twice)
    assert str(caught.value) == "inputs name t2m more than once: which one is meant is unknown"


def test_inputs_off_the_packages_grid_are_refused(
    loaded: dict[str, generic.RegionalCorrDiff],
) -> None:
    case = CASES["regular"]
    sampler = generic.GenericSampler(loaded["regular"])
    array = _as_dataarray(case, _inputs(case))
    shifted = array.assign_coords(lat=array["lat"] + 0.1)
    with pytest.raises(ValueError, match=r"lat 20 is missing \(nearest 20\.1\)"):
        sampler.align(shifted)
    with pytest.raises(ValueError, match="lon is not strictly increasing or decreasing"):
        sampler.align(array.isel(lon=[0, 2, 1, *range(3, 20)]))
    holed = array.copy()
    holed[1, 3, 4] = np.nan
    with pytest.raises(ValueError, match=r"u10m has 1 NaN/inf value\(s\) of 320"):
        sampler.align(holed)
    with pytest.raises(ValueError, match=r"inputs have shape \(3, 16, 20\); the package reads"):
        sampler.samples(_inputs(case)[:3], SEEDS)


# A family whose preprocessing adds time features (as CorrDiffCMIP6's solar zenith and hour
# of day do) keeps them: the valid time reaches the model's own preprocess_input.


class HourlyCorrDiff(generic.RegionalCorrDiff):
    """Writes the hour of day into its last input channel, as CorrDiffCMIP6 writes into a slot."""

    def preprocess_input(self, x: torch.Tensor, valid_time: Any = None) -> torch.Tensor:
        if valid_time is None:
            raise ValueError("HourlyCorrDiff needs the valid time")
        x = super().preprocess_input(x, valid_time)
        x[:, -1] = float(np.cos(2 * np.pi * valid_time.hour / 24))
        return x


def test_time_features_reach_the_model_as_in_earth2studios_call(
    packages: dict[str, Path],
) -> None:
    from datetime import datetime

    from earth2studio.models.auto import Package

    model = HourlyCorrDiff.load_model(Package(str(packages["square"])))
    inputs = _inputs(CASES["square"], seed=9)
    noon, evening = datetime(2024, 7, 24, 12), datetime(2024, 7, 24, 18)
    # earth2studio's own forward pass with the valid time. Its __call__ documents a "time"
    # coordinate for this, but 0.19's batch decorator refuses the extra key before the
    # method can remove it ("Input tensor shape does not match the provided coordinates").
    theirs = model._forward(torch.as_tensor(inputs), noon)
    sampler = generic.GenericSampler(model)
    seeds = [SEEDS[0], SEEDS[0] + 1]
    ours = np.concatenate([sampler.samples(inputs, [s], valid_time=noon) for s in seeds])
    np.testing.assert_array_equal(ours, theirs.numpy())
    later = np.concatenate([sampler.samples(inputs, [s], valid_time=evening) for s in seeds])
    assert np.abs(later - ours).max() > 0.1, "another hour must change the fields"
    with pytest.raises(ValueError, match="needs the valid time"):
        sampler.samples(inputs, seeds)
