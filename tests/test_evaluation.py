"""run_corrdiff.py --stats / regression mean in the store, and plot_corrdiff.py --spectra,
--pdf and --truth, end to end on a store made by the run tool from the tiny package."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import properscoring
import pytest
import xarray as xr
from conftest import drawn_files, offline_args
from PIL import Image

from corrdiff_tools import diagnostic_figures as figures
from corrdiff_tools import store
from corrdiff_tools.cli import plot_main, run_main
from corrdiff_tools.drawn import MANIFEST

STORE_TIMES = ["2024-07-24T00", "2024-07-24T06"]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, package_dir: Path, input_file: Path) -> Path:
    """A 2-time, 3-sample store with --stats (t2m threshold 25 deg C)."""
    path = tmp_path_factory.mktemp("evaluation") / "run.zarr"
    code = run_main(
        [
            *offline_args(package_dir, input_file),
            "2024-07-24T00/2024-07-24T06",
            "--samples", "3", "--steps", "2", "--stats", "--threshold", "t2m=25",
            "--threshold", "mrr=5", "--output", str(path), "-q",
        ]
    )  # fmt: skip
    assert code == 0
    return path


def _plot(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = plot_main([*args, "--dpi", "30", "--format", "png", "--jobs", "1"])
    return code, capsys.readouterr().err


# ------------------------------------------------------------------ the run tool's part


def test_stats_in_the_store_are_the_ensembles(made: Path) -> None:
    ds = store.open_store(made)
    t2m = ds["t2m"].values
    np.testing.assert_allclose(ds["t2m_ensemble_mean"].values, t2m.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(ds["t2m_ensemble_std"].values, t2m.std(axis=1), rtol=1e-5, atol=1e-6)
    assert float(ds["t2m_ensemble_std"].max()) > 0.01  # the members differ
    # Thresholds are applied in float64 to the stored float32 values (a member within float32
    # rounding of 25 degC would otherwise count one way here and the other way in the store).
    wind = np.hypot(ds["u10m"].values.astype("float64"), ds["v10m"].values.astype("float64"))
    np.testing.assert_array_equal(
        ds["wind_exceedance"].values, (wind >= 17.2).mean(axis=1).astype("float32")
    )
    celsius = t2m.astype("float64") - 273.15
    np.testing.assert_array_equal(
        ds["t2m_exceedance"].values, (celsius >= 25).mean(axis=1).astype("float32")
    )
    assert set(np.unique(ds["mrr_exceedance"].values)) <= {0.0, 1 / 3, 2 / 3, 1.0} | {
        np.float32(1 / 3),
        np.float32(2 / 3),
    }
    attrs = ds["t2m_exceedance"].attrs
    assert attrs["threshold"] == 25.0 and attrs["threshold_units"] == "degC"
    assert attrs["long_name"] == "probability that t2m >= 25 degC"
    assert ds["mrr_exceedance"].attrs["threshold"] == 5.0
    assert ds["t2m_ensemble_std"].attrs["units"] == "K"
    assert json.loads(ds.attrs[store.SETTINGS_ATTR])["stats"] == {
        "mrr": 5.0,
        "wind": 17.2,
        "t2m": 25.0,
    }


def test_the_regression_mean_is_stored_in_physical_units(made: Path) -> None:
    ds = store.open_store(made)
    regression = ds["t2m_regression"]
    assert regression.dims == ("time", "y", "x")
    assert regression.attrs["units"] == "K"
    assert "regression mean" in regression.attrs["long_name"]
    values = regression.values
    assert np.isfinite(values).all() and 250 < values.mean() < 350
    # Each sample is the regression mean plus a diffusion residual: not equal to it.
    assert not np.allclose(ds["t2m"].values[:, 0], values)
    assert not np.array_equal(values[0], values[1])  # a mean per time


def test_threshold_without_stats_is_refused(
    package_dir: Path, input_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_main(
        [
            *offline_args(package_dir, input_file),
            "2024-07-24T12", "--threshold", "mrr=40", "--output", str(tmp_path / "x.zarr"),
        ]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--threshold mrr=40 only applies with --stats" in err[0]
    assert not (tmp_path / "x.zarr").exists()


def test_statistics_wait_for_a_complete_ensemble(tmp_path: Path) -> None:
    from corrdiff_tools.synthetic import curvilinear_grid

    lat, lon = curvilinear_grid((448, 448))
    layout = store.StoreLayout(
        times=[datetime(2024, 7, 24, 0), datetime(2024, 7, 24, 6)],
        samples=2,
        lat=lat,
        lon=lon,
        statistics={"mrr": 35.0, "wind": 17.2},
    )
    path = tmp_path / "s.zarr"
    store.create_store(path, layout, {}, {})
    writer = store.StoreWriter(path)
    field = np.full((1, 448, 448), 290.0, dtype="float32")
    fields = {name: field for name in store.OUTPUT_VARIABLES}
    writer.write_samples((0,), [0], fields)
    writer.write_samples((0,), [1], {k: v + 2 for k, v in fields.items()})
    writer.write_samples((1,), [0], fields)  # sample 1 of time 1 missing
    assert store.write_statistics(path, layout.statistics or {}) == (1, 1)
    ds = store.open_store(path)
    assert float(ds["t2m_ensemble_mean"][0, 0, 0]) == 291.0
    assert float(ds["t2m_ensemble_std"][0, 0, 0]) == 1.0
    assert float(ds["mrr_exceedance"][0, 0, 0]) == 1.0  # 290 and 292 dBZ >= 35
    assert float(ds["wind_exceedance"][0, 0, 0]) == 1.0
    assert np.isnan(ds["t2m_ensemble_mean"].values[1]).all()


# ------------------------------------------------------------------ spectra and pdf


@pytest.mark.slow  # figures per time, quickly: test_generic_run's evaluation
def test_spectra_and_pdf_figures_per_time(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outdir = tmp_path / "out"
    code, err = _plot(
        capsys, str(made), "--sample", "none", "--spectra", "--pdf", "--outdir", str(outdir)
    )
    assert code == 0, err
    names = sorted(p.name for p in drawn_files(outdir))
    stems = [f"corrdiff-{t}" for t in STORE_TIMES]
    assert names == sorted([f"{s}-spectra.png" for s in stems] + [f"{s}-pdf.png" for s in stems])
    with Image.open(outdir / names[0]) as image:
        assert image.size[0] > 200 and image.size[1] > 150
        assert len(set(image.convert("L").getdata())) > 20  # not a blank canvas
    assert len(json.loads((outdir / MANIFEST).read_text())["files"]) == len(names)


def test_evaluation_titles_write_the_valid_time_as_the_maps_do(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from corrdiff_tools import evaluate

    titles: list[str] = []
    monkeypatch.setattr(evaluate, "_save", lambda fig, path, dpi: titles.append(fig.get_suptitle()))
    args = (str(made), "--sample", "none", "--spectra", "--pdf", "--outdir", str(tmp_path / "o"))
    code, err = _plot(capsys, *args)
    assert code == 0, err
    first = np.datetime64(xr.open_zarr(made)["time"].values[0], "s").astype(datetime)
    # The maps' form, e.g. "CorrDiff sample 2 of 3 · valid 2024-07-24 06:00 UTC".
    valid = f"valid {first:%Y-%m-%d %H:%M} UTC"
    assert titles[:2] == [
        f"Power spectra · {valid} · 3 samples",
        f"Distributions over the grid · {valid} · 3 samples",
    ]


def test_spectra_figure_draws_every_curve_on_log_axes() -> None:
    wavelength = 896.0 / np.arange(1, 225)
    rng = np.random.default_rng(0)
    curves = {
        name: figures.Curves(
            samples=rng.random((3, 224)),
            ensemble_mean=rng.random(224),
            regression=rng.random(224),
            lowres=rng.random(224),
            truth=rng.random(224),
        )
        for name in figures.DIAGNOSTIC_VARIABLES
    }
    fig = figures.spectra_figure(wavelength, curves, "title")
    axes = fig.axes
    assert len(axes) == 4
    for ax in axes:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert len(ax.lines) == 3 + 4
        left, right = ax.get_xlim()
        assert left > right  # large scales on the left
        assert ax.get_xlabel() == "Wavelength [km]"
    # The periodogram's unit: the field's, squared.
    assert [ax.get_ylabel() for ax in axes] == [
        "Power [dBZ²]", "Power [°C²]", "Power [(m/s)²]", "Power [(m/s)²]"
    ]  # fmt: skip
    labels = axes[0].get_legend_handles_labels()[1]
    assert labels == ["samples", "ensemble mean", "regression mean", "interpolated input", "truth"]


def test_pdf_figure_leaves_out_missing_baselines() -> None:
    bins = {name: np.linspace(0, 1, 11) for name in figures.PDF_VARIABLES}
    curves = {
        name: figures.Curves(samples=np.ones((1, 10)), ensemble_mean=np.ones(10))
        for name in figures.PDF_VARIABLES
    }
    fig = figures.pdf_figure(bins, curves, "title")
    assert [len(ax.lines) for ax in fig.axes[:5]] == [2] * 5
    assert fig.axes[0].get_yscale() == "log"
    assert fig.axes[4].get_xlabel() == "10 m wind speed [m/s]"


# ------------------------------------------------------------------ --truth


def _truth_file(made: Path, path: Path) -> Path:
    """Sample 0 of each time plus noise, on the output grid, as an observation stand-in."""
    ds = store.open_store(made)
    rng = np.random.default_rng(1)
    data = {
        name: (("time", "y", "x"), ds[name].values[:, 0] + rng.normal(0, 0.3, (2, 448, 448)),
               {"units": ds[name].attrs["units"]})
        for name in store.OUTPUT_VARIABLES
    }  # fmt: skip
    xr.Dataset(data, coords={"time": ds["time"].values}).to_netcdf(path)
    return path


def test_truth_scores_match_properscoring_and_are_written(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = _truth_file(made, tmp_path / "obs.nc")
    outdir = tmp_path / "out"
    code, err = _plot(
        capsys, str(made), "--sample", "none", "--truth", str(truth), "--outdir", str(outdir)
    )
    assert code == 0, err
    assert sorted(p.name for p in drawn_files(outdir)) == [
        "rank-histograms.png", "scores.csv", "scores.json", "scores.png",
    ]  # fmt: skip
    with (outdir / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["valid_time"], r["variable"]) for r in rows] == [
        (f"{t}:00", v) for t in STORE_TIMES for v in store.OUTPUT_VARIABLES
    ]
    ds = store.open_store(made)
    with xr.open_dataset(truth) as reference:
        observed = reference["t2m"].values[1]
    members = ds["t2m"].values[1]
    expected = properscoring.crps_ensemble(observed, np.moveaxis(members, 0, -1)).mean()
    row = next(
        r for r in rows if r["variable"] == "t2m" and r["valid_time"].startswith(STORE_TIMES[1])
    )
    assert float(row["crps"]) == pytest.approx(expected, rel=1e-6)
    mae = np.abs(observed - ds["t2m_regression"].values[1]).mean()
    assert float(row["mae_regression"]) == pytest.approx(mae, rel=1e-6)
    from corrdiff_tools.truth import interpolate_lowres

    interpolated = interpolate_lowres(
        ds["lr_t2m"].values[1], ds["lat_lr"].values, ds["lon_lr"].values,
        ds["lat"].values.astype("float64"), ds["lon"].values.astype("float64"),
    )  # fmt: skip
    assert float(row["mae_interpolated"]) == pytest.approx(
        np.nanmean(np.abs(observed - interpolated)), rel=1e-6
    )
    assert sum(map(int, row["rank_histogram"].split())) == 448 * 448
    report = json.loads((outdir / "scores.json").read_text())
    assert report["truth"] == str(truth) and len(report["scores"]) == 8


def test_truth_on_a_regular_lat_lon_grid_is_interpolated(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = store.open_store(made)
    lat = np.arange(19.0, 28.51, 0.05)
    lon = np.arange(115.5, 126.51, 0.05)
    field = 290 + 0.5 * lat[:, None] + 0.1 * lon[None, :]
    truth = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), np.stack([field, field + 1]), {"units": "K"})},
        coords={"time": ds["time"].values, "lat": lat, "lon": lon},
    )
    truth.to_netcdf(tmp_path / "grid.nc")
    outdir = tmp_path / "out"
    code, err = _plot(
        capsys,
        str(made),
        "--sample",
        "none",
        "--truth",
        str(tmp_path / "grid.nc"),
        "--outdir",
        str(outdir),
    )
    assert code == 0, err
    rows = json.loads((outdir / "scores.json").read_text())["scores"]
    assert {r["variable"] for r in rows} == {"t2m"} and all(np.isfinite(r["crps"]) for r in rows)


@pytest.mark.parametrize("layout", ["time-x-y", "x-time-y-with-2d-latlon", "time-lon-lat-regular"])
def test_truth_is_aligned_by_dimension_names(made: Path, tmp_path: Path, layout: str) -> None:
    """A truth file in another dim order scores exactly as the canonical one."""
    from corrdiff_tools.truth import load_truth

    ds = store.open_store(made)
    lat, lon = ds["lat"].values.astype("float64"), ds["lon"].values.astype("float64")
    times = list(ds["time"].values)
    if layout == "time-lon-lat-regular":
        grid_lat, grid_lon = np.arange(19.0, 28.51, 0.05), np.arange(115.5, 126.51, 0.05)
        field = 290 + 0.5 * grid_lat[:, None] + 0.1 * grid_lon[None, :] ** 1.1
        canonical = xr.Dataset(
            {"t2m": (("time", "lat", "lon"), np.stack([field, field + 1]), {"units": "K"})},
            coords={"time": ds["time"].values, "lat": grid_lat, "lon": grid_lon},
        )
        permuted = canonical.transpose("time", "lon", "lat")
    else:
        with xr.open_dataset(_truth_file(made, tmp_path / "good.nc")) as good:
            canonical = good.load()
        if layout == "time-x-y":
            permuted = canonical.transpose("time", "x", "y")
        else:
            with2d = canonical.assign_coords(lat=(("y", "x"), lat), lon=(("y", "x"), lon))
            canonical = with2d
            permuted = with2d.transpose("x", "time", "y")
    canonical.to_netcdf(tmp_path / "canonical.nc")
    permuted.to_netcdf(tmp_path / "permuted.nc")
    expected = load_truth(tmp_path / "canonical.nc", lat, lon, times)
    got = load_truth(tmp_path / "permuted.nc", lat, lon, times)
    assert got.variables == expected.variables
    for time, fields in expected.fields.items():
        for name, values in fields.items():
            np.testing.assert_array_equal(got.fields[time][name], values)
    # The field is not symmetric, so a transposed read would have shown.
    some = next(iter(expected.fields.values()))["t2m"]
    assert np.abs(some - some.T).max() > 0.1


BAD_TRUTHS = {
    "wrong grid": (
        lambda ds: xr.Dataset(
            {"t2m": (("time", "y", "x"), np.zeros((2, 100, 100)))}, coords={"time": ds.time}
        ),
        "t2m is on a 100x100 grid without 1-D lat/lon",
    ),
    "missing variable": (
        lambda ds: ds.rename({name: f"obs_{name}" for name in store.OUTPUT_VARIABLES}),
        "holds none of mrr, t2m, u10m, v10m",
    ),
    "no common time": (
        lambda ds: ds.assign_coords(time=ds.time.values + np.timedelta64(3, "h")),
        "has no time in common with the selected store times",
    ),
    "wrong units": (
        lambda ds: ds.assign(t2m=ds.t2m.assign_attrs(units="degC")),
        "t2m is in 'degC'; expected K",
    ),
    "not covering": (
        lambda ds: xr.Dataset(
            {"t2m": (("time", "lat", "lon"), np.zeros((2, 10, 10)))},
            coords={
                "time": ds.time,
                "lat": np.linspace(22, 24, 10),
                "lon": np.linspace(120, 122, 10),
            },
        ),
        "does not cover the output grid",
    ),
    "unnamed spatial dims": (
        lambda ds: ds.rename({"y": "dim_0", "x": "dim_1"}),
        "mrr is 448x448 on dims ('dim_0', 'dim_1') without 2-D lat/lon on them: name the dims",
    ),
    # Units judged by the values: a missing or lying units attribute does not change them.
    "deg C labelled K": (
        lambda ds: ds.assign(t2m=ds.t2m - 273.15),
        "t2m at 2024-07-24T00:00 spans ",
    ),
    "deg C without units": (
        lambda ds: ds.assign(t2m=(ds.t2m - 273.15).assign_attrs(units=None)).pipe(
            lambda d: d.assign(t2m=d.t2m.drop_attrs())
        ),
        "outside its physical range 180 to 340 K: convert it (the units attribute alone",
    ),
    "linear reflectivity": (
        lambda ds: ds.assign(mrr=10 ** ((ds.mrr + 40) / 10)),  # a storm, in mm6 m-3
        "outside its physical range -100 to 100 dBZ",
    ),
    # Coordinates must be finite, monotonic and unambiguous.
    "a NaN latitude": (
        lambda ds: _regular_truth(ds).pipe(
            lambda d: d.assign_coords(lat=np.where(np.arange(d.lat.size) == 3, np.nan, d.lat))
        ),
        "lat has 1 non-finite value(s) (nan at position 3)",
    ),
    "a NaN in the 2-D grid": (
        lambda ds: ds.assign_coords(
            lat=(("y", "x"), np.where(np.eye(448, dtype=bool), np.nan, 23.0)),
            lon=(("y", "x"), np.full((448, 448), 121.0)),
        ),
        "its 2-D lat has 448 non-finite value(s)",
    ),
    "a duplicated time": (
        lambda ds: xr.concat([ds, ds.isel(time=[0])], "time"),
        "time holds 2024-07-24T00:00 more than once",
    ),
}


def _regular_truth(ds: xr.Dataset) -> xr.Dataset:
    """A t2m reference on a regular lat/lon grid that covers the output grid."""
    lat, lon = np.arange(19.0, 28.51, 0.05), np.arange(115.5, 126.51, 0.05)
    field = 290 + 0.5 * lat[:, None] + 0.1 * lon[None, :]
    return xr.Dataset(
        {"t2m": (("time", "lat", "lon"), np.stack([field, field + 1]), {"units": "K"})},
        coords={"time": ds["time"].values, "lat": lat, "lon": lon},
    )


@pytest.mark.parametrize("case", list(BAD_TRUTHS))
def test_a_bad_truth_file_exits_2_with_one_line_and_writes_nothing(
    case: str, made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    change, message = BAD_TRUTHS[case]
    path = tmp_path / "truth.nc"
    good = _truth_file(made, tmp_path / "good.nc")
    with xr.open_dataset(good) as dataset:
        change(dataset.load()).to_netcdf(path)
    outdir = tmp_path / "out"
    code, err = _plot(capsys, str(made), "--spectra", "--truth", str(path), "--outdir", str(outdir))
    lines = err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(f"plot_corrdiff.py: error: --truth {path}: ")
    assert message in lines[0], lines[0]
    assert not outdir.exists()


def test_a_missing_truth_path_exits_2(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _plot(capsys, str(made), "--truth", str(tmp_path / "nope.nc"))
    assert code == 2 and f"--truth {tmp_path / 'nope.nc'} does not exist" in err


def test_sample_none_alone_draws_nothing_and_says_so(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _plot(capsys, str(made), "--sample", "none", "--outdir", str(tmp_path / "o"))
    assert code == 2 and "nothing to draw: --sample none" in err


# ------------------------------------------------------------------ round three: messier truth


@pytest.mark.parametrize("form", ["iso-strings", "noleap-calendar", "seconds-off", "zarr-fill-0"])
def test_truth_times_and_fills_are_read_as_meant(form: str, made: Path, tmp_path: Path) -> None:
    """Strings, model calendars and times a few seconds off gave "unexpected KeyError"."""
    import cftime

    from corrdiff_tools.truth import load_truth

    ds = store.open_store(made)
    lat, lon = ds["lat"].values.astype("float64"), ds["lon"].values.astype("float64")
    times = list(ds["time"].values)
    with xr.open_dataset(_truth_file(made, tmp_path / "good.nc")) as good:
        canonical = good.load()
    expected = load_truth(tmp_path / "good.nc", lat, lon, times)
    stamps = canonical["time"].values
    if form == "iso-strings":
        variant = canonical.assign_coords(
            time=[str(t)[:16] for t in stamps.astype("datetime64[m]")]
        )
    elif form == "noleap-calendar":
        dates = [t.astype("datetime64[s]").astype(datetime) for t in stamps]
        variant = canonical.assign_coords(
            time=[cftime.DatetimeNoLeap(d.year, d.month, d.day, d.hour) for d in dates]
        )
    elif form == "seconds-off":
        variant = canonical.assign_coords(time=stamps - np.timedelta64(2, "s"))
    else:
        variant = canonical.copy(deep=True)
        variant["u10m"].values[1] = 0.0  # a whole field of the fill value: never written
        variant["v10m"].values[1, :10, :10] = 0.0  # calm points among data: data
    path = tmp_path / ("variant.zarr" if form == "zarr-fill-0" else "variant.nc")
    if form == "zarr-fill-0":
        encoding = {name: {"fill_value": 0.0} for name in store.OUTPUT_VARIABLES}
        variant.to_zarr(path, zarr_format=3, consolidated=False, encoding=encoding)
    else:
        variant.to_netcdf(path)
    got = load_truth(path, lat, lon, times)
    assert list(got.fields) == list(expected.fields)
    for time, fields in expected.fields.items():
        for name, values in fields.items():
            if form == "zarr-fill-0" and name == "u10m" and time == times[1]:
                assert np.isnan(got.fields[time][name]).all()
            elif form == "zarr-fill-0" and name == "v10m" and time == times[1]:
                assert (got.fields[time][name][:10, :10] == 0.0).all()
                np.testing.assert_array_equal(got.fields[time][name][10:], values[10:])
            else:
                np.testing.assert_array_equal(got.fields[time][name], values, err_msg=name)


@pytest.mark.slow
def test_truth_with_gaps_is_scored_where_it_has_values(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A radar outage (mrr missing at one time) and a patch of NaN crashed the scores."""
    good = _truth_file(made, tmp_path / "good.nc")
    with xr.open_dataset(good) as dataset:
        gappy = dataset.load()
    gappy["mrr"].values[1] = np.nan  # the whole of mrr at the second time
    gappy["t2m"].values[0, 100:200, 100:150] = np.nan  # a patch
    gappy.to_netcdf(tmp_path / "gappy.nc")
    outdir = tmp_path / "out"
    code, err = _plot(
        capsys, str(made), "--sample", "none", "--truth", str(tmp_path / "gappy.nc"),
        "--spectra", "--outdir", str(outdir),
    )  # fmt: skip
    assert code == 0, err
    assert (
        "--truth: 1 (time, variable) pair(s) not scored: mrr at 2024-07-24T06:00 (the "
        "reference has no finite value there)"
    ) in err
    report = json.loads((outdir / "scores.json").read_text())
    scored = {(r["valid_time"], r["variable"]): r for r in report["scores"]}
    assert len(scored) == 7 and ("2024-07-24T06:00", "mrr") not in scored
    assert report["not_scored"] == [
        {
            "valid_time": "2024-07-24T06:00",
            "lead_hours": None,
            "variable": "mrr",
            "why": "the reference has no finite value there",
        }
    ]
    assert scored[("2024-07-24T00:00", "t2m")]["points"] == 448 * 448 - 100 * 50
    assert scored[("2024-07-24T06:00", "t2m")]["points"] == 448 * 448
    assert all(np.isfinite(r["crps"]) for r in report["scores"])
    assert "spectra at 2024-07-24T06:00: the reference of mrr has missing pixels, left out" in err
    assert "spectra at 2024-07-24T00:00: the reference of t2m has missing pixels, left out" in err


