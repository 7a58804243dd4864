"""``run_corrdiff.py --model cmip6``: CorrDiffCMIP6 through both tools, offline.

A tiny package in the layout earth2studio's ``CorrDiffCMIP6.load_model`` reads (the one
``test_cmip6.py`` pins against earth2studio's own call) is run from a file of daily
fields, end to end: the real loader, earth2studio's file source, the store, ``--resume``,
the plot tool. The samples are checked against :class:`Cmip6Sampler` called directly on
the three days around each time, taken from the file by date and name, so what is tested
here is the wiring: each input at -24, 0, +24 h, the valid time of each output lead time,
one seed per (time, lead, sample), the store's lead times before the initialisation time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from corrdiff_tools import downscale, render, sources, synthetic, times, truth
from corrdiff_tools.cli import plot_main, run_main
from corrdiff_tools.models import cmip6
from corrdiff_tools.models.declaration import MODEL_ATTR

ROOT = Path(__file__).resolve().parents[1]
#: earth2studio's names, as the published package's (CMIP6's tas is t2m, and so on).
INPUTS = ("t2m", "u10m", "siconc", "snc")
OUTPUTS = ("t2m", "u10m", "tp")
OUT_GRID = (np.linspace(-90.0, 90.0, 25), np.arange(64) * 5.625)
IN_GRID = (np.linspace(-90.0, 90.0, 9), np.arange(16) * 22.5)
INITS = [datetime(2037, 9, 6, 12), datetime(2037, 9, 7, 12)]
#: The days the file holds: one before the first time to one after the last.
DAYS = [datetime(2037, 9, 5, 12) + timedelta(days=d) for d in range(4)]
LEADS = (-12, 0, 11)
SEED = 5


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    invariants = synthetic.cmip6_invariants(OUT_GRID[0], OUT_GRID[1].size)
    # No sigma_min: CorrDiffCMIP6's own default (1) applies, not the generic one (0.002).
    return synthetic.build_cmip6_package(
        tmp_path_factory.mktemp("cmip6") / "package", INPUTS, OUTPUTS, OUT_GRID, IN_GRID,
        invariants, metadata={"number_of_steps": 3, "sigma_max": 80.0},
    )  # fmt: skip


def _day(index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(300 + index)
    shape = (IN_GRID[0].size, IN_GRID[1].size)
    return {
        "t2m": 280.0 + 10.0 * rng.standard_normal(shape),
        "u10m": 4.0 * rng.standard_normal(shape),
        "siconc": np.clip(50.0 + 40.0 * rng.standard_normal(shape), 0.0, 100.0),
        "snc": np.clip(30.0 + 40.0 * rng.standard_normal(shape), 0.0, 100.0),
        "msl": np.full(shape, 101000.0),
    }


@pytest.fixture(scope="module")
def input_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The daily fields as a user's file: another variable order, an extra variable,
    latitudes north to south (the package lists them south to north)."""
    order = ["snc", "msl", "u10m", "siconc", "t2m"]
    data = np.stack(
        [np.stack([_day(i)[name][::-1] for name in order]) for i in range(len(DAYS))]
    ).astype("float32")
    array = sources.input_dataarray(data, DAYS, order, IN_GRID[0][::-1].copy(), IN_GRID[1])
    path = tmp_path_factory.mktemp("inputs") / "daily.nc"
    array.to_netcdf(path)
    return path


