"""``run_corrdiff.py --model PATH_OR_URL``: a generic CorrDiff package through both tools.

A tiny package in earth2studio's generic layout (a non-square regular output grid, an
invariant, an output variable the tool has no units for, an input grid that is not on
Taiwan's 0.25-degree lattice) is run from a local file, end to end: the real loader
(earth2studio's ``load_model``), the real file source (earth2studio's ``DataArrayFile``),
the store, ``--resume``. The samples are checked against the generic forward pass called
directly on the inputs (that pass is itself pinned to earth2studio and physicsnemo in
``test_models.py``), so what is tested here is the wiring: inputs by name on the
package's grid, one seed per (time, sample), outputs in the package's order and grid.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from corrdiff_tools import downscale, model, sources, store, synthetic
from corrdiff_tools.cli import plot_main, run_main
from corrdiff_tools.models.declaration import MODEL_ATTR

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ("t2m", "u10m", "v10m", "tcwv")
#: tp: a variable the store has no CF attributes for (no units are guessed).
OUTPUTS = ("t2m", "u10m", "tp")
#: 1/16-degree output grid over Iberia, 24 x 40: not square, listed as 1-D axes, west of
#: Greenwich (negative longitudes), far from Taiwan's box (whose constants must not leak in).
OUT_GRID = synthetic.regular_grid(41.0, -9.0, (24, 40), 0.0625)
#: The input box, a quarter degree on a lattice of its own.
IN_GRID = synthetic.regular_grid(40.1, -10.05, (14, 18), 0.25)
TIMES = [datetime(2024, 7, 24, 0), datetime(2024, 7, 24, 6)]
SEED = 7
TYPICAL = {"t2m": (290.0, 3.0), "u10m": (0.0, 5.0), "v10m": (0.0, 5.0), "tcwv": (40.0, 8.0)}


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shape = (OUT_GRID[0].size, OUT_GRID[1].size)
    rows = np.arange(shape[0])[:, None] + np.zeros(shape[1])
    return synthetic.build_generic_package(
        tmp_path_factory.mktemp("generic") / "package",
        INPUTS,
        OUTPUTS,
        OUT_GRID,
        IN_GRID,
        invariants={"orog": (30.0 * rows).astype("float32")},
        metadata={"number_of_steps": 3, "sigma_max": 80.0},
    )


def _fields(time_index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + time_index)
    shape = (IN_GRID[0].size, IN_GRID[1].size)
    return {
        name: (mean + spread * rng.standard_normal(shape)).astype("float32")
        for name, (mean, spread) in TYPICAL.items()
    }


@pytest.fixture(scope="module")
def input_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The inputs as a user's file: another variable order, an extra variable, latitudes
    north to south, longitudes as 0..360 (all of which the tool must see through)."""
    order = ["tcwv", "msl", "v10m", "t2m", "u10m"]
    data = []
    for index in range(len(TIMES)):
        fields = {**_fields(index), "msl": np.full((14, 18), 101000.0, dtype="float32")}
        data.append(np.stack([fields[name][::-1] for name in order]))
    array = sources.input_dataarray(
        np.stack(data), TIMES, order, IN_GRID[0][::-1].copy(), IN_GRID[1] % 360.0
    )
    path = tmp_path_factory.mktemp("inputs") / "inputs.nc"
    array.to_netcdf(path)
    return path