@pytest.mark.slow
def test_spectra_leave_out_samples_with_missing_pixels_and_say_so(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sample with a few NaN pixels dropped its curve while the title still counted it."""
    import shutil

    import zarr

    holed = tmp_path / "holed.zarr"
    shutil.copytree(made, holed)
    field = np.asarray(zarr.open_group(str(holed))["u10m"][0, 1])
    field[5, 5:8] = np.nan
    zarr.open_group(str(holed), mode="r+")["u10m"][0, 1] = field
    from corrdiff_tools import diagnostic_figures

    drawn: list[tuple[str, dict]] = []
    original = diagnostic_figures.spectra_figure

    def spy(wavelength: object, curves: dict, title: str, **kw: object) -> object:
        drawn.append((title, curves))
        return original(wavelength, curves, title, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(diagnostic_figures, "spectra_figure", spy)
    args = (str(holed), "--sample", "none", "--spectra", "--outdir", str(tmp_path / "o"))
    code, err = _plot(capsys, *args)
    assert code == 0, err
    assert "spectra at 2024-07-24T00:00: sample(s) 1 have missing pixels and are left out" in err
    (first_title, first), (second_title, second) = drawn
    assert first_title.endswith("· 2 of 3 samples (1 with missing pixels left out)")
    assert second_title.endswith("· 3 samples")
    for name in ("mrr", "t2m", "u10m", "v10m"):
        assert first[name].samples.shape[0] == 2 and np.isfinite(first[name].samples).all()
        assert second[name].samples.shape[0] == 3


def test_truth_on_a_grid_whose_longitudes_wrap_is_read(made: Path, tmp_path: Path) -> None:
    """60 ... 180, -180 ... -100: monotonic once unwrapped; scipy refused it as it was."""
    from corrdiff_tools.truth import load_truth

    ds = store.open_store(made)
    lat = np.arange(15.0, 32.01, 0.25)
    lon = np.concatenate([np.arange(60.0, 180.0, 0.25), np.arange(-180.0, -100.0, 0.25)])
    unwrapped = np.unwrap(lon, period=360.0)
    field = 290 + 0.5 * lat[:, None] + 0.01 * unwrapped[None, :]
    times = ds["time"].values
    xr.Dataset(
        {"t2m": (("time", "lat", "lon"), np.stack([field, field + 1]), {"units": "K"})},
        coords={"time": times, "lat": lat, "lon": lon},
    ).to_netcdf(tmp_path / "wrap.nc")
    grid_lat, grid_lon = ds["lat"].values.astype("float64"), ds["lon"].values.astype("float64")
    got = load_truth(tmp_path / "wrap.nc", grid_lat, grid_lon, list(times))
    values = got.fields[times[0]]["t2m"]
    expected = 290 + 0.5 * grid_lat + 0.01 * grid_lon  # linear: bilinear is exact
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", ["one sample", "no finite value", "no complete sample"])
def test_truth_with_nothing_to_score_says_why(
    case: str, made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It exited 0 with an empty outdir, or blamed the truth file for the store's gaps."""
    import shutil

    import zarr

    good = _truth_file(made, tmp_path / "good.nc")
    store_path = tmp_path / "s.zarr"
    shutil.copytree(made, store_path)
    completed = zarr.open_group(str(store_path), mode="r+")["completed"]
    truth = good
    if case == "one sample":
        completed[:] = np.array([[1, 0, 0], [1, 0, 0]], dtype="int8")
        expected = "--truth scores an ensemble, and the selected times have 1 complete sample(s)"
    elif case == "no finite value":
        with xr.open_dataset(good) as dataset:
            (dataset.load() * np.nan).to_netcdf(tmp_path / "empty.nc")
        truth = tmp_path / "empty.nc"
        expected = f"--truth {truth} has no finite value at the selected times"
    else:
        completed[1] = np.zeros(3, dtype="int8")
        expected = "nothing to draw: --truth asked for, and the store's selected samples"
    outdir = tmp_path / "out"
    code, err = _plot(capsys, str(store_path), "--time", "1" if case == "no complete sample" else "all",
                      "--sample", "none", "--truth", str(truth), "--outdir", str(outdir))  # fmt: skip
    assert code == 2 and expected in err.strip().splitlines()[-1], err
    assert not outdir.exists()


@pytest.mark.slow
def test_truth_without_units_is_taken_with_a_warning(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _truth_file(made, tmp_path / "good.nc")
    with xr.open_dataset(good) as dataset:
        bare = dataset.load()
    for name in bare.data_vars:
        bare[name].attrs = {}
    bare.to_netcdf(tmp_path / "bare.nc")
    code, err = _plot(capsys, str(made), "--sample", "none", "--truth", str(tmp_path / "bare.nc"),
                      "--outdir", str(tmp_path / "o"))  # fmt: skip
    assert code == 0, err
    assert "--truth: t2m has no units attribute: taken as K, as its values are in range" in err