def _argv(package: Path, inputs: Path | str, output: Path, *extra: str) -> list[str]:
    return [
        *(t.strftime("%Y-%m-%dT%H:%M") for t in INITS), "--model", "cmip6",
        "--model-package", str(package), "--source", str(inputs), "--lead-time",
        *map(str, LEADS), "--samples", "2", "--seed", str(SEED), "--device", "cpu",
        "--output", str(output), "-q", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def made(package: Path, input_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("run") / "cmip6.zarr"
    assert run_main(_argv(package, input_file, output, "--stats")) == 0
    return output


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = run_main(argv)
    return code, capsys.readouterr().err


def _reference(package: Path) -> tuple[np.ndarray, np.ndarray]:
    """Samples (time, lead, sample, variable, y, x) and regression means, from the
    forward pass called on the three days around each time, by name."""
    from corrdiff_tools.models import cmip6_net

    sampler = cmip6_net.Cmip6Sampler(cmip6_net.load(package))
    samples, means = [], []
    for init in INITS:
        first = DAYS.index(init) - 1
        days = [_day(first + i) for i in range(3)]
        array = xr.DataArray(
            np.stack([[day[name] for name in INPUTS] for day in days]).astype("float32"),
            dims=("lead_time", "variable", "lat", "lon"),
            coords={"lead_time": list(cmip6.INPUT_LEADS), "variable": list(INPUTS),
                    "lat": IN_GRID[0], "lon": IN_GRID[1]},
        )  # fmt: skip
        for lead in LEADS:
            valid = init + timedelta(hours=lead)
            seeds = [downscale.sample_seed(SEED, init, lead, s) for s in range(2)]
            samples.append(sampler.samples(array, seeds, valid))
            condition = sampler.condition(array, valid)
            means.append(sampler.denormalise(sampler.regression_mean(condition))[0])
    shape = (len(INITS), len(LEADS))
    return np.stack(samples).reshape(*shape, 2, 3, 25, 64), np.stack(means).reshape(
        *shape, 3, 25, 64
    )


def test_cmip6_runs_the_hours_around_each_day_into_a_store(made: Path, package: Path) -> None:
    dataset = xr.open_zarr(made)
    assert [int(h) for h in dataset["lead_time"].values.astype("timedelta64[h]").astype(int)] == [
        -12, 0, 11,
    ]  # fmt: skip
    assert list(dataset["time"].values) == [np.datetime64(t, "ns") for t in INITS]
    for name in OUTPUTS:
        assert dataset[name].dims == ("time", "lead_time", "sample", "y", "x")
        assert dataset[name].shape == (2, 3, 2, 25, 64)
    lat, lon = np.meshgrid(*OUT_GRID, indexing="ij")
    np.testing.assert_allclose(dataset["lat"].values, lat, atol=1e-5)
    np.testing.assert_allclose(dataset["lon"].values, lon, atol=1e-5)
    assert json.loads(dataset.attrs[MODEL_ATTR]) == {
        "name": "cmip6", "inputs": list(INPUTS), "outputs": list(OUTPUTS),
    }  # fmt: skip
    assert dataset.attrs["title"].startswith("CorrDiffCMIP6 downscaled ensemble")
    assert "-24, 0, +24 h" in dataset.attrs["conditioning"]
    # CorrDiffCMIP6's sampler default where metadata.json is silent: sigma_min 1.
    sampler = json.loads(dataset.attrs["corrdiff_tools_settings"])["sampler"]
    assert (sampler["sigma_min"], sampler["sigma_max"], sampler["steps"]) == (1.0, 80.0, 3)

    samples, means = _reference(package)
    for index, name in enumerate(OUTPUTS):
        np.testing.assert_array_equal(dataset[name].values, samples[:, :, :, index])
        np.testing.assert_array_equal(dataset[f"{name}_regression"].values, means[:, :, index])
    # Each lead time is its own valid time and seed: no two are the same field.
    t2m = dataset["t2m"].values
    assert np.abs(t2m[0, 0] - t2m[0, 1]).max() > 0.1 and np.abs(t2m[0, 0] - t2m[1, 0]).max() > 0.1
    # The store keeps the inputs of the day itself (the middle of three) at every lead.
    for ti, init in enumerate(INITS):
        day = _day(DAYS.index(init))
        for name in INPUTS:
            stored = dataset[f"lr_{name}"].values[ti]
            for li in range(len(LEADS)):
                np.testing.assert_allclose(stored[li], day[name], rtol=1e-6)
    assert "lr_msl" not in dataset  # the file's other variables are not the model's


def test_cmip6_statistics_are_the_ensembles(made: Path) -> None:
    dataset = xr.open_zarr(made)
    members = dataset["u10m"].values
    np.testing.assert_allclose(
        dataset["u10m_ensemble_mean"].values, members.mean(axis=2), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        dataset["u10m_ensemble_std"].values, members.std(axis=2, ddof=0), rtol=1e-4, atol=1e-5
    )


def test_cmip6_resume_recomputes_what_is_missing_and_refuses_other_settings(
    made: Path, package: Path, input_file: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    import shutil

    import zarr

    output = tmp_path / "copy.zarr"
    shutil.copytree(made, output)
    before = xr.open_zarr(made)["t2m"].values
    group = zarr.open_group(str(output), mode="r+")
    flags = group["completed"][:]
    flags[1, 0, 1] = 0  # the second day, lead -12 h, sample 1: never written
    group["completed"][:] = flags
    group["t2m"][1, 0, 1] = np.nan
    code, err = _run(capsys, _argv(package, input_file, output, "--stats", "--resume"))
    assert code == 0, err
    after = xr.open_zarr(output)["t2m"].values
    assert np.isfinite(after).all()
    # Recomputed alone in a batch of one: float32 rounding apart, not another draw.
    np.testing.assert_allclose(after[1, 0, 1], before[1, 0, 1], rtol=0, atol=1e-3)
    untouched = np.ones(after.shape, dtype=bool)
    untouched[1, 0, 1] = False
    np.testing.assert_array_equal(after[untouched], before[untouched])

    argv = _argv(package, input_file, output, "--stats", "--resume")
    other_leads = (
        argv[: argv.index("--lead-time") + 1] + ["-12", "0"] + argv[argv.index("--samples") :]
    )
    code, err = _run(capsys, other_leads)
    assert code == 2 and "lead_times: store has [-12, 0, 11]" in err, err
    other = synthetic.build_cmip6_package(
        tmp_path / "other", INPUTS, OUTPUTS, OUT_GRID, IN_GRID,
        synthetic.cmip6_invariants(OUT_GRID[0], OUT_GRID[1].size),
        metadata={"number_of_steps": 3, "sigma_max": 80.0}, seed=1,
    )  # fmt: skip
    code, err = _run(capsys, _argv(other, input_file, output, "--stats", "--resume"))
    assert code == 2 and "model_package" in err, err


@pytest.mark.slow
def test_cmip6_runs_in_bf16_on_request_within_its_measured_error(
    made: Path, package: Path, input_file: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """--precision bf16 (CorrDiffCMIP6's default on a GPU, as earth2studio runs it there):
    the backbones of physicsnemo's EDMPrecondSuperResolution under autocast. Measured on
    the tiny package: max |bf16 - fp32| 0.08 to 0.10 of each output's spread; below 0.3,
    and above 0 (or bf16 was not in effect)."""
    output = tmp_path / "bf16.zarr"
    argv = [a for a in _argv(package, input_file, output, "--precision", "bf16") if a != "-q"]
    code, err = _run(capsys, argv)
    assert code == 0, err
    # The summary counts (time, lead time) pieces as such, not as 6 "times".
    assert "done: 12 sample(s) for 2 time(s) x 3 lead time(s) in" in err
    half, full = xr.open_zarr(output), xr.open_zarr(made)
    assert half.attrs["precision"] == "bfloat16" and full.attrs["precision"] == "float32"
    for name in ("t2m", "u10m"):
        difference = np.abs(half[name].values - full[name].values)
        assert np.isfinite(half[name].values).all()
        assert 0 < difference.max() < 0.3 * float(full[name].std()), name


def _daily_file(path: Path, change: dict[str, Any]) -> Path:
    """The days of the first time as a file, each field changed by ``change[name]``."""
    fields = [{**_day(i), **{k: f(_day(i)[k]) for k, f in change.items()}} for i in range(3)]
    data = np.stack([np.stack([day[name] for name in INPUTS]) for day in fields])
    sources.input_dataarray(data.astype("float32"), DAYS[:3], list(INPUTS), *IN_GRID).to_netcdf(
        path
    )
    return path


def test_blank_sea_ice_and_snow_cover_run_as_no_cover(
    package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CMIP6's blanks (sea ice over land, snow over sea) run as zeros; the store keeps
    them blank; an infinity is still refused, naming the field."""
    land = np.zeros((IN_GRID[0].size, IN_GRID[1].size), dtype=bool)
    land[3:6, 2:7] = True
    blanks = {
        "siconc": lambda v: np.where(land, np.nan, v),
        "snc": lambda v: np.where(land, v, np.nan),
    }
    zeros = {
        "siconc": lambda v: np.where(land, 0.0, v),
        "snc": lambda v: np.where(land, v, 0.0),
    }
    stores = []
    for label, change in (("blank", blanks), ("zero", zeros)):
        source = _daily_file(tmp_path / f"{label}.nc", change)
        output = tmp_path / f"{label}.zarr"
        argv = _argv(package, source, output)
        argv = [INITS[0].strftime("%Y-%m-%dT%H"), *argv[2:]]
        code, err = _run(capsys, argv)
        assert code == 0, err
        stores.append(xr.open_zarr(output))
    blank, zero = stores
    for name in OUTPUTS:
        assert np.isfinite(blank[name].values).all()
        np.testing.assert_array_equal(blank[name].values, zero[name].values)
    stored = blank["lr_siconc"].values[0, 0]
    assert np.isnan(stored[land]).all() and np.isfinite(stored[~land]).all()
    inf = _daily_file(tmp_path / "inf.nc", {"snc": lambda v: np.where(land, np.inf, v)})
    output = tmp_path / "inf.zarr"
    code, err = _run(capsys, [INITS[0].strftime("%Y-%m-%dT%H"), *_argv(package, inf, output)[2:]])
    assert code == 2 and "input snc at 2037-09-05T12:00 in --source" in _one_line(err), err
    assert "has 15 NaN/inf value(s)" in err and not output.exists()


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "Warning" not in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("2037-09-06T06:00",), "2037-09-06T06:00: --model cmip6 starts from daily fields "
         "valid at 12:00 UTC; give 2037-09-06T12:00"),
        (("--lead-time", "12"), "lead time 12 h: CorrDiffCMIP6 writes -12 to +11 h"),
        (("--lead-time", "six"), "lead time 'six' is not a whole number of hours"),
        (("--source", "gfs-forecast"), "--source gfs-forecast: --model cmip6 reads daily "
         "climate-model fields at -24, 0, +24 h"),
        (("--source", "cmip6:ssp585:CanESM5"), "name the CMIP6 run as "
         "cmip6:EXPERIMENT:MODEL:VARIANT"),
        (("--precision", "fp16"), "--precision fp16 needs a GPU: physicsnemo computes"),
    ],
)  # fmt: skip
def test_cmip6_refuses_what_it_cannot_run_in_one_line(
    package: Path, input_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    change: tuple[str, ...], expected: str,
) -> None:  # fmt: skip
    output = tmp_path / "refused.zarr"
    argv = _argv(package, input_file, output)
    if change[0].startswith("20"):
        argv = [change[0], *argv[2:]]
    elif change[0] in argv:
        at = argv.index(change[0])
        end = argv.index("--samples") if change[0] == "--lead-time" else at + 2
        argv = [*argv[:at], *change, *argv[end:]]
    else:
        argv = [*argv, *change]
    code, err = _run(capsys, argv)
    assert code == 2, err
    assert expected in _one_line(err)
    assert not output.exists()


def test_lead_times_are_read_space_or_comma_separated_as_in_the_plot_tool(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The plot tool takes --lead-time=-12,0; the run tool took only -12 0 and refused
    the commas as "not a whole number of hours". Both forms, and mixed, now; an empty
    item is still refused."""
    from argparse import Namespace

    from corrdiff_tools import requests
    from corrdiff_tools.errors import UsageError

    daily = sources.SourceSpec("file", Path("days.nc"))
    for typed in (["-12", "0", "11"], ["-12,0,11"], ["-12,0", "11"]):
        args = Namespace(model="cmip6", lead_time=typed, source="days.nc")
        assert requests._lead_times(args, daily, INITS) == [-12, 0, 11]
    forecast = sources.SourceSpec("gfs-forecast")
    args = Namespace(model="taiwan", lead_time=["0,6", "12"], source="gfs-forecast")
    assert requests._lead_times(args, forecast, [datetime(2024, 7, 24, 12)]) == [0, 6, 12]
    with pytest.raises(UsageError, match="lead time '' is not a whole number of hours"):
        requests._lead_times(Namespace(model="cmip6", lead_time=["0,"], source="x"), daily, INITS)
    # Typed with a space, argparse takes "-12,0" for an option: the line says how to write it.
    code = run_main(["2037-09-06T12:00", "--model", "cmip6", "--lead-time", "-12,0"])
    assert code == 2
    assert _one_line(capsys.readouterr().err).endswith(
        "argument --lead-time: expected at least one argument (a negative lead time reads "
        "as an option: write --lead-time=-12,0) (see run_corrdiff.py --help)"
    )


def test_cmip6_refuses_a_file_without_the_days_around_a_time(
    package: Path, input_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last time needs the day after it, which the file lacks: named before running."""
    output = tmp_path / "late.zarr"
    argv = _argv(package, input_file, output)
    code, err = _run(capsys, ["2037-09-08T12:00", *argv[2:]])
    assert code == 2
    assert _one_line(err).endswith(
        f"2037-09-09T12:00 is not in --source {input_file}: it holds 2037-09-05T12:00, "
        "2037-09-06T12:00, 2037-09-07T12:00, 2037-09-08T12:00"
    ), err
    assert not output.exists()


def test_the_cmip6_archive_needs_intake_esgf_and_taiwan_refuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the optional intake-esgf (not in requirements.txt), in one line."""
    import importlib.util

    if importlib.util.find_spec("intake_esgf") is not None:
        pytest.skip("intake-esgf is installed here")
    output = tmp_path / "x.zarr"
    code, err = _run(
        capsys, ["2037-09-06T12", "--model", "cmip6", "--source", "cmip6:ssp585:CanESM5:r1i1p2f1",
                 "--output", str(output)],
    )  # fmt: skip
    assert code == 2
    assert "needs the optional package intake-esgf, which is not installed: pip install " in (
        _one_line(err)
    )
    assert not output.exists()


def test_a_package_of_the_other_kind_is_refused_naming_the_option_to_use(
    package: Path, input_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generic = synthetic.build_generic_package(
        tmp_path / "generic", INPUTS, OUTPUTS, OUT_GRID, IN_GRID,
        metadata={"number_of_steps": 2, "sigma_max": 80.0},
    )  # fmt: skip
    output = tmp_path / "x.zarr"
    code, err = _run(capsys, _argv(generic, input_file, output))
    assert code == 2 and _one_line(err).endswith(
        f"--model cmip6 --model-package {generic} is not a CorrDiffCMIP6 package: it has no "
        "sza/hod statistics and no invariants.nc (a generic CorrDiff package runs with "
        "--model FOLDER)"
    ), err
    argv = _argv(package, input_file, output)
    at, leads = argv.index("--model"), argv.index("--lead-time")
    argv = [*argv[:at], "--model", str(package), *argv[at + 4 : leads], *argv[leads + 4 :]]
    code, err = _run(capsys, argv)
    assert code == 2 and _one_line(err).endswith(
        "is a CorrDiffCMIP6 package (its stats.json has the time features sza/hod): run it "
        f"with --model cmip6 --model-package {package}"
    ), err
    assert not output.exists()


def test_the_archive_is_refused_where_calendars_disagree_on_the_days_around(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """28 Feb to 1 Mar: a 360-day model's day before 1 March is not 28 February."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: object() if name == "intake_esgf" else real_find_spec(name, *a),
    )  # fmt: skip
    output = tmp_path / "x.zarr"
    for day in ("2037-02-28", "2040-02-29", "2037-03-01"):
        argv = _argv(package, "cmip6:ssp585:CanESM5:r1i1p2f1", output)
        code, err = _run(capsys, [f"{day}T12:00", *argv[2:]])
        assert code == 2 and "the days around it cross the end of February" in _one_line(err)
    assert not output.exists()
    # The day before is fine, and so is a file of the days meant.
    code, err = _run(capsys, ["2037-02-27T12:00", *argv[2:], "--model-package", "/nowhere"])
    assert "end of February" not in err


class _Archive:
    """Stands in for earth2studio's CMIP6 classes: records how they are built, and
    serves the daily file as ``CMIP6MultiRealm`` serves the archive (time, variable)."""

    built: list[dict[str, Any]] = []
    asked: list[Any] = []
    path: Path | None = None

    def __init__(self, **kwargs: Any) -> None:
        _Archive.built.append(kwargs)

    @classmethod
    def realm(cls, tables: list[_Archive]) -> _Archive:
        made = object.__new__(cls)
        made.tables = tables  # type: ignore[attr-defined]
        return made

    def __call__(self, time: Any, variable: Any) -> xr.DataArray:
        assert _Archive.path is not None
        _Archive.asked.extend(np.atleast_1d(time))
        wanted = [np.datetime64(t, "ns") for t in np.atleast_1d(time)]
        with xr.open_dataarray(_Archive.path) as array:
            return array.sel(time=wanted, variable=list(np.atleast_1d(variable))).load()


def _serve_archive(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """earth2studio's CMIP6 classes replaced by :class:`_Archive` serving ``path``, and
    ``intake-esgf`` reported installed: the run's own fetch goes through them."""
    import importlib.util

    from corrdiff_tools.imports import import_alone

    archive = import_alone("earth2studio.data.cmip6")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: object() if name == "intake_esgf" else real_find_spec(name, *a),
    )  # fmt: skip
    monkeypatch.setattr(archive, "CMIP6", _Archive)
    monkeypatch.setattr(archive, "CMIP6MultiRealm", _Archive.realm)
    monkeypatch.setattr(_Archive, "built", [])
    monkeypatch.setattr(_Archive, "asked", [])
    monkeypatch.setattr(_Archive, "path", path)


def test_the_cmip6_archive_is_built_as_earth2studio_documents_and_feeds_a_run(
    package: Path, input_file: Path, tmp_path: Path, made: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """``--source cmip6:EXPERIMENT:MODEL:VARIANT``: the three tables of earth2studio's
    example, exact time matching, and its fields by date and name through the real fetch
    (earth2studio's fetch_data): the same store as from the file."""
    _serve_archive(monkeypatch, input_file)
    output = tmp_path / "archive.zarr"
    code, err = _run(capsys, _argv(package, "cmip6:ssp585:CanESM5:r1i1p2f1", output, "--stats"))
    assert code == 0, err
    assert [kw["table_id"] for kw in _Archive.built] == ["day", "Eday", "SIday"]
    for kw in _Archive.built:
        assert (kw["experiment_id"], kw["source_id"], kw["variant_label"]) == (
            "ssp585", "CanESM5", "r1i1p2f1",
        )  # fmt: skip
        assert kw["exact_time_match"] is True
    # Each time's three days once, not once per lead time (3 leads here).
    asked = sorted(np.datetime64(t, "h") for t in _Archive.asked)
    days = [np.datetime64(init + timedelta(hours=h), "h") for init in INITS for h in (-24, 0, 24)]
    assert asked == sorted(days), asked
    ours, theirs = xr.open_zarr(output), xr.open_zarr(made)
    assert ours.attrs["input_source"] == "cmip6:ssp585:CanESM5:r1i1p2f1"
    for name in (*OUTPUTS, "lr_t2m", "lr_snc"):
        np.testing.assert_array_equal(ours[name].values, theirs[name].values)


@pytest.mark.slow
def test_cmip6_prefetch_writes_the_days_once_and_the_run_from_them_is_the_same_store(
    package: Path, input_file: Path, tmp_path: Path, made: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """--prefetch FILE with --source cmip6:...: each day the run reads, once, on the
    package's input grid, blanks kept blank; then --source FILE offline gives the store
    the archive gives, bit for bit."""
    _serve_archive(monkeypatch, input_file)
    fetched = tmp_path / "days.nc"
    argv = _argv(package, "cmip6:ssp585:CanESM5:r1i1p2f1", tmp_path / "unused.zarr")
    argv = [*argv[: argv.index("--output")], "--prefetch", str(fetched)]
    code, err = _run(capsys, argv)
    assert code == 0, err
    assert f"offline, pass --model cmip6 --model-package {package}" in err
    assert sorted(np.datetime64(t, "h") for t in _Archive.asked) == [
        np.datetime64(day, "h") for day in DAYS
    ]  # 4 days for 2 times, each once
    with xr.open_dataarray(fetched) as array:
        assert array.dims == ("time", "variable", "lat", "lon")
        assert list(array["variable"].values) == list(INPUTS)
        np.testing.assert_array_equal(array["lat"].values, IN_GRID[0])
        np.testing.assert_array_equal(array["lon"].values, IN_GRID[1])
        for index in range(len(DAYS)):
            for name in INPUTS:
                np.testing.assert_array_equal(
                    array.sel(variable=name).values[index], _day(index)[name].astype("float32")
                )
    output = tmp_path / "offline.zarr"
    code, err = _run(capsys, _argv(package, fetched, output, "--stats"))
    assert code == 0, err
    ours, theirs = xr.open_zarr(output), xr.open_zarr(made)
    for name in (*OUTPUTS, "lr_t2m", "lr_snc"):
        np.testing.assert_array_equal(ours[name].values, theirs[name].values)
    # Blank snow cover over sea stays blank in the file (and is refused nowhere).
    sea = _day(0)["t2m"] > 285.0
    blanks = _daily_file(tmp_path / "blanks.nc", {"snc": lambda v: np.where(sea, np.nan, v)})
    monkeypatch.setattr(_Archive, "path", blanks)
    argv = _argv(package, "cmip6:ssp585:CanESM5:r1i1p2f1", tmp_path / "unused.zarr")
    argv = [INITS[0].strftime("%Y-%m-%dT%H:%M"), *argv[2 : argv.index("--output")]]
    code, err = _run(capsys, [*argv, "--prefetch", str(tmp_path / "blank-days.nc")])
    assert code == 0, err
    with xr.open_dataarray(tmp_path / "blank-days.nc") as array:
        np.testing.assert_array_equal(np.isnan(array.sel(variable="snc").values[0]), sea)


def test_cmip6_plots_name_lead_times_before_the_day(made: Path, tmp_path: Path) -> None:
    outdir = tmp_path / "figures"
    argv = [str(made), "--plot-lowres", "--sample", "0", "--time", "1", "--lead-time", "-12",
            "--outdir", str(outdir), "--format", "png", "--dpi", "30"]  # fmt: skip
    assert plot_main(argv) == 0
    names = sorted(p.name for p in outdir.iterdir() if not p.name.startswith("."))
    stem = "corrdiff-2037-09-07T12-f-012"
    assert names == [f"{stem}-lowres.png", f"{stem}-sample-00.png"]


def test_cmip6_is_evaluated_at_its_valid_hours_against_a_truth_file(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hour 12 h before the day's time: truth taken at that valid time, the input
    interpolated round the globe (no missing pixels left out of the spectra), and the
    scores those of the store's arrays."""
    from corrdiff_tools import diagnostics

    dataset = xr.open_zarr(made)
    valid = np.datetime64(INITS[0] - timedelta(hours=12), "ns")
    rng = np.random.default_rng(4)
    t2m = dataset["t2m"].values[0, 0, 0].astype("float64") + rng.normal(0.0, 0.5, (25, 64))
    truth_path = tmp_path / "era5.nc"
    xr.Dataset(
        {"t2m": (("time", "lat", "lon"), np.clip(t2m, 200.0, 330.0)[None], {"units": "K"})},
        coords={"time": [valid], "lat": OUT_GRID[0], "lon": OUT_GRID[1]},
    ).to_netcdf(truth_path)
    out = tmp_path / "evaluation"
    capsys.readouterr()
    argv = [str(made), "--sample", "none", "--time", "0", "--lead-time", "-12", "--spectra",
            "--truth", str(truth_path), "--format", "png", "--dpi", "30", "--jobs", "1",
            "--outdir", str(out)]  # fmt: skip
    code = plot_main(argv)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "missing pixels" not in err
    assert (out / "corrdiff-2037-09-06T12-f-012-spectra.png").is_file()
    rows = json.loads((out / "scores.json").read_text())["scores"]
    row = next(r for r in rows if r["variable"] == "t2m")
    assert row["valid_time"] == "2037-09-06T00:00"
    reference = xr.open_dataset(truth_path)["t2m"].values[0].astype("float64")
    lowres = truth.interpolate_lowres(
        dataset["lr_t2m"].values[0, 0] - 273.15, IN_GRID[0], IN_GRID[1],
        dataset["lat"].values.astype("float64"), dataset["lon"].values.astype("float64"),
    )  # fmt: skip
    assert np.isfinite(lowres).all()
    expected = diagnostics.score(
        reference - 273.15,
        dataset["t2m"].values[0, 0].astype("float64") - 273.15,
        dataset["t2m_regression"].values[0, 0].astype("float64") - 273.15,
        lowres,
    )
    assert row["crps"] == pytest.approx(expected.crps, rel=1e-9) and row["crps"] > 0
    assert row["mae_interpolated"] == pytest.approx(expected.mae_interpolated)


def test_negative_lead_times_in_names_and_titles(made: Path) -> None:
    """Signed where negative; Taiwan's forecasts' names and titles as they were."""
    dataset = xr.open_zarr(made)
    assert render.stem(dataset, 0, 0) == "corrdiff-2037-09-06T12-f-012"
    assert render.stem(dataset, 0, 1) == "corrdiff-2037-09-06T12-f000"
    assert render.stem(dataset, 1, 2) == "corrdiff-2037-09-07T12-f011"
    assert times.title_time(datetime(2037, 9, 6), -12) == "valid 2037-09-06 00:00 UTC (-12 h)"
    assert times.title_time(datetime(2024, 7, 24, 18), 6) == "valid 2024-07-24 18:00 UTC (+6 h)"
    assert times.title_time(datetime(2024, 7, 24, 12), 0) == "valid 2024-07-24 12:00 UTC (+0 h)"
    task = render.Task("lowres", 0, 0, None, Path("lowres.png"))
    assert render._input_title(dataset, task, "valid X") == (
        "daily fields of 2037-09-06 12:00 UTC, for the hour valid X"
    )


def test_the_interpolated_input_wraps_round_a_global_grid() -> None:
    """Between the last longitude and 360: between the last column and the first."""
    lat = np.array([-10.0, 10.0])
    lon = np.arange(16) * 22.5
    values = np.tile(np.arange(16, dtype="float64"), (2, 1))
    points = np.array([[348.75, 11.25, -11.25, 371.25]])  # any longitude convention
    at = truth.interpolate_lowres(values, lat, lon, np.zeros((1, 4)), points)
    np.testing.assert_allclose(at, [[7.5, 0.5, 7.5, 0.5]])  # halfway 15..0, and 0..1
    # A regional box does not wrap: outside it is missing.
    regional = truth.interpolate_lowres(
        values[:, :8], lat, lon[:8], np.array([[0.0]]), np.array([[170.0]])
    )
    assert np.isnan(regional).all()


def test_global_maps_label_every_meridian_in_degrees_east_and_west() -> None:
    from corrdiff_tools import plotting

    frame = plotting.frame_for(np.array([0.0, 354.375]), taiwan=False)
    xlocs, _ = plotting._gridline_locations((0.0, 354.375, -90.0, 90.0), frame)
    assert all(-180.0 <= x < 180.0 for x in xlocs)
    assert {-150.0, -30.0, 0.0, 150.0} <= set(xlocs)


@pytest.mark.slow
def test_two_torchrun_ranks_write_what_one_process_writes_for_cmip6(
    made: Path, package: Path, input_file: Path, tmp_path: Path
) -> None:
    """Rank 0 reads the three days of each time and sends them on: the same store as one
    process, to float32 rounding (batches of one against one batch of two)."""
    output = tmp_path / "ranks.zarr"
    argv = _argv(package, input_file, output, "--stats")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", str(ROOT / "run_corrdiff.py"), *argv]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    ranks, single = xr.open_zarr(output), xr.open_zarr(made)
    assert ranks["completed"].values.all()
    for name in (*OUTPUTS, *(f"{v}_regression" for v in OUTPUTS), "lr_siconc", "t2m_ensemble_mean"):
        np.testing.assert_allclose(ranks[name].values, single[name].values, rtol=0, atol=1e-2)
