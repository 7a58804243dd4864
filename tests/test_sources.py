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
        ("t2m", lambda v: v - 273.15, r"input t2m at .* outside its physical range 180 to 340 K"),
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


# ------------------------------------------------------------------ messier files (round three)


def _canonical_inputs(input_file: Path) -> dict[str, np.ndarray]:
    spec = sources.SourceSpec("file", input_file)
    return sources.fetch_inputs(sources.build_source(spec, [NOON]), spec, NOON, 0, ["refc"])


def _damage_coordinate(array: xr.DataArray, case: str) -> xr.DataArray:
    lat, lon = array["lat"].values.copy(), array["lon"].values.copy()
    if case == "nan-lat-outside-the-box":
        lat[0] = np.nan  # the file's first row, north of the model's box
    elif case == "inf-lon":
        lon[-1] = np.inf
    elif case == "repeated-lat":
        lat[5] = lat[4]
    elif case == "lat-turns-back":
        lat[[3, 4]] = lat[[4, 3]]
    elif case == "lat-beyond-the-pole":
        lat = lat + 70.0
    elif case == "lon-twice-the-same-meridian":
        lon[0] = lon[1] - 360.0
    else:
        raise AssertionError(case)
    return array.assign_coords(lat=lat, lon=lon)


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("nan-lat-outside-the-box", "lat has 1 non-finite value(s) (nan at position 0)"),
        ("inf-lon", "lon has 1 non-finite value(s) (inf at position"),
        ("repeated-lat", "lat is not strictly increasing or decreasing (at position 5"),
        ("lat-turns-back", "lat is not strictly increasing or decreasing (at position 4"),
        ("lat-beyond-the-pole", "lat runs outside -90..90"),
        ("lon-twice-the-same-meridian", "lon names the same meridian twice"),
    ],
)
def test_a_file_with_a_bad_coordinate_is_refused_in_one_line(
    case: str, fragment: str, input_file: Path, tmp_path: Path
) -> None:
    """A single NaN latitude made the nearest-point selection copy one row into every row."""
    path = tmp_path / f"{case}.nc"
    _damage_coordinate(load_inputs(input_file), case).to_netcdf(path)
    with pytest.raises(UsageError) as caught:
        sources.check_file_source(path, [NOON])
    message = str(caught.value)
    assert message.startswith(f"--source {path}: ") and fragment in message, message
    assert "\n" not in message


def _relabel_times(array: xr.DataArray, case: str) -> xr.DataArray:
    stamps = array["time"].values
    if case == "iso-strings":
        return array.assign_coords(time=[str(t)[:16] for t in stamps.astype("datetime64[m]")])
    if case == "a-few-seconds-off":
        return array.assign_coords(time=stamps + np.timedelta64(3, "s"))
    if case == "noleap-calendar":
        import cftime

        dates = [t.astype("datetime64[s]").astype(datetime) for t in stamps]
        return array.assign_coords(
            time=[cftime.DatetimeNoLeap(d.year, d.month, d.day, d.hour) for d in dates]
        )
    if case == "bytes-variable-labels":
        return array.assign_coords(variable=[v.encode() for v in array["variable"].values])
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case", ["iso-strings", "a-few-seconds-off", "noleap-calendar", "bytes-variable-labels"]
)
@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_unambiguous_times_and_labels_are_normalised(
    case: str, suffix: str, input_file: Path, tmp_path: Path
) -> None:
    """These gave "unexpected KeyError" (or "lacks the input variables") before."""
    expected = _canonical_inputs(input_file)
    path = tmp_path / f"{case}{suffix}"
    array = _relabel_times(load_inputs(input_file), case)
    if suffix == ".nc":
        array.to_netcdf(path)
    else:
        array.to_dataset(name="fields").to_zarr(path, consolidated=False)
    assert sources.check_file_source(path, [NOON]) == [*INPUT_VARIABLES, "refc"]
    spec = sources.SourceSpec("file", path)
    got = sources.fetch_inputs(sources.build_source(spec, [NOON]), spec, NOON, 0, ["refc"])
    assert sorted(got) == sorted(expected)
    for name, values in expected.items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)
    identity = sources.file_identity(path, [NOON])["sha256"]
    assert identity == sources.file_identity(input_file, [NOON])["sha256"]


@pytest.mark.parametrize(
    ("stamps", "fragment"),
    [
        (
            lambda t: t.astype("datetime64[s]").astype(object).tolist()[:-1] + [None],
            "time has 1 missing value(s) (NaT)",
        ),
        (lambda t: ["2024-07-24T00", "soon", "2024-07-24T12", "2024-07-24T18"], "'soon'"),
        (
            lambda t: [__import__("cftime").DatetimeJulian(2024, 7, 24, h) for h in (0, 6, 12, 18)],
            "julian calendar, whose dates are not the Gregorian calendar's",
        ),
        (
            lambda t: t[[0, 1, 2, 2]] + np.array([0, 0, 0, 2], "timedelta64[s]"),
            "time holds 2024-07-24T12:00 more than once",
        ),
    ],
)
def test_times_that_are_not_unambiguous_are_refused_in_one_line(
    stamps, fragment: str, input_file: Path, tmp_path: Path
) -> None:
    array = load_inputs(input_file)
    path = tmp_path / "times.nc"
    array.assign_coords(time=stamps(array["time"].values)).to_netcdf(path)
    with pytest.raises(UsageError) as caught:
        sources.check_file_source(path, [NOON])
    assert str(caught.value).startswith(f"--source {path}: ") and fragment in str(caught.value)


