from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import load_inputs

from corrdiff_tools import sources
from corrdiff_tools.errors import RunError, UsageError
from corrdiff_tools.store import INPUT_VARIABLES, LR_LAT, LR_LON
from corrdiff_tools.synthetic import synthetic_inputs

NOON = datetime(2024, 7, 24, 12)


def test_parse_source_names_and_paths(input_file: Path) -> None:
    assert sources.parse_source("gfs") == sources.SourceSpec("gfs")
    assert sources.parse_source("gfs-forecast").is_forecast
    spec = sources.parse_source(str(input_file))
    assert spec.kind == "file" and spec.path == input_file and spec.label == str(input_file)
    with pytest.raises(UsageError, match="neither a known source"):
        sources.parse_source("GFS")


def test_file_check_reports_variables_to_store(input_file: Path) -> None:
    assert sources.check_file_source(input_file, [NOON]) == [*INPUT_VARIABLES, "refc"]


def test_zarr_directory_source_from_prefetch(tmp_path: Path, input_file: Path) -> None:
    array = load_inputs(input_file).sel(time=[np.datetime64(NOON)], lat=LR_LAT, lon=LR_LON)
    fields = [{str(v): array.sel(variable=v).values[0] for v in array["variable"].values}]
    sources.write_input_file(tmp_path / "pre.zarr", [NOON], fields)
    assert sources.check_file_source(tmp_path / "pre.zarr", [NOON])[-1] == "refc"
    spec = sources.SourceSpec("file", tmp_path / "pre.zarr")
    got = sources.fetch_inputs(sources.build_source(spec), spec, NOON, 0)
    np.testing.assert_array_equal(got["t850"], array.sel(variable="t850").values[0])


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (lambda p: p.write_text("garbage"), "could not be read as NetCDF or Zarr"),
        (
            lambda p: xr.DataArray(np.zeros((2, 3)), dims=("a", "b"), name="x").to_netcdf(p),
            "needs (time, variable, lat, lon)",
        ),
    ],
)
def test_unreadable_or_misshapen_files(tmp_path: Path, content, fragment: str) -> None:
    path = tmp_path / "bad.nc"
    content(path)
    with pytest.raises(UsageError) as err:
        sources.check_file_source(path, [NOON])
    assert fragment in str(err.value)


def test_fetch_maps_onto_the_input_grid_exactly(input_file: Path) -> None:
    spec = sources.SourceSpec("file", input_file)
    got = sources.fetch_inputs(sources.build_source(spec, [NOON]), spec, NOON, 0, extras=["refc"])
    expected = load_inputs(input_file).sel(time=np.datetime64(NOON), lat=LR_LAT, lon=LR_LON)
    assert sorted(got) == sorted([*INPUT_VARIABLES, "refc"])
    for name, values in got.items():
        assert values.shape == (36, 40) and values.dtype == np.float32
        np.testing.assert_array_equal(values, expected.sel(variable=name).values)


def test_missing_extra_field_is_only_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "norefc.nc"
    synthetic_inputs([NOON], with_refc=False).to_netcdf(path)
    got = sources.fetch_inputs(
        sources.build_source(sources.SourceSpec("file", path)),
        sources.SourceSpec("file", path),
        NOON,
        0,
        ["refc"],
    )
    assert "refc" not in got and len(got) == 12
    assert "refc is not available" in caplog.text


def test_infinite_input_is_refused(tmp_path: Path) -> None:
    array = synthetic_inputs([NOON]).load()
    array.loc[{"variable": "tcwv"}] = np.inf
    array.to_netcdf(tmp_path / "inf.nc")
    with pytest.raises(RunError, match="input tcwv at 2024-07-24T12:00 .* NaN/inf values"):
        sources.fetch_inputs(
            sources.build_source(sources.SourceSpec("file", tmp_path / "inf.nc")),
            sources.SourceSpec("file", tmp_path / "inf.nc"),
            NOON,
            0,
        )


@pytest.mark.network
@pytest.mark.enable_socket
def test_real_gfs_fetch() -> None:
    spec = sources.SourceSpec("gfs")
    got = sources.fetch_inputs(sources.build_source(spec), spec, NOON, 0, ["refc"])
    assert 280 < float(got["t2m"].mean()) < 310


def _variant(array: xr.DataArray, layout: str) -> xr.DataArray:
    """The same fields as a real file might hold them: other dim order, lat, lon, coords."""
    if layout == "time-lat-lon-variable":
        return array.transpose("time", "lat", "lon", "variable")
    if layout == "lon-variable-lat-time":
        return array.transpose("lon", "variable", "lat", "time")
    if layout == "ascending-lat":
        return array.sortby("lat")
    if layout == "negative-lon-and-extra-coords":
        shifted = array.assign_coords(lon=array["lon"].values - 360.0)
        return shifted.assign_coords(
            level=("variable", np.arange(array.sizes["variable"])), member=0
        )
    raise AssertionError(layout)


LAYOUTS = [
    "time-lat-lon-variable",
    "lon-variable-lat-time",
    "ascending-lat",
    "negative-lon-and-extra-coords",
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_file_layout_gives_the_canonical_inputs(
    layout: str, input_file: Path, tmp_path: Path
) -> None:
    """earth2studio's DataArrayFile reads by position: dims are matched by name first."""
    canonical = sources.SourceSpec("file", input_file)
    expected = sources.fetch_inputs(sources.build_source(canonical, [NOON]), canonical, NOON, 0)
    path = tmp_path / f"{layout}.nc"
    _variant(load_inputs(input_file), layout).to_netcdf(path)
    assert sources.check_file_source(path, [NOON]) == [*INPUT_VARIABLES, "refc"]
    spec = sources.SourceSpec("file", path)
    got = sources.fetch_inputs(sources.build_source(spec, [NOON]), spec, NOON, 0)
    assert sorted(got) == sorted(expected)
    for name, values in expected.items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)
    assert 280 < float(got["t2m"].mean()) < 320  # kelvin, not a scrambled field


def test_duplicate_times_are_refused_in_one_line(input_file: Path, tmp_path: Path) -> None:
    array = load_inputs(input_file)
    path = tmp_path / "twice.nc"
    xr.concat([array, array.isel(time=[2])], "time").to_netcdf(path)
    with pytest.raises(UsageError, match=r"holds 2024-07-24T12:00 more than once: keep one"):
        sources.check_file_source(path, [NOON])


@pytest.mark.parametrize(
    ("variable", "change", "message"),
    [
        ("t2m", lambda v: v - 273.15, r"input t2m at .* outside its physical range 200 to 340 K"),
        ("z500", lambda v: v / 9.80665, r"input z500 .* m2 s-2 \(geopotential, not height\)"),
        ("u10m", lambda v: v * 100, r"input u10m .* -100 to 100 m s-1"),
    ],
)
def test_inputs_in_other_units_are_refused(
    variable: str, change: object, message: str, input_file: Path, tmp_path: Path
) -> None:
    array = load_inputs(input_file)
    array.loc[{"variable": variable}] = change(array.sel(variable=variable))  # type: ignore[operator]
    path = tmp_path / "units.nc"
    array.to_netcdf(path)
    with pytest.raises(UsageError, match=message) as caught:
        sources.check_file_source(path, [NOON])
    assert "\n" not in str(caught.value)
    assert sources.check_physical({"t2m": np.full((2, 2), 299.0)}, "here") is None