def _run(
    capsys: pytest.CaptureFixture[str], package: Path | str, inputs: Path, output: Path, *extra: str
) -> tuple[int, str]:
    capsys.readouterr()
    times = [t.strftime("%Y-%m-%dT%H") for t in TIMES]
    argv = [*times, "--model", str(package), "--source", str(inputs), "--samples", "2"]
    argv += ["--seed", str(SEED), "--device", "cpu", "--output", str(output), "-q", *extra]
    code = run_main(argv)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def made(package: Path, input_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("run") / "generic.zarr"
    times = [t.strftime("%Y-%m-%dT%H") for t in TIMES]
    argv = [*times, "--model", str(package), "--source", str(input_file), "--samples", "2"]
    assert run_main([*argv, "--seed", str(SEED), "--device", "cpu", "--output", str(output)]) == 0
    return output


def _reference(package: Path) -> tuple[np.ndarray, np.ndarray]:
    """Samples (time, sample, variable, y, x) and regression means, from the forward pass
    called directly on the inputs by name, with the seeds a run gives each sample."""
    from corrdiff_tools.models import generic

    sampler = generic.GenericSampler(generic.load(package, device="cpu"))
    samples, means = [], []
    for index, time in enumerate(TIMES):
        fields = _fields(index)
        array = xr.DataArray(
            np.stack([fields[name] for name in INPUTS]),
            dims=("variable", "lat", "lon"),
            coords={"variable": list(INPUTS), "lat": IN_GRID[0], "lon": IN_GRID[1]},
        )
        seeds = [downscale.sample_seed(SEED, time, 0, s) for s in range(2)]
        samples.append(sampler.samples(array, seeds, time))
        condition = sampler.condition(array, time)
        means.append(sampler.denormalise(sampler.regression_mean(condition))[0])
    return np.stack(samples), np.stack(means)


def test_a_generic_package_runs_to_a_store_on_its_own_grid(made: Path, package: Path) -> None:
    dataset = xr.open_zarr(made)
    # The package's outputs on its 24 x 40 grid; nothing of Taiwan's.
    assert {name for name in dataset.data_vars if "_" not in name} == {*OUTPUTS, "completed"}
    for name in OUTPUTS:
        assert dataset[name].dims == ("time", "sample", "y", "x")
        assert dataset[name].shape == (2, 2, 24, 40)
    lat, lon = np.meshgrid(*OUT_GRID, indexing="ij")
    np.testing.assert_allclose(dataset["lat"].values, lat, atol=1e-5)
    np.testing.assert_allclose(dataset["lon"].values, lon, atol=1e-5)
    assert dataset["t2m"].attrs["units"] == "K"
    assert "units" not in dataset["tp"].attrs and dataset["tp"].attrs["long_name"] == "tp"
    assert json.loads(dataset.attrs[MODEL_ATTR]) == {
        "name": "package", "inputs": list(INPUTS), "outputs": list(OUTPUTS),
    }  # fmt: skip
    settings = json.loads(dataset.attrs[store.SETTINGS_ATTR])
    assert settings["model"]["outputs"] == list(OUTPUTS)
    assert settings["sampler"]["steps"] == 3 and settings["sampler"]["sigma_max"] == 80.0
    assert dataset.attrs["title"].startswith("CorrDiff (a generic package)")
    assert dataset["completed"].values.all()
    # The inputs as the model read them: by name, on the package's grid, south to north.
    np.testing.assert_allclose(dataset["lat_lr"].values, IN_GRID[0])
    np.testing.assert_allclose(dataset["lon_lr"].values, IN_GRID[1])
    for index in range(len(TIMES)):
        for name, values in _fields(index).items():
            np.testing.assert_array_equal(dataset[f"lr_{name}"].values[index], values)
    assert "lr_msl" not in dataset


def test_the_stored_samples_are_the_forward_pass_on_the_inputs_by_name(
    made: Path, package: Path
) -> None:
    samples, means = _reference(package)
    dataset = xr.open_zarr(made)
    for v, name in enumerate(OUTPUTS):
        np.testing.assert_allclose(dataset[name].values, samples[:, :, v], rtol=0, atol=1e-4)
        np.testing.assert_allclose(
            dataset[f"{name}_regression"].values, means[:, v], rtol=0, atol=1e-4
        )
    # The two samples of a time differ (one seed each), and so do the two times: by far
    # more than the rounding the other tests here allow for.
    t2m = dataset["t2m"].values
    assert np.abs(t2m[0, 0] - t2m[0, 1]).max() > 1.0
    assert np.abs(t2m[0, 0] - t2m[1, 0]).max() > 1.0


def test_resume_recomputes_what_is_missing_and_refuses_another_package(
    made: Path,
    package: Path,
    input_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(made, copy)
    before = xr.open_zarr(made)["t2m"].values
    writer = store.StoreWriter(copy)
    assert writer.outputs == OUTPUTS
    writer.unmark([(1, 1)])
    code, err = _run(capsys, package, input_file, copy, "--resume")
    assert code == 0, err
    resumed = xr.open_zarr(copy)
    assert resumed["completed"].values.all()
    again = resumed["t2m"].values
    # Only the unmarked piece is recomputed: the rest is untouched, bit for bit. It was
    # computed in a batch of two, now alone: batched convolutions round differently, a
    # noise mix-up would differ by O(1) (see the test above).
    np.testing.assert_array_equal(np.delete(again.reshape(4, -1), 3, 0), before.reshape(4, -1)[:3])
    np.testing.assert_allclose(again[1, 1], before[1, 1], rtol=0, atol=1e-2)

    other = tmp_path / "other"
    shutil.copytree(package, other)
    stats = json.loads((other / "stats.json").read_text())
    stats["output"]["t2m"]["mean"] += 1.0
    (other / "stats.json").write_text(json.dumps(stats))
    writer.unmark([(1, 1)])
    code, err = _run(capsys, other, input_file, copy, "--resume")
    assert code == 2 and "was made with other settings (model_package:" in err, err
    assert not store.StoreWriter(copy).completed()[1, 1]  # nothing computed or written


@pytest.mark.slow
def test_a_generic_package_runs_in_bf16_on_request_and_resumes_only_in_it(
    made: Path, package: Path, input_file: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """--precision bf16 autocasts the package's backbones (float32 weights), as for Taiwan:
    the samples move from the fp32 run's, within bounds measured here (max |bf16 - fp32|
    0.09 to 0.12 of each output's spread on this tiny, lively package; asserted below 0.3,
    and above 0, or bf16 was not in effect), and the store says bfloat16. The
    default on a CPU is fp32 (``made``), and a resume in the other precision is refused."""
    output = tmp_path / "bf16.zarr"
    code, err = _run(capsys, package, input_file, output, "--precision", "bf16")
    assert code == 0, err
    half, full = xr.open_zarr(output), xr.open_zarr(made)
    assert half.attrs["precision"] == "bfloat16" and full.attrs["precision"] == "float32"
    for name in OUTPUTS:
        difference = np.abs(half[name].values - full[name].values)
        assert np.isfinite(half[name].values).all()
        assert 0 < difference.max() < 0.3 * float(full[name].std()), name
    code, err = _run(capsys, package, input_file, output, "--resume")
    assert code == 2, err
    assert "its samples were computed in bfloat16, this run would compute in float32" in err
    loaded, dtype = model.load_generic(str(package), model.resolve_device("cpu"), "bf16")
    assert dtype == "bfloat16"
    for net in (loaded.regression_model, loaded.residual_model):
        assert type(net.model).__name__ == "AutocastNetwork"
        assert all(p.dtype == torch.float32 for p in net.parameters())


def test_auto_precision_on_a_gpu_is_each_model_s_published_one(package: Path) -> None:
    """fp16 for Taiwan (earth2studio's use_fp16), bf16 for CorrDiffCMIP6 (its autocast),
    fp32 for a generic package (earth2studio loads it so); fp32 on a CPU for all."""
    from corrdiff_tools.models import cmip6
    from corrdiff_tools.models.declaration import from_package

    gpu = model.DeviceInfo(torch.device("cuda:0"), "a GPU")  # resolved, never touched
    cpu = model.resolve_device("cpu")
    generic = from_package(package, "--model x")
    for declared, published in (
        (store.TAIWAN, "fp16"), (cmip6.family(generic), "bf16"), (generic, "fp32"),
    ):  # fmt: skip
        assert model.resolve_precision("auto", gpu, declared.gpu_precision) == published
        assert model.resolve_precision("auto", cpu, declared.gpu_precision) == "fp32"


@pytest.mark.slow
def test_a_compiled_generic_package_writes_what_the_uncompiled_one_does(
    made: Path, package: Path, input_file: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """--compile: torch.compile's Inductor fuses element-wise arithmetic, so the samples
    match to rounding, not bitwise (measured: max 1.6e-3 in a t2m of spread ~30, 5e-5 of
    it). A difference of 0 everywhere would mean the nets were not compiled at all."""
    output = tmp_path / "compiled.zarr"
    code, err = _run(capsys, package, input_file, output, "--compile")
    assert code == 0, err
    compiled, plain = xr.open_zarr(output), xr.open_zarr(made)
    largest = []
    for name in OUTPUTS:
        difference = np.abs(compiled[name].values - plain[name].values)
        largest.append(difference.max())
        assert difference.max() < 5e-4 * float(plain[name].std()), name
    assert max(largest) > 0
    assert compiled.attrs["precision"] == "float32"


def _short_file(input_file: Path, tmp_path: Path) -> Path:
    with xr.open_dataarray(input_file) as array:
        array.drop_sel(variable=["tcwv"]).to_netcdf(tmp_path / "short.nc")
    return tmp_path / "short.nc"


def _narrow_file(input_file: Path, tmp_path: Path) -> Path:
    with xr.open_dataarray(input_file) as array:
        array.isel(lon=slice(0, 10)).to_netcdf(tmp_path / "narrow.nc")
    return tmp_path / "narrow.nc"


def _incomplete_package(package: Path, tmp_path: Path) -> Path:
    shutil.copytree(package, tmp_path / "incomplete")
    (tmp_path / "incomplete" / "diffusion.mdlus").unlink()
    return tmp_path / "incomplete"


BAD = [
    ("short", (), "lacks the input variable(s) tcwv; the model package reads t2m, u10m, v10m, tcwv"),
    ("narrow", (), "does not contain the model's 0.25 degree input grid (lon -10.05 to -5.8"),
    ("missing", (), "does not exist: give taiwan, cmip6, or the folder, zip or address of a generic"),
    ("incomplete", (), "is not a generic CorrDiff package: it lacks diffusion.mdlus"),
    ("ok", ("--stats", "--threshold", "mrr=40"), "VAR=VALUE with VAR one of t2m, u10m, tp, e.g."),
    ("ok", ("--precision", "fp16"), "--precision fp16 needs a GPU: physicsnemo computes in"),
    ("ok", ("--model-package", "x"), "--model-package is for CorrDiff Taiwan (--model taiwan) and"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "extra", "message"), BAD)
def test_bad_generic_runs_are_one_line_and_write_nothing(
    case: str,
    extra: tuple[str, ...],
    message: str,
    package: Path,
    input_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inputs = {"short": _short_file, "narrow": _narrow_file}.get(case)
    source = inputs(input_file, tmp_path) if inputs else input_file
    model = {
        "missing": tmp_path / "nowhere",
        "incomplete": _incomplete_package(package, tmp_path) if case == "incomplete" else package,
    }.get(case, package)
    output = tmp_path / "out" / "store.zarr"
    code, err = _run(capsys, model, source, output, *extra)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert message in lines[0], lines[0]
    assert not output.parent.exists()


def test_the_plot_tool_draws_a_generic_store_panel_by_panel(
    made: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Each output a panel in its units (no wind panel: there is no v10m), on a lat/lon
    map of the package's grid; the inputs of the same name beside them; a GIF."""
    import cartopy.crs as ccrs

    from corrdiff_tools import plotting, render

    capsys.readouterr()
    out = tmp_path / "plots"
    argv = [str(made), "--plot-lowres", "--gif", "--format", "png", "--dpi", "30"]
    code = plot_main([*argv, "--jobs", "1", "--outdir", str(out)])
    assert code == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == sorted(
        [f"corrdiff-2024-07-24T{h}-{k}" for h in ("00", "06")
         for k in ("sample-00.png", "sample-01.png", "lowres.png")]
        + ["corrdiff-2024-07-24T00.gif", "corrdiff-2024-07-24T06.gif"]
    )  # fmt: skip

    dataset = store.open_store(made)
    other = render.other_model(dataset)
    assert other["panels"] == ("t2m", "u10m", "tp")
    assert other["lowres_panels"] == ("t2m", "u10m")  # no lr_tp: the package reads no tp
    assert other["frame"] == plotting.MapFrame("plate_carree", pytest.approx(-7.78125))
    scales = render.colour_scales(dataset)
    t2m_c = dataset["t2m"].values.astype("float64") - 273.15
    lr_c = dataset["lr_t2m"].values.astype("float64") - 273.15
    assert scales["t2m"].vmin == pytest.approx(min(t2m_c.min(), lr_c.min()))
    assert scales["t2m"].vmax == pytest.approx(max(t2m_c.max(), lr_c.max()))
    assert scales["u10m"].vmin == -scales["u10m"].vmax  # a component: centred on 0
    assert (scales["tp"].cmap, scales["u10m"].cmap) == ("cividis", "RdBu_r")
    context = render.RenderContext(made, scales, [], {}, "png", 30, **other)
    figure = render.build_figure(render.Task("sample", 1, None, 1, Path("x.png")), context)
    assert figure.get_suptitle() == "CorrDiff sample 1 of 2 · valid 2024-07-24 06:00 UTC"
    maps = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in maps] == ["2 m temperature", "10 m eastward wind", "tp"]
    assert all(isinstance(ax.projection, ccrs.PlateCarree) for ax in maps)
    bars = [ax.get_ylabel() for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert bars == ["Temperature at 2 m [°C]", "10 m eastward wind [m/s]", "tp"]
    shown = np.asarray(maps[2].collections[0].get_array()).reshape(24, 40)
    np.testing.assert_allclose(shown, dataset["tp"].values[1, 1], rtol=1e-6)
    low = render.build_figure(render.Task("lowres", 0, None, None, Path("x.png")), context)
    shown = np.asarray(low.axes[0].collections[0].get_array()).reshape(14, 18)
    np.testing.assert_allclose(shown, dataset["lr_t2m"].values[0] - 273.15, rtol=1e-6)


def test_stats_of_a_generic_run_are_its_ensembles(
    package: Path, input_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--stats``: mean and spread of each output in its units; exceedance of any
    output, t2m in deg C as for Taiwan, tp in the units the package trained it in."""
    output = tmp_path / "stats.zarr"
    code, err = _run(
        capsys, package, input_file, output, "--stats",
        "--threshold", "t2m=16.5", "--threshold", "tp=0.02",
    )  # fmt: skip
    assert code == 0, err
    dataset = xr.open_zarr(output)
    for name in OUTPUTS:
        members = dataset[name].values.astype("float64")
        np.testing.assert_allclose(
            dataset[f"{name}_ensemble_mean"].values, members.mean(axis=1), rtol=1e-6
        )
        np.testing.assert_allclose(
            dataset[f"{name}_ensemble_std"].values, members.std(axis=1), rtol=1e-5, atol=1e-6
        )
    t2m_c = dataset["t2m"].values.astype("float64") - 273.15
    expected = {"t2m": (t2m_c >= 16.5).mean(axis=1), "tp": (dataset["tp"].values >= 0.02).mean(1)}
    for name, probability in expected.items():
        np.testing.assert_array_equal(dataset[f"{name}_exceedance"].values, probability)
        assert 0.05 < probability.mean() < 0.95, (name, probability.mean())  # not all or none
    assert sorted(n for n in dataset.data_vars if n.endswith("_exceedance")) == [
        "t2m_exceedance", "tp_exceedance",
    ]  # fmt: skip  # Taiwan's default mrr and wind thresholds do not apply
    assert dataset["t2m_exceedance"].attrs["threshold_units"] == "degC"
    assert dataset["tp_exceedance"].attrs["long_name"] == "probability that tp >= 0.02"
    assert dataset["tp_exceedance"].attrs["threshold_units"] == ""
    assert "units" not in dataset["tp_ensemble_std"].attrs  # none known, none guessed
    assert dataset["t2m_ensemble_std"].attrs["units"] == "K"


def test_the_plot_tool_draws_a_generic_stores_statistics(
    made: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A column per output (mean, spread), a probability panel per threshold."""
    from corrdiff_tools import render

    capsys.readouterr()
    out = tmp_path / "plots"
    argv = [str(made), "--sample", "none", "--stats", "--threshold", "tp=0.02"]
    code = plot_main([*argv, "--format", "png", "--dpi", "30", "--jobs", "1", "--outdir", str(out)])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.png")) == [
        "corrdiff-2024-07-24T00-stats.png", "corrdiff-2024-07-24T06-stats.png",
    ]  # fmt: skip

    dataset = store.open_store(made)
    context = render.RenderContext(
        made, render.colour_scales(dataset), [], {"tp": 0.02}, "png", 30,
        **render.other_model(dataset),
    )  # fmt: skip
    figure = render.build_figure(render.Task("stats", 1, None, None, Path("x.png")), context)
    maps = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in maps] == [
        "Mean: 2 m temperature", "Spread: 2 m temperature", "Mean: 10 m eastward wind",
        "Spread: 10 m eastward wind", "Mean: tp", "Spread: tp", "P(tp ≥ 0.02)",
    ]  # fmt: skip
    bars = [ax.get_ylabel() for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert bars[:2] == ["Temperature at 2 m [°C]", "Standard deviation [°C]"]
    assert bars[4:] == ["tp", "Standard deviation", "Probability"]

    def drawn(ax: object) -> np.ndarray:
        return np.asarray(ax.collections[0].get_array()).reshape(24, 40)  # type: ignore[attr-defined]

    tp = dataset["tp"].values[1].astype("float64")
    np.testing.assert_allclose(drawn(maps[4]), tp.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(drawn(maps[5]), tp.std(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(drawn(maps[6]), (tp >= 0.02).mean(axis=0))
    t2m = dataset["t2m"].values[1].astype("float64") - 273.15
    np.testing.assert_allclose(drawn(maps[0]), t2m.mean(axis=0), rtol=1e-6)


def _truth_file(made: Path, path: Path, **units: str) -> Path:
    """A reference on the package's grid, as 1-D lat/lon axes: sample 0 moved a little
    (t2m kept within its physical range, which the truth file is checked against)."""
    dataset = xr.open_zarr(made)
    rng = np.random.default_rng(3)
    variables = {}
    for name in ("t2m", "tp"):
        values = dataset[name].values[:, 0].astype("float64")
        spread = 0.5 if name == "t2m" else 0.3 * values.std()
        values = values + rng.normal(0.0, spread, values.shape)
        if name == "t2m":  # the tiny package's samples are wilder than any weather
            values = np.clip(values, 250.0, 330.0)
        attrs = {"units": units[name]} if name in units else {}
        variables[name] = (("time", "lat", "lon"), values.astype("float32"), attrs)
    coords = {"time": dataset["time"].values, "lat": OUT_GRID[0], "lon": OUT_GRID[1]}
    xr.Dataset(variables, coords=coords).to_netcdf(path)
    return path


def test_a_generic_store_is_evaluated_against_a_truth_file(
    made: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Spectra, distributions and scores of the package's own variables, in its units;
    the scores are the ones computed from the store's arrays directly."""
    from corrdiff_tools import diagnostic_figures, diagnostics
    from corrdiff_tools.truth import interpolate_lowres

    figures: dict[str, object] = {}
    for kind in ("spectra_figure", "pdf_figure"):
        original = getattr(diagnostic_figures, kind)

        def spy(*args: object, _original: object = original, _kind: str = kind, **kw: object):
            figures[_kind] = figure = _original(*args, **kw)  # type: ignore[operator]
            return figure

        monkeypatch.setattr(diagnostic_figures, kind, spy)
    truth = _truth_file(made, tmp_path / "truth.nc", t2m="K")
    out = tmp_path / "evaluation"
    capsys.readouterr()
    argv = [str(made), "--sample", "none", "--spectra", "--pdf", "--truth", str(truth)]
    code = plot_main([*argv, "--format", "png", "--dpi", "30", "--jobs", "1", "--outdir", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "the store records no units for tp: the file's tp is taken to be in the model" in err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [f"corrdiff-2024-07-24T{h}-{k}.png" for h in ("00", "06") for k in ("spectra", "pdf")]
        + ["scores.csv", "scores.json", "scores.png", "rank-histograms.png"]
    )
    spectra = [ax.get_title() for ax in figures["spectra_figure"].axes if ax.get_title()]  # type: ignore[attr-defined]
    assert spectra == ["2 m temperature [°C]", "10 m eastward wind [m/s]", "tp"]
    pdf = [ax.get_xlabel() for ax in figures["pdf_figure"].axes if ax.get_xlabel()]  # type: ignore[attr-defined]
    assert pdf == ["2 m temperature [°C]", "10 m eastward wind [m/s]", "tp"]

    scores = json.loads((out / "scores.json").read_text())
    assert (
        scores["units"]
        == "t2m in K (differences), u10m in m/s, tp in its store units (none recorded)"
    )
    rows = {(row["valid_time"], row["variable"]): row for row in scores["scores"]}
    assert sorted(rows) == [(f"2024-07-24T{h}:00", v) for h in ("00", "06") for v in ("t2m", "tp")]
    dataset, reference = xr.open_zarr(made), xr.open_dataset(truth)
    for index, hour in enumerate(("00", "06")):
        for name in ("t2m", "tp"):
            offset = 273.15 if name == "t2m" else 0.0
            # The package reads t2m, not tp: only t2m has an input to interpolate.
            lowres = (
                interpolate_lowres(
                    dataset["lr_t2m"].values[index] - offset, IN_GRID[0], IN_GRID[1],
                    dataset["lat"].values.astype("float64"),
                    dataset["lon"].values.astype("float64"),
                )
                if name == "t2m" else None
            )  # fmt: skip
            expected = diagnostics.score(
                reference[name].values[index].astype("float64") - offset,
                dataset[name].values[index].astype("float64") - offset,
                dataset[f"{name}_regression"].values[index].astype("float64") - offset,
                lowres,
            )
            row = rows[(f"2024-07-24T{hour}:00", name)]
            assert row["crps"] == pytest.approx(expected.crps, rel=1e-9)
            assert row["mae_regression"] == pytest.approx(expected.mae_regression, rel=1e-9)
            assert row["crps"] > 0
            if lowres is None:
                assert row["mae_interpolated"] is None
            else:
                assert row["mae_interpolated"] == pytest.approx(expected.mae_interpolated)


def test_a_truth_file_in_other_units_than_the_store_is_refused(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = _truth_file(made, tmp_path / "truth.nc", t2m="degC")
    capsys.readouterr()
    out = tmp_path / "evaluation"
    code = plot_main([str(made), "--sample", "none", "--truth", str(truth), "--outdir", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert "t2m is in 'degC'; expected K, as the store holds it" in lines[0]
    assert not out.exists()


def _zipped(package: Path, path: Path, top: str | None = "my_package") -> Path:
    """The package's files in a zip, in a folder ``top`` (or at the zip's top)."""
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(package.iterdir()):
            archive.write(file, f"{top}/{file.name}" if top else file.name)
    return path


def test_a_zipped_package_is_extracted_once_and_is_the_same_package(
    made: Path,
    package: Path,
    input_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--model my_package.zip``: the samples of the folder it was made from, and the
    same package to ``--resume`` (by content); extracted on the first run only."""
    from corrdiff_tools import model

    extractions: list[Path] = []
    original = model._extract_bounded

    def counted(archive: object, zip_path: Path, *args: object) -> None:
        extractions.append(zip_path)
        original(archive, zip_path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(model, "_extract_bounded", counted)
    archive = _zipped(package, tmp_path / "my_package.zip")
    output = tmp_path / "zipped.zarr"
    code, err = _run(capsys, archive, input_file, output)
    assert code == 0, err
    assert extractions == [archive]
    zipped, folder = xr.open_zarr(output), xr.open_zarr(made)
    for name in OUTPUTS:
        np.testing.assert_array_equal(zipped[name].values, folder[name].values)
    identity = json.loads(zipped.attrs[store.SETTINGS_ATTR])["model_package"]
    assert identity["path"] == str(archive)
    made_with = json.loads(folder.attrs[store.SETTINGS_ATTR])["model_package"]
    assert identity["sha256"] == made_with["sha256"]

    # The store made from the folder resumes with the zip: the same package.
    copy = tmp_path / "copy.zarr"
    shutil.copytree(made, copy)
    store.StoreWriter(copy).unmark([(1, 1)])
    code, err = _run(capsys, archive, input_file, copy, "--resume")
    assert code == 0, err
    assert extractions == [archive]  # not again
    assert xr.open_zarr(copy)["completed"].values.all()


def test_processes_unzipping_one_package_at_once_extract_it_once(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchrun's ranks (and parallel runs) given one zip: the first extracts it, the
    others wait for it and use its folder (an extraction that takes a while here)."""
    import threading
    import time

    from corrdiff_tools import model
    from corrdiff_tools.models.packages import local_package

    extractions: list[str] = []
    original = model._extract_bounded

    def slow(*args: object) -> None:
        extractions.append(threading.current_thread().name)
        time.sleep(0.5)
        original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(model, "_extract_bounded", slow)
    archive = _zipped(package, tmp_path / "my_package.zip")
    folders: list[Path] = []
    threads = [
        threading.Thread(target=lambda: folders.append(local_package(str(archive), "--model")))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(extractions) == 1, extractions
    assert len(folders) == 3 and len(set(folders)) == 1
    assert (folders[0] / "metadata.json").is_file()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-metadata", "holds no metadata.json at its top or in one folder: it is not a generic"),
        ("incomplete", "is not a generic CorrDiff package: it lacks diffusion.mdlus"),
        ("damaged", "is not a valid zip file"),
        ("not-a-zip", "is a file but not a zip: give the folder, zip or address"),
    ],
)
def test_a_zip_that_is_no_package_is_refused_in_one_line(
    case: str,
    message: str,
    package: Path,
    input_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "files"
    shutil.copytree(package, folder)
    if case == "no-metadata":
        (folder / "metadata.json").unlink()
    if case == "incomplete":
        (folder / "diffusion.mdlus").unlink()
    archive = _zipped(folder, tmp_path / "package.zip", top=None)
    if case == "damaged":  # bytes of a checkpoint changed: its CRC no longer matches
        content = bytearray(archive.read_bytes())
        middle = len(content) // 2
        content[middle : middle + 64] = bytes(b ^ 0xFF for b in content[middle : middle + 64])
        archive.write_bytes(bytes(content))
    if case == "not-a-zip":
        archive = archive.rename(tmp_path / "package.tar")
    output = tmp_path / "out" / "store.zarr"
    code, err = _run(capsys, archive, input_file, output)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"run_corrdiff.py: error: --model {archive}"), lines[0]
    assert message in lines[0], lines[0]
    assert not output.parent.exists()


def test_a_finished_extraction_and_an_unusable_lock_stop_nothing(tmp_path: Path) -> None:
    """A package already extracted is used without touching its lock (a read-only or
    shared cache), and a lock that cannot be opened is gone round, not fatal."""
    from corrdiff_tools import model

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    # Its lock would be a-file/.x.lock, which cannot be created: never needed here.
    model.extract_once(tmp_path / "x.zip", blocked / "x", lambda _: True, _no_finish, "--model")
    with model.exclusive(blocked / ".x.lock"):
        pass


def _no_finish(staging: Path) -> None:
    raise AssertionError("nothing is to be extracted")


def test_a_truth_file_on_the_stores_grid_in_float64_is_read_there(tmp_path: Path) -> None:
    """A store keeps its grid in float32, whose edges can round a hair outside the same
    grid written with float64 axes: within the tolerance, it is covered."""
    from corrdiff_tools.truth import load_truth

    axes = (15.0 + 0.1 * np.arange(52), 110.0 + 0.1 * np.arange(30))  # lat 15..20.1
    assert np.float32(axes[0][-1]) > axes[0][-1]  # the edge rounds outward in float32
    lat, lon = (g.astype("float32").astype("float64") for g in np.meshgrid(*axes, indexing="ij"))
    values = np.add.outer(axes[0], axes[1]).astype("float64")
    when = np.datetime64("2024-07-24T00:00", "ns")
    coords = {"time": [when], "lat": axes[0], "lon": axes[1]}
    xr.Dataset({"tp": (("time", "lat", "lon"), values[None])}, coords).to_netcdf(
        tmp_path / "truth.nc"
    )
    truth = load_truth(tmp_path / "truth.nc", lat, lon, [when], {"tp": ()})
    field = truth.fields[when]["tp"]
    assert np.isfinite(field).all()
    np.testing.assert_allclose(field, values, atol=1e-4)


class _Files:
    """A plain HTTP server on 127.0.0.1 serving a folder, counting the GETs of each file."""

    def __init__(self, root: Path) -> None:
        import functools
        import threading
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        self.gets: list[str] = []
        files = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                files.gets.append(self.path)
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_a_remote_package_is_fetched_once_then_read_offline(
    made: Path,
    package: Path,
    input_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--model http://...``: earth2studio's ``Package`` fetches the files by name, once;
    the second run reads them from the cache with the server gone."""
    root = tmp_path / "served"
    shutil.copytree(package, root / "my_package")
    _zipped(package, root / "my_package.zip")
    server = _Files(root)
    try:
        output = tmp_path / "remote.zarr"
        code, err = _run(capsys, f"{server.url}/my_package", input_file, output)
        assert code == 0, err
        fetched = sorted(path.rsplit("/", 1)[1] for path in server.gets)
        assert fetched == sorted(p.name for p in package.iterdir()), fetched  # each once
        remote, folder = xr.open_zarr(output), xr.open_zarr(made)
        for name in OUTPUTS:
            np.testing.assert_array_equal(remote[name].values, folder[name].values)
        code, err = _run(capsys, f"{server.url}/my_package.zip", input_file, tmp_path / "z.zarr")
        assert code == 0, err
        assert server.gets[-1] == "/my_package.zip"
        damaged = bytearray((root / "my_package.zip").read_bytes())
        middle = len(damaged) // 2
        damaged[middle : middle + 64] = bytes(b ^ 0xFF for b in damaged[middle : middle + 64])
        (root / "damaged.zip").write_bytes(bytes(damaged))
        for attempt in (1, 2):  # removed from the cache: the next run downloads it again
            code, err = _run(capsys, f"{server.url}/damaged.zip", input_file, tmp_path / "d.zarr")
            lines = err.strip().splitlines()
            assert code == 1 and len(lines) == 1, err
            assert f"downloaded from {server.url}/damaged.zip is damaged" in lines[0]
            assert "run again to download it anew" in lines[0]
            assert server.gets.count("/damaged.zip") == attempt
        code, err = _run(capsys, f"{server.url}/nothing_here", input_file, tmp_path / "x.zarr")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert "nothing_here is not a complete CorrDiff package: it has no metadata.json" in err
        gone = f"{server.url}/other_package"
    finally:
        server.stop()
    again = tmp_path / "again.zarr"
    code, err = _run(capsys, f"{server.url}/my_package", input_file, again)
    assert code == 0, err
    np.testing.assert_array_equal(xr.open_zarr(again)["t2m"].values, folder["t2m"].values)
    code, err = _run(capsys, gone, input_file, tmp_path / "y.zarr")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert f"could not download metadata.json of the model package {gone} (" in lines[0]
    assert not (tmp_path / "y.zarr").exists()


def test_taiwan_stores_and_settings_carry_no_model_entry() -> None:
    """Taiwan's stores stay as they were: no model attribute, no model setting."""
    grid = np.zeros(store.HR_SHAPE, dtype="float32")
    layout = store.StoreLayout(times=TIMES[:1], samples=1, lat=grid, lon=grid)
    dataset, _ = store._empty_dataset(layout, {}, {})
    assert MODEL_ATTR not in dataset.attrs
    assert [n for n in dataset.data_vars if "_" not in n and n != "completed"] == list(
        store.OUTPUT_VARIABLES
    )
    assert store.StoreLayout(times=TIMES, samples=1, lat=grid, lon=grid).model is store.TAIWAN


@pytest.mark.slow
def test_two_torchrun_ranks_write_what_one_process_writes(
    made: Path, package: Path, input_file: Path, tmp_path: Path
) -> None:
    """Ranks share the samples out, rank 0 reads the file: the same store as one process.
    The package is given zipped: it is extracted once for the job, not once per rank.

    Compared to float32 rounding, not bitwise: each rank draws its one sample in a batch
    of one, ``made`` both in one batch, and batched convolutions round differently (a
    noise mix-up would differ by O(1)).
    """
    output = tmp_path / "ranks.zarr"
    archive = _zipped(package, tmp_path / "my_package.zip")
    times = [t.strftime("%Y-%m-%dT%H") for t in TIMES]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        str(ROOT / "run_corrdiff.py"), *times, "--model", str(archive), "--source",
        str(input_file), "--samples", "2", "--seed", str(SEED), "--device", "cpu",
        "--output", str(output),
    ]  # fmt: skip
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CORRDIFF_TOOLS_CACHE": str(cache)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "rank 0: 2 sample(s)" in result.stderr and "rank 1: 2 sample(s)" in result.stderr
    assert result.stderr.count(f"extracting {archive}") == 1, result.stderr
    extracted = [p.name for p in (cache / "packages").iterdir() if not p.name.startswith(".")]
    assert len(extracted) == 1 and extracted[0].startswith("generic-"), extracted
    ranks, single = xr.open_zarr(output), xr.open_zarr(made)
    assert ranks["completed"].values.all()
    for name in (*OUTPUTS, *(f"{v}_regression" for v in OUTPUTS), "lr_tcwv", "lat", "lon"):
        np.testing.assert_allclose(ranks[name].values, single[name].values, rtol=0, atol=1e-2)


class _Recorder:
    """A Sampler whose conditioning records the valid time it is given (a model with time
    features, as CorrDiffCMIP6 has, reads it), and a Writer that keeps what it is given."""

    def __init__(self) -> None:
        import torch

        from corrdiff_tools.models.declaration import Declaration
        from corrdiff_tools.sampling import PRESETS

        self.declaration = Declaration(
            "package", ("a", "b"), ("c",), np.arange(2.0), np.arange(3.0), (4, 5)
        )
        self.settings = PRESETS["blog"]
        self.valid_times: list[datetime | None] = []
        self.inputs: list[np.ndarray] = []
        self.samples: dict[tuple[int, ...], dict[str, np.ndarray]] = {}
        self._torch = torch

    def condition(self, inputs: np.ndarray, valid_time: datetime | None = None) -> object:
        self.valid_times.append(valid_time)
        self.inputs.append(inputs)
        return self._torch.zeros(1, 2, 4, 5)

    def regression_mean(self, condition: object) -> object:
        return self._torch.zeros(1, 1, 4, 5)

    def draw(self, condition: object, mean: object, seeds: list[int]) -> object:
        return self._torch.full((len(seeds), 1, 4, 5), 280.0)

    def denormalise(self, x: object) -> np.ndarray:
        return np.asarray(x.numpy(), dtype="float32")  # type: ignore[attr-defined]

    def write_inputs(self, index: tuple[int, ...], fields: object) -> None:
        pass

    def write_regression(self, index: tuple[int, ...], fields: object) -> None:
        pass

    def write_samples(
        self, index: tuple[int, ...], samples: object, fields: dict[str, np.ndarray]
    ) -> None:
        self.samples[index] = dict(fields)

    def finish(self) -> None:
        pass


def test_the_loop_gives_the_model_its_inputs_by_name_and_the_valid_time() -> None:
    """Valid time = initialisation + lead: what time features (hour of day, solar
    zenith) must be computed for; the inputs in the declaration's order, the outputs
    stored under the declaration's names."""
    recorder = _Recorder()
    start = datetime(2024, 7, 24, 18)
    jobs = [downscale.Job((0, 0), start, 0, (0,)), downscale.Job((0, 1), start, 9, (0, 1))]
    fields = {"b": np.full((2, 3), 2.0), "a": np.full((2, 3), 1.0), "x": np.zeros((2, 3))}
    downscale.downscale(
        jobs, lambda job: fields, recorder, lambda: recorder, seed=0, batch_size=2,
        overlap_fetch=False,
    )  # fmt: skip
    assert recorder.valid_times == [start, datetime(2024, 7, 25, 3)]
    assert [float(x[0, 0, 0]) for x in recorder.inputs] == [1.0, 1.0]
    assert [float(x[1, 0, 0]) for x in recorder.inputs] == [2.0, 2.0]
    assert set(recorder.samples[(0, 1)]) == {"c"}
    assert recorder.samples[(0, 1)]["c"].shape == (2, 4, 5)


def test_the_sampler_metadata_asks_for_is_read_as_earth2studio_reads_it(
    package: Path, tmp_path: Path
) -> None:
    """Before loading, the run tool reads metadata.json itself (with earth2studio's
    defaults where it is silent); after loading, it checks that earth2studio read the same."""
    from corrdiff_tools.models import generic
    from corrdiff_tools.models.declaration import metadata_settings

    for kept in ({}, {"sampler_type": "deterministic"}, {"solver": "heun", "sigma_min": 0.01}):
        folder = tmp_path / f"package-{len(kept)}-{'-'.join(kept)}"
        shutil.copytree(package, folder)
        metadata = json.loads((folder / "metadata.json").read_text())
        for key in ("number_of_steps", "sigma_max", "sampler_type", "solver", "sigma_min"):
            metadata.pop(key, None)
        metadata.update(kept)
        (folder / "metadata.json").write_text(json.dumps(metadata))
        loaded = generic.load(folder, device="cpu")
        assert metadata_settings(metadata) == generic.package_settings(loaded), kept
    assert metadata_settings({}).steps == 18 and metadata_settings({}).sampler == "stochastic"


def test_a_loaded_model_unlike_its_declaration_is_refused() -> None:
    from corrdiff_tools.errors import RunError
    from corrdiff_tools.models.declaration import Declaration, check_loaded

    axis = np.arange(3.0)
    declared = Declaration("package", ("a", "b"), ("c",), axis, axis, (4, 5))
    for other, named in (
        (Declaration("package", ("b", "a"), ("c",), axis, axis, (4, 5)), "inputs"),
        (Declaration("package", ("a", "b"), ("c",), axis + 0.5, axis, (4, 5)), "input_lat"),
        (Declaration("package", ("a", "b"), ("c",), axis, axis, (5, 4)), "output_shape"),
    ):
        with pytest.raises(RunError, match=f"differs from what its files declare \\({named}"):
            check_loaded(declared, other, "--model x")
    check_loaded(declared, Declaration("package", ("a", "b"), ("c",), axis, axis, (4, 5)), "x")


@pytest.mark.parametrize(("source", "lexicon"), [("gfs", "GFSLexicon"), ("era5", "ARCO_ERA5")])
def test_a_named_source_without_the_package_inputs_is_refused_naming_them(
    source: str,
    lexicon: str,
    package: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "package"
    shutil.copytree(package, folder)
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["input_variables"] = ["t2m", "soil_wetness", "u10m", "sea_ice_age"]
    (folder / "metadata.json").write_text(json.dumps(metadata))
    capsys.readouterr()
    output = tmp_path / "out" / "store.zarr"
    code = run_main(["2024-07-24T12", "--model", str(folder), "--source", source,
                     "--output", str(output)])  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert (
        f"--source {source} has no soil_wetness, sea_ice_age (earth2studio's {lexicon}"
        in (lines[0])
    )
    assert not output.parent.exists()


def test_panels_follow_the_model_outputs_with_one_wind_panel_for_a_pair() -> None:
    from corrdiff_tools.quantities import panels_of

    assert panels_of(store.OUTPUT_VARIABLES) == ("mrr", "t2m", "wind")  # Taiwan's, as ever
    assert panels_of(("t2m", "v10m", "tp", "u10m")) == ("t2m", "wind", "tp")
    assert panels_of(("u10m", "tp")) == ("u10m", "tp")  # one component: drawn as it is


# ----------------------------------------------------------------- found by trying to break it


def _edited(package: Path, tmp_path: Path, **metadata: object) -> Path:
    folder = tmp_path / "edited"
    shutil.copytree(package, folder)
    content = json.loads((folder / "metadata.json").read_text())
    content.update(metadata)
    (folder / "metadata.json").write_text(json.dumps(content))
    return folder


BAD_METADATA = [
    ({"output_variables": ["t2m", "u10m", "t2m"]}, "the output variable(s) t2m are listed twice"),
    ({"output_variables": ["t2m", "lat", "tp"]}, "output variable 'lat' is a name the store keeps"),
    ({"output_variables": ["t2m_regression"]}, "'t2m_regression' is a name the store keeps"),
    ({"input_variables": ["t2m", "lr_u10m", "v10m", "tcwv"]}, "'lr_u10m' is a name the store"),
    ({"input_variables": ["t2m", "u10m", "v10m", "my var/x"]}, "'my var/x' is not a name a st"),
    ({"output_variables": "t2m"}, "output_variables is 't2m', not a list of names"),
    ({"inference_mode": "Regression"}, "inference_mode 'Regression' is none of both, regressi"),
]  # fmt: skip


@pytest.mark.parametrize(("metadata", "message"), BAD_METADATA)
def test_variable_names_a_store_cannot_hold_are_refused_before_anything_runs(
    metadata: dict[str, object],
    message: str,
    package: Path,
    input_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A name given twice lost a channel, store names collided with the store's own
    arrays and a '/' made a group: each is one line now, and nothing is written."""
    output = tmp_path / "out" / "store.zarr"
    code, err = _run(capsys, _edited(package, tmp_path, **metadata), input_file, output)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "metadata.json" in lines[0] and message in lines[0], lines[0]
    assert not output.parent.exists()


def _request(argv: list[str]) -> object:
    from corrdiff_tools.cli import build_run_parser
    from corrdiff_tools.requests import validate_run

    return validate_run(build_run_parser().parse_args(argv), argv)


def test_sampler_options_change_the_package_own_settings(
    package: Path, input_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The package asks for 3 stochastic steps from sigma 80: an option changes that
    option, not the sampler (it used to fall back to a preset of Taiwan's)."""
    monkeypatch.chdir(tmp_path)
    base = ["2024-07-24T00", "--model", str(package), "--source", str(input_file)]
    own = _request(base).sampler  # type: ignore[attr-defined]
    assert (own.sampler, own.steps, own.sigma_max) == ("stochastic", 3, 80.0)
    steps = _request([*base, "--steps", "5"]).sampler  # type: ignore[attr-defined]
    assert (steps.sampler, steps.steps, steps.sigma_max) == ("stochastic", 5, 80.0)
    same = _request([*base, "--sampler", "stochastic"]).sampler  # type: ignore[attr-defined]
    assert same == own
    other = _request([*base, "--sampler", "deterministic"]).sampler  # type: ignore[attr-defined]
    assert other.sampler == "deterministic" and other.steps == 8  # the blog preset's
    paper = _request([*base, "--preset", "paper"]).sampler  # type: ignore[attr-defined]
    assert (paper.steps, paper.sigma_max) == (18, 800.0)


def test_a_relative_package_path_is_read_from_anywhere(
    package: Path, input_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from corrdiff_tools.models import generic

    monkeypatch.chdir(package.parent)
    request = _request(["2024-07-24T00", "--model", package.name, "--source", str(input_file),
                        "--output", str(tmp_path / "o.zarr")])  # fmt: skip
    assert request.model_package == str(package.resolve())  # type: ignore[attr-defined]
    assert generic.load(package.name, device="cpu").output_variables == list(OUTPUTS)


def test_a_package_with_latlon_res_loads_on_the_grid_validation_read(
    package: Path, tmp_path: Path
) -> None:
    """earth2studio builds a latlon_res grid in float32 and refuses it for 0.1 degrees."""
    from corrdiff_tools.models import generic
    from corrdiff_tools.models.declaration import check_loaded, from_package

    folder = _edited(package, tmp_path, latlon_res=0.1)
    (folder / "input_latlon_grid.nc").unlink()
    declared = from_package(folder, "x")
    assert declared.input_lat[0] == pytest.approx(40.9) and declared.input_lat.size == 18
    loaded = generic.GenericSampler(generic.load(folder, device="cpu"))
    check_loaded(declared, loaded.declaration, "x")


def test_a_store_whose_model_attribute_names_taiwan_is_damaged(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import zarr

    copy = tmp_path / "edited.zarr"
    shutil.copytree(made, copy)
    group = zarr.open_group(str(copy), mode="r+")
    group.attrs[MODEL_ATTR] = json.dumps({"name": "taiwan", "inputs": [], "outputs": ["t2m"]})
    zarr.consolidate_metadata(str(copy))
    capsys.readouterr()
    assert plot_main([str(copy), "--outdir", str(tmp_path / "plots")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "is a damaged store: its corrdiff_tools_model attribute names no" in (err[0])
    )


class _Global:
    """A source on GFS's own global grid (lat 90..-90, lon 0..359.75): u10m = longitude,
    v10m = latitude, so where every value came from can be read off."""

    def __call__(self, time: object, variable: object) -> xr.DataArray:
        lat, lon = np.arange(90.0, -90.25, -0.25), np.arange(0.0, 360.0, 0.25)
        names = list(np.atleast_1d(variable))
        fields = {"u10m": lon[None, :] + 0 * lat[:, None], "v10m": lat[:, None] + 0 * lon}
        data = np.stack([fields.get(n, np.full((lat.size, lon.size), 290.0)) for n in names])
        return xr.DataArray(
            data[None], dims=("time", "variable", "lat", "lon"),
            coords={"time": np.atleast_1d(time), "variable": names, "lat": lat, "lon": lon},
        )  # fmt: skip


def test_a_named_source_is_read_at_the_package_points_modulo_360_or_refused() -> None:
    """earth2studio's map_coords takes the nearest label without a tolerance or a wrap:
    a package west of Greenwich got GFS's column at 0 for every point."""
    from corrdiff_tools.errors import RunError
    from corrdiff_tools.models.declaration import Declaration

    spec = sources.SourceSpec("gfs")
    lat, lon = np.arange(40.0, 42.0, 0.25), np.arange(-10.0, -7.0, 0.25)
    model = Declaration("package", ("u10m", "v10m"), ("t2m",), lat, lon, (4, 4))
    fields = sources.fetch_fields(_Global(), spec, TIMES[0], 0, ["u10m", "v10m"], model)
    np.testing.assert_array_equal(fields["u10m"], np.broadcast_to(lon % 360.0, (8, 12)))
    np.testing.assert_array_equal(fields["v10m"], np.broadcast_to(lat[:, None], (8, 12)))
    off = Declaration("package", ("u10m",), ("t2m",), lat + 0.1, lon, (4, 4))
    with pytest.raises(RunError, match="gfs has no lat 40.1 at .* \\(nearest 40\\): the model"):
        sources.fetch_fields(_Global(), spec, TIMES[0], 0, ["u10m"], off)


def test_a_named_source_off_the_package_grid_is_refused_before_anything_runs(
    package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    code = run_main(["2024-07-24T12", "--model", str(package), "--source", "gfs",
                     "--output", str(tmp_path / "o" / "s.zarr")])  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert "--source gfs: its 0.25 degree grid has no lat 40.1 (nearest 40)" in lines[0]
    assert not (tmp_path / "o").exists()


class _Plausible(_Global):
    """:class:`_Global` in plausible units (the run checks them): u10m = longitude / 10,
    v10m = latitude / 10, in m/s."""

    def __call__(self, time: object, variable: object) -> xr.DataArray:
        return super().__call__(time, variable) / 10.0


@pytest.mark.slow
def test_prefetch_of_a_generic_package_writes_its_inputs_on_its_grid_for_an_offline_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--prefetch FILE with --model PATH --source gfs (earth2studio's GFS seam fed by a
    stand-in on GFS's global grid): the package's variables at its input points (west of
    Greenwich, read modulo 360), each time once; then --source FILE runs offline and the
    store's inputs are those values."""
    lat, lon = np.arange(40.0, 42.0, 0.25), np.arange(-10.0, -7.0, 0.25)
    package = synthetic.build_generic_package(
        tmp_path / "pkg", ("u10m", "v10m"), ("t2m",), synthetic.regular_grid(40.5, -9.5, (8, 8), 0.1),
        (lat, lon), metadata={"number_of_steps": 3, "sigma_max": 80.0},
    )  # fmt: skip
    fetched = tmp_path / "pre.nc"
    capsys.readouterr()
    argv = ["2024-07-24T00/2024-07-24T06", "--model", str(package), "--device", "cpu"]
    code = run_main(
        [*argv, "--source", "gfs", "--prefetch", str(fetched)],
        build_source=lambda spec, times: _Plausible(),
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"offline, pass --model {package}" in err
    with xr.open_dataarray(fetched) as array:
        assert array.dims == ("time", "variable", "lat", "lon")
        assert list(array["variable"].values) == ["u10m", "v10m"]
        assert array.sizes["time"] == 2
        np.testing.assert_array_equal(array["lat"].values, lat)
        np.testing.assert_array_equal(array["lon"].values, lon)
        u10m, v10m = array.sel(variable="u10m").values, array.sel(variable="v10m").values
    np.testing.assert_allclose(u10m, np.broadcast_to((lon % 360.0) / 10.0, (2, 8, 12)))
    np.testing.assert_allclose(v10m, np.broadcast_to(lat[:, None] / 10.0, (2, 8, 12)))
    output = tmp_path / "offline.zarr"
    code = run_main([*argv, "--source", str(fetched), "--samples", "1", "--output", str(output)])
    assert code == 0, capsys.readouterr().err
    stored = xr.open_zarr(output)
    np.testing.assert_array_equal(stored["lr_u10m"].values, u10m)
    assert stored["completed"].values.all()


def test_a_file_longitude_a_hair_west_of_360_is_the_package_zero(tmp_path: Path) -> None:
    from corrdiff_tools.models.declaration import Declaration

    lat, lon = np.arange(50.0, 51.0, 0.25), np.arange(-1.0, 1.25, 0.25)  # crosses 0
    model = Declaration("package", ("where",), ("t2m",), lat, lon, (4, 4))
    have = (np.arange(0.0, 360.0, 0.25) - 4e-4) % 360.0  # 0 written as 359.9996
    values = np.broadcast_to(have, (lat.size, have.size))[None, None].astype("float64")
    array = sources.input_dataarray(values, TIMES[:1], ["where"], lat, have)
    path = tmp_path / "hair.nc"
    array.to_netcdf(path)
    assert sources.check_file_source(path, TIMES[:1], model) == ["where"]
    with sources.open_file_source(path) as opened:
        box = sources._model_box(opened, model)
        picked = np.asarray(box.sel(variable="where").values[0, 0])
    np.testing.assert_allclose(picked, (lon - 4e-4) % 360.0, atol=1e-3)


# ----------------------------------------------------------------- found by reading it again


def test_metadata_sampler_values_are_refused_as_the_options_are(
    package: Path, input_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A solver physicsnemo lacks failed at the first sample, after the store was made."""
    for metadata, message in (
        ({"sampler_type": "deterministic", "solver": "rk4"}, "solver 'rk4', need one of euler"),
        ({"number_of_steps": 1}, "its metadata.json: --steps 1"),
        ({"latlon_res": -0.25}, "latlon_res -0.25 is not a positive step"),
    ):
        folder = _edited(package, tmp_path / str(len(message)), **metadata)
        if "latlon_res" in metadata:
            (folder / "input_latlon_grid.nc").unlink()
        output = tmp_path / "out" / "store.zarr"
        code, err = _run(capsys, folder, input_file, output)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], err
        assert not output.parent.exists()
    # A zipped package is named as typed, not as the cache folder it was extracted into.
    zipped = _zipped(_edited(package, tmp_path / "steps", number_of_steps=1), tmp_path / "z.zip")
    code, err = _run(capsys, zipped, input_file, tmp_path / "out" / "store.zarr")
    assert code == 2 and f"--model {zipped}: its metadata.json: --steps 1" in err, err


def test_a_package_output_named_like_a_taiwan_input_gets_its_own_scale(tmp_path: Path) -> None:
    """refc is Taiwan's input, drawn on mrr's scale; a package's refc output has its own."""
    from corrdiff_tools import plotting
    from corrdiff_tools.plotting import ColourScale, Fields

    grid = np.meshgrid(np.linspace(40, 41, 4), np.linspace(-9, -8, 5), indexing="ij")
    fields = Fields({"refc": np.zeros((4, 5))}, None, None, *grid)
    scales = {"refc": ColourScale(0.0, 60.0, "turbo")}
    frame = plotting.frame_for(grid[1], taiwan=False)
    figure = plotting.map_figure(fields, ("refc",), scales, [], "t", frame=frame)
    assert figure.axes[0].collections[0].get_clim() == (0.0, 60.0)


def test_coastlines_of_a_grid_at_the_antimeridian() -> None:
    from corrdiff_tools.coastlines import _from_land_mask

    lines = _from_land_mask((-181.0, -175.0, -20.0, -15.0))  # Fiji, 1 degree past -180
    assert lines and all(np.isfinite(line).all() for line in lines)
    assert min(float(line[:, 0].min()) for line in lines) >= -181.0


def test_plot_lowres_is_refused_when_every_matching_input_is_left_out(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import zarr

    copy = tmp_path / "hot.zarr"
    shutil.copytree(made, copy)
    group = zarr.open_group(str(copy), mode="r+")
    for name in ("lr_t2m", "lr_u10m"):  # unphysical: left out of the maps
        group[name][...] = np.full(group[name].shape, 1e6, dtype="float32")
    capsys.readouterr()
    code = plot_main([str(copy), "--plot-lowres", "--outdir", str(tmp_path / "plots")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "--plot-lowres:" in err[-1] and "no usable input" in err[-1], err
    assert not (tmp_path / "plots").exists()