def test_a_time_with_seconds_is_named_with_its_seconds(input_file: Path, tmp_path: Path) -> None:
    array = load_inputs(input_file)
    path = tmp_path / "late.nc"
    array.assign_coords(time=array["time"].values + np.timedelta64(40, "s")).to_netcdf(path)
    with pytest.raises(UsageError, match=r"it holds 2024-07-24T00:00:40, .*12:00:40"):
        sources.check_file_source(path, [NOON])


def test_every_requested_time_is_checked_finite_before_anything_is_written(
    input_file: Path, tmp_path: Path
) -> None:
    """A NaN at a later time used to surface mid-run, after --overwrite had replaced a store."""
    array = load_inputs(input_file)
    row = int(np.argmin(np.abs(array["lat"].values - LR_LAT[5])))
    column = int(np.argmin(np.abs(array["lon"].values - LR_LON[7])))
    variable = list(array["variable"].values).index("v850")
    array.values[3, variable, row, column] = np.nan  # at 18Z, inside the model's box
    path = tmp_path / "late-nan.nc"
    array.to_netcdf(path)
    assert sources.check_file_source(path, [NOON])  # 18Z is not asked for: fine
    with pytest.raises(UsageError) as caught:
        sources.check_file_source(path, [NOON, datetime(2024, 7, 24, 18)])
    assert str(caught.value) == (
        f"input v850 at 2024-07-24T18:00 in --source {path} has 1 NaN/inf value(s) of 1440 "
        "on the model's input grid: fill the gaps or pick another time"
    )


def test_refc_is_range_checked_like_the_inputs(
    input_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Linear reflectivity instead of dBZ blanked every reflectivity colour scale."""
    array = load_inputs(input_file)
    array.loc[{"variable": "refc"}] = 10 ** (array.sel(variable="refc") / 10)
    path = tmp_path / "linear.nc"
    array.to_netcdf(path)
    with pytest.raises(UsageError, match=r"input refc at 2024-07-24T12:00 .* -100 to 100 dBZ"):
        sources.check_file_source(path, [NOON])
    # A remote source's refc is best effort: left out with a warning, the run goes on.
    spec = sources.SourceSpec("file", path)
    got = sources.fetch_inputs(sources.build_source(spec, [NOON]), spec, NOON, 0, ["refc"])
    assert "refc" not in got and len(got) == 12
    assert "refc at 2024-07-24T12:00 from" in caplog.text and "left out" in caplog.text


def test_the_gfs_cache_says_when_it_holds_files_from_two_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """earth2studio keys its GFS cache by object path, not by server: switching mirrors."""
    cache = tmp_path / "gfs"
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    sources.note_cache_origin(cache)  # an empty cache: nothing to say
    (cache / "0123abcd").parent.mkdir(parents=True, exist_ok=True)
    (cache / "0123abcd").write_bytes(b"GRIB")  # a download from NOAA
    sources.note_cache_origin(cache)
    assert caplog.text == ""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://mirror.example:9000")
    sources.note_cache_origin(cache)
    assert (
        f"the GFS cache {cache} holds files from NOAA (s3.us-east-1.amazonaws.com) and "
        "mirror.example:9000"
    ) in caplog.text
    # Emptied by the user: a fresh start, no warning.
    caplog.clear()
    (cache / "0123abcd").unlink()
    sources.note_cache_origin(cache)
    assert caplog.text == ""


def test_an_unwritten_chunk_of_a_zarr_input_is_a_gap_not_calm(
    input_file: Path, tmp_path: Path
) -> None:
    """earth2studio's writer fills with 0.0: zero winds and water vapour were read as data."""
    import shutil

    path = tmp_path / "in.zarr"
    dataset = load_inputs(input_file).to_dataset(name="fields").chunk({"time": 1, "variable": 1})
    dataset.to_zarr(path, encoding={"fields": {"fill_value": 0.0}}, consolidated=False)
    noon = list(dataset["time"].values).index(np.datetime64(NOON, "ns"))
    u10m = list(dataset["variable"].values).index("u10m")
    chunk = path / "fields" / "c" / str(noon) / str(u10m)
    assert chunk.exists()
    shutil.rmtree(chunk) if chunk.is_dir() else chunk.unlink()
    with pytest.raises(UsageError) as caught:
        sources.check_file_source(path, [NOON])
    assert str(caught.value).startswith(
        f"input u10m at 2024-07-24T12:00 in --source {path} has 1440 NaN/inf value(s) of 1440"
    )
    assert sources.check_file_source(path, [datetime(2024, 7, 24, 6)])  # other times are whole
