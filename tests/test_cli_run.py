"""run_corrdiff.py end to end through run_main, on real Zarr in tmp_path."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import FileForecast, load_inputs

import corrdiff_tools
from corrdiff_tools import store
from corrdiff_tools.cli import run_main
from corrdiff_tools.store import INPUT_VARIABLES, LR_LAT, LR_LON, OUTPUT_VARIABLES, StoreWriter

ROOT = Path(__file__).resolve().parents[1]
Run = Callable[..., tuple[int, str]]


def open_store(path: Path) -> xr.Dataset:
    return xr.open_zarr(path).load()


def test_one_time_writes_a_complete_cf_store(
    run_tool: Run, tmp_path: Path, input_file: Path
) -> None:
    code, err = run_tool("2024-07-24T12:00", "--samples", "3", "--steps", "2", "--batch-size", "2")
    assert code == 0, err
    path = tmp_path / "outputs" / "corrdiff-2024-07-24T12.zarr"
    assert "wrote outputs/corrdiff-2024-07-24T12.zarr" in err
    # The summary's parts add up to its total, start-up and the rest accounted.
    summary = re.search(
        r"done: 3 sample\(s\) for 1 time\(s\) in ([\d.]+) s since start: start-up ([\d.]+) s "
        r"\(of which importing earth2studio ([\d.]+) s\), model load ([\d.]+) s, waiting for "
        r"inputs ([\d.]+) s, inference ([\d.]+) s, write ([\d.]+) s, other ([\d.]+) s;",
        err,
    )
    assert summary is not None, err
    total, startup, imports, *rest = (float(value) for value in summary.groups())
    assert abs(startup + sum(rest) - total) <= 0.35  # eight figures rounded to 0.1 s
    assert 0 <= imports <= startup and rest[2] > 0  # inference
    assert "importing earth2studio and physicsnemo ..." in err
    ds = open_store(path)

    for name in OUTPUT_VARIABLES:
        assert ds[name].dims == ("time", "sample", "y", "x")
        assert ds[name].shape == (1, 3, 448, 448)
        assert ds[name].dtype == np.float32
        assert np.isfinite(ds[name].values).all()
        assert ds[name].attrs["units"] == store.VARIABLE_ATTRS[name]["units"]
        assert ds[name].attrs["standard_name"] == store.VARIABLE_ATTRS[name]["standard_name"]
    assert ds["t2m"].attrs["units"] == "K" and ds["mrr"].attrs["units"] == "dBZ"
    assert 250 < float(ds["t2m"].mean()) < 350
    # Samples differ: this is an ensemble, not one field repeated.
    assert float(np.abs(ds["t2m"][0, 0] - ds["t2m"][0, 1]).mean()) > 0.005

    assert set(ds.coords) >= {"time", "sample", "lat", "lon", "lat_lr", "lon_lr"}
    assert ds["lat"].dims == ("y", "x") and ds["lat"].attrs["units"] == "degrees_north"
    assert ds["lon"].attrs["units"] == "degrees_east"
    assert ds["sample"].attrs["standard_name"] == "realization"
    assert ds["time"].values[0] == np.datetime64("2024-07-24T12:00")
    assert ds["completed"].values.tolist() == [[1, 1, 1]]

    attrs = ds.attrs
    assert attrs["Conventions"] == "CF-1.10"
    assert attrs["history"].endswith(
        "--device cpu 2024-07-24T12:00 --samples 3 --steps 2 --batch-size 2"
    )
    assert " run_corrdiff.py --source " in attrs["history"]
    for key in ("earth2studio_version", "physicsnemo_version", "torch_version"):
        assert attrs[key] and attrs[key] != "unknown"
    assert attrs["seed"] == 0 and attrs["steps"] == 2 and attrs["solver"] == "euler"
    assert attrs["sampler"] == "deterministic" and attrs["sampler_preset"] == "custom"
    assert attrs["network_calls_per_sample"] == 2
    assert (attrs["sigma_min"], attrs["sigma_max"], attrs["rho"]) == (0.002, 80.0, 7.0)
    assert (attrs["S_churn"], attrs["S_min"], attrs["S_max"], attrs["S_noise"]) == (
        0.0, 0.0, "inf", 1.0,
    )  # fmt: skip
    assert attrs["geometry"].startswith("trained: 448x448 window at pixel (0, 0)")
    settings = json.loads(attrs[store.SETTINGS_ATTR])
    assert settings["geometry"] == attrs["geometry"]
    assert settings["sampler"] == {
        "sampler": "deterministic", "steps": 2, "solver": "euler", "sigma_min": 0.002,
        "sigma_max": 80.0, "rho": 7.0, "s_churn": 0.0, "s_min": 0.0, "s_max": "inf",
        "s_noise": 1.0,
    }  # fmt: skip
    assert attrs["input_source"] == str(input_file) and attrs["device"].startswith("CPU")
    assert "institution" not in attrs  # only the user knows where they ran it
    assert attrs["source"].endswith(f"run with corrdiff-tools {corrdiff_tools.__version__}")
    assert json.loads(attrs[store.SETTINGS_ATTR])["samples"] == 3

    # The inputs actually fed to the model are stored, equal to the file's values.
    source = load_inputs(input_file).sel(time="2024-07-24T12:00", lat=LR_LAT, lon=LR_LON)
    for name in INPUT_VARIABLES:
        np.testing.assert_array_equal(ds[f"lr_{name}"].values[0], source.sel(variable=name).values)
    np.testing.assert_array_equal(ds["lr_refc"].values[0], source.sel(variable="refc").values)
    assert ds["lr_t2m"].attrs["units"] == "K"


def test_provenance_names_relative_paths_absolutely(
    package_dir: Path, input_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    shutil.copy(input_file, tmp_path / "in.nc")
    shutil.copytree(package_dir, tmp_path / "pkg")
    monkeypatch.chdir(tmp_path)
    args = ["2024-07-24T12", "--samples", "1", "--steps", "2", "--source", "in.nc",
            "--model-package", "pkg", "--device", "cpu", "--output", "r.zarr", "-q"]  # fmt: skip
    assert run_main(args) == 0
    attrs = xr.open_zarr(tmp_path / "r.zarr").attrs
    assert attrs["input_source"] == str(tmp_path.resolve() / "in.nc")
    assert attrs["model_package"] == str(tmp_path.resolve() / "pkg")


def test_several_times_from_a_range_share_one_store(run_tool: Run, tmp_path: Path) -> None:
    code, err = run_tool("2024-07-24T00/2024-07-24T12/12h", "--samples", "1", "--steps", "2")
    assert code == 0, err
    ds = open_store(tmp_path / "outputs" / "corrdiff-2024-07-24T00_2024-07-24T12.zarr")
    assert ds["t2m"].shape == (2, 1, 448, 448)
    assert ds["completed"].values.all()
    assert "for 2 time(s)" in err
    # Different inputs at different times give different fields.
    assert not np.allclose(ds["t2m"][0, 0], ds["t2m"][1, 0])


def test_same_seed_gives_identical_bytes(run_tool: Run, tmp_path: Path) -> None:
    for name in ("a.zarr", "b.zarr"):
        code, err = run_tool("2024-07-24T06", "--samples", "2", "--steps", "2", "--output", name)
        assert code == 0, err
    for variable in OUTPUT_VARIABLES:
        chunks_a = sorted((tmp_path / "a.zarr" / variable / "c").rglob("*"))
        assert len([c for c in chunks_a if c.is_file()]) == 2
        for chunk in chunks_a:
            if chunk.is_file():
                twin = tmp_path / "b.zarr" / chunk.relative_to(tmp_path / "a.zarr")
                assert chunk.read_bytes() == twin.read_bytes()


#: The default sampler, and the stochastic one with churn noise drawn at every step (3 steps
#: from sigma 80: with 2 Heun steps from 800 a random net's residual is O(1e3), and float32
#: rounding of batched convolutions then shows).
SAMPLERS = {
    "blog": ("--steps", "2"),
    "stochastic-churn": (
        *("--sampler", "stochastic", "--s-churn", "0.5", "--steps", "3", "--sigma-max", "80"),
    ),
}
#: The blog's sampler in the quick default run, the stochastic one in CI's slow step too.
SAMPLER_CASES = [pytest.param("blog"), pytest.param("stochastic-churn", marks=pytest.mark.slow)]


@pytest.mark.slow  # per-sample noise and batch independence: test_downscale, quickly
@pytest.mark.parametrize("sampler", SAMPLER_CASES)
def test_other_seed_other_ensemble_and_batch_size_does_not_matter(
    run_tool: Run, tmp_path: Path, sampler: str
) -> None:
    args = ("2024-07-24T06", "--samples", "3", *SAMPLERS[sampler])
    assert run_tool(*args, "--batch-size", "1", "--output", "one.zarr")[0] == 0
    assert run_tool(*args, "--batch-size", "3", "--output", "all.zarr")[0] == 0
    assert run_tool(*args, "--seed", "7", "--output", "seven.zarr")[0] == 0
    one, together, seven = (
        open_store(tmp_path / n) for n in ("one.zarr", "all.zarr", "seven.zarr")
    )
    for name in OUTPUT_VARIABLES:
        # Batched convolutions round differently; a noise mix-up would differ by O(1).
        np.testing.assert_allclose(one[name].values, together[name].values, rtol=1e-4, atol=1e-3)
    assert not np.allclose(one["t2m"].values, seven["t2m"].values)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", SAMPLER_CASES)
def test_sample_noise_does_not_depend_on_the_other_times(
    run_tool: Run, tmp_path: Path, sampler: str
) -> None:
    args = ("--samples", "2", *SAMPLERS[sampler])
    assert run_tool("2024-07-24T06", *args, "--output", "alone.zarr")[0] == 0
    code, _ = run_tool("2024-07-24T00/2024-07-24T12", *args, "--output", "many.zarr")
    assert code == 0
    alone = open_store(tmp_path / "alone.zarr")
    many = open_store(tmp_path / "many.zarr").sel(time=["2024-07-24T06"])
    for name in OUTPUT_VARIABLES:
        np.testing.assert_allclose(alone[name].values, many[name].values, rtol=1e-5, atol=1e-4)


def test_existing_store_is_never_touched_without_a_flag(run_tool: Run, tmp_path: Path) -> None:
    args = ("2024-07-24T12", "--samples", "1", "--steps", "2", "--output", "keep.zarr")
    assert run_tool(*args)[0] == 0
    before = {p: p.read_bytes() for p in (tmp_path / "keep.zarr").rglob("*") if p.is_file()}
    code, err = run_tool(*args)
    assert code == 2
    assert "already exists: pass --resume to complete it, --overwrite to replace it" in err
    assert len(err.strip().splitlines()) == 1
    after = {p: p.read_bytes() for p in (tmp_path / "keep.zarr").rglob("*") if p.is_file()}
    assert after == before


def test_overwrite_replaces_and_refuses_foreign_directories(run_tool: Run, tmp_path: Path) -> None:
    args = ("2024-07-24T12", "--samples", "1", "--steps", "2")
    assert run_tool(*args, "--output", "x.zarr")[0] == 0
    assert run_tool(*args, "--seed", "5", "--output", "x.zarr", "--overwrite")[0] == 0
    assert open_store(tmp_path / "x.zarr").attrs["seed"] == 5

    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("do not delete")
    code, err = run_tool(*args, "--output", str(precious), "--overwrite")
    assert code == 2 and "is not a corrdiff-tools store; refusing to touch it" in err
    assert (precious / "chapter1.tex").read_text() == "do not delete"


@pytest.mark.slow  # resume after a failure, quickly: test_reliability's disk-full and OOM runs
@pytest.mark.parametrize("sampler", SAMPLER_CASES)
def test_resume_after_interruption_equals_an_uninterrupted_run(
    run_tool: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sampler: str
) -> None:
    args = (
        "2024-07-24T00/2024-07-24T06",
        *("--samples", "3", "--batch-size", "2", *SAMPLERS[sampler]),
    )
    assert run_tool(*args, "--output", "whole.zarr")[0] == 0

    original = StoreWriter.write_samples
    calls = []

    def interrupted(self: StoreWriter, *a: object, **k: object) -> None:
        calls.append(1)
        if len(calls) == 3:  # the third batch: time 1, samples 0 and 1
            raise KeyboardInterrupt
        original(self, *a, **k)

    monkeypatch.setattr(StoreWriter, "write_samples", interrupted)
    code, err = run_tool(*args, "--output", "part.zarr")
    assert code == 130 and "interrupted" in err
    monkeypatch.setattr(StoreWriter, "write_samples", original)
    partial = open_store(tmp_path / "part.zarr")
    assert partial["completed"].values.tolist() == [[1, 1, 1], [0, 0, 0]]
    assert np.isnan(partial["t2m"].values[1]).all()  # unwritten pieces read as missing

    code, err = run_tool(*args, "--output", "part.zarr", "--resume")
    assert code == 0, err
    assert "3 sample(s) left to compute" in err
    whole, resumed = open_store(tmp_path / "whole.zarr"), open_store(tmp_path / "part.zarr")
    for name in [*OUTPUT_VARIABLES, "completed", "lr_t2m"]:
        xr.testing.assert_identical(whole[name], resumed[name])

    code, err = run_tool(*args, "--output", "part.zarr", "--resume")
    assert code == 0 and "nothing to do" in err


def test_resume_refuses_other_settings(run_tool: Run, tmp_path: Path) -> None:
    assert run_tool("2024-07-24T12", "--steps", "2", "--output", "r.zarr")[0] == 0
    code, err = run_tool(
        "2024-07-24T12", "--steps", "2", "--seed", "3", "--output", "r.zarr", "--resume"
    )
    assert code == 2
    assert (
        "--resume: r.zarr was made with other settings (seed: store has 0, this run asks for 3)"
        in err
    )
    code, err = run_tool("2024-07-24T12", "--preset", "paper", "--output", "r.zarr", "--resume")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "sampler: store has {'sampler': 'deterministic', 'steps': 2," in err
    assert "this run asks for {'sampler': 'stochastic', 'steps': 18," in err


def test_model_zip_is_extracted_once_and_never_beside_it(
    run_tool: Run, package_dir: Path, tmp_path: Path
) -> None:
    listing = sorted(p.name for p in package_dir.iterdir())
    assert listing == ["corrdiff_inference_package.zip"]
    assert run_tool("2024-07-24T12", "--steps", "2", "--output", "a.zarr")[0] == 0
    code, err = run_tool("2024-07-24T12", "--steps", "2", "--output", "b.zarr", "-v")
    assert code == 0
    assert "extracting" not in err and "already extracted" in err
    assert sorted(p.name for p in package_dir.iterdir()) == listing


BAD_INPUTS = [
    (["2024-07-24T13:00"], "2024-07-24T13:00 is not a GFS analysis time: use 00, 06, 12 or 18 UTC"),
    (["2024-07-24"], "is not an ISO 8601 UTC time"),
    (["2020-06-01T00"], "before the GFS archive starts"),
    (["2099-01-01T00"], "is in the future"),
    (["2024-07-24T12", "--samples", "0"], "--samples must be at least 1, got 0"),
    (["2024-07-24T12", "--samples", "four"], "--samples must be a whole number, got 'four'"),
    (["2024-07-24T12", "--seed", "-1"], "--seed must be at least 0"),
    (["2024-07-24T12", "--steps", "1"], "--steps must be at least 2"),
    (["2024-07-24T12", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["2024-07-24T12", "--solver", "rk4"], "invalid choice: 'rk4'"),
    (
        ["2024-07-24T12", "--source", "ecmwf"],
        "neither a known source (gfs, gfs-forecast, era5, cmip6:EXPERIMENT:MODEL:VARIANT)",
    ),
    (["2024-07-24T12", "--lead-time", "6"], "--lead-time needs --source gfs-forecast"),
    (["2024-07-24T12", "--source", "gfs-forecast", "--lead-time", "121"], "3-hourly"),
    (["2024-07-24T12", "--device", "cuda"], "no CUDA or ROCm GPU is visible"),
    (["2024-07-24T12", "--device", "tpu"], "--device 'tpu' is not a device"),
    (
        ["2024-07-24T12", "--model-package", "/nonexistent/pkg"],
        "--model-package /nonexistent/pkg does not exist",
    ),
    (["2024-07-24T12", "--overwrite", "--resume"], "not allowed with argument"),
    (["2024-07-24T12", "--output", "/proc/forbidden.zarr"], "cannot write in /proc"),
    (["2024-07-24T12", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "no TIME given: name at least one"),
    (
        ["1700-01-01T00/2200-12-31T00/1h"],
        "holds 4,391,641 times, more than 87,660: split it into several runs",
    ),
    (
        ["2024-07-24T12", "--preset", "blog", "--sampler", "stochastic"],
        "--preset blog uses the deterministic sampler, not --sampler stochastic: drop one",
    ),
    (
        ["2024-07-24T12", "--preset", "paper", "--solver", "euler"],
        "--solver euler: the stochastic sampler is always second order (heun)",
    ),
    (["2024-07-24T12", "--sigma-min", "0"], "need 0 < sigma_min < sigma_max < inf"),
    (["2024-07-24T12", "--sigma-min", "90"], "--sigma-min 90 / --sigma-max 80: need 0 <"),
    (["2024-07-24T12", "--sigma-max", "inf"], "--sigma-max inf: must be a finite number"),
    (["2024-07-24T12", "--rho", "-1"], "--rho -1: use 1 to 100 (published: 7)"),
    (["2024-07-24T12", "--s-churn", "-0.5"], "--s-churn -0.5: must be 0 or more"),
    # Settings argparse accepts that cannot give a finite, physical ensemble.
    (["2024-07-24T12", "--rho", "inf"], "--rho inf: must be a finite number"),
    (["2024-07-24T12", "--rho", "0.5"], "--rho 0.5: use 1 to 100"),
    (["2024-07-24T12", "--s-churn", "inf"], "--s-churn inf: must be a finite number"),
    (
        ["2024-07-24T12", "--preset", "paper", "--s-churn", "1000"],
        "--s-churn 1000: EDM caps the churn per step at sqrt(2) - 1, so at most 7.455 for 18",
    ),
    (["2024-07-24T12", "--sigma-min", "1e-300"], "keep both within 0.0001 to 10000"),
    (["2024-07-24T12", "--sigma-max", "1e30"], "keep both within 0.0001 to 10000"),
    (["2024-07-24T12", "--s-noise", "1e10"], "--s-noise 1e+10: use 0 to 2"),
    (["2024-07-24T12", "--s-min", "inf"], "--s-min inf: must be a finite number"),
    # Names the filesystem cannot hold: the store's own name fits (255 bytes), the staging
    # directory beside it would not; refused before the model loads, not after.
    (
        ["2024-07-24T12", "--output", "o" * 250 + ".zarr"],
        "bytes, more than the 255 this filesystem holds (with what the tool adds to it)",
    ),
    (
        ["2024-07-24T12", "--output", "o" * 300 + ".zarr"],
        "(305 characters): the system cannot look this path up (File name too long)",
    ),
    (
        ["2024-07-24T12", "--source", "s" * 300 + ".nc"],
        "--source sssssssssssssssssssssssssss",
    ),
    (["2024-07-24T12", "--model-package", "m" * 300], "the system cannot look this path up"),
    (["2300-01-01T00"], "outside 1678 to 2261"),
    (["2024-07-24T12", "--source", "gfs-forecast", "--lead-time", "-6"], "without a sign"),
    # Seconds are refused, not silently dropped from what a message prints.
    (["2024-07-24T12:00:30"], "'2024-07-24T12:00:30' has seconds: times are whole minutes"),
    # No abbreviations: --model once meant --model-package (it is an option of its own now,
    # which is why), and new options would shift what an abbreviation means.
    (["2024-07-24T12", "--model-pack", "/x"], "unrecognized arguments: --model-pack /x"),
    (["2024-07-24T12", "--sample", "2"], "unrecognized arguments: --sample 2"),
    # A repeated option with another value is a mistake, not "the last one wins".
    (
        ["2024-07-24T12", "--samples", "4", "--samples", "8"],
        "--samples given twice (4, then 8): give it once",
    ),
    (
        ["2024-07-24T12", "--source", "gfs-forecast", "--lead-time", "0", "--lead-time", "6"],
        "--lead-time given twice (0, then 6): give it once",
    ),
    (["2024-07-24T12", "--s-noise", "nan"], "--s-noise must be a number, got 'nan'"),
    (["2024-07-24T12", "--s-min", "5", "--s-max", "1"], "need 0 <= S_min <= S_max"),
    (["2024-07-24T12", "--sampler", "ddim"], "invalid choice: 'ddim'"),
]


@pytest.mark.parametrize(
    ("argv", "message"), BAD_INPUTS, ids=[" ".join(a) or "none" for a, _ in BAD_INPUTS]
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    argv: list[str],
    message: str,
    package_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    if "--model-package" not in argv:
        argv = [*argv, "--model-package", str(package_dir)]
    code = run_main(argv)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("run_corrdiff.py: error: ")
    assert message in lines[0]
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []


FILE_PROBLEMS = [
    ("2024-07-25T00", "2024-07-25T00:00 is not in --source"),
    ("2024-07-24T03", "2024-07-24T03:00 is not in --source"),
]


@pytest.mark.parametrize(("time_arg", "message"), FILE_PROBLEMS)
def test_file_source_time_must_be_in_the_file(
    run_tool: Run, tmp_path: Path, time_arg: str, message: str
) -> None:
    code, err = run_tool(time_arg)
    assert code == 2 and message in err and "it holds 2024-07-24T00:00" in err
    assert not (tmp_path / "outputs").exists()


def test_file_source_must_hold_every_input(run_tool: Run, tmp_path: Path, input_file: Path) -> None:
    load_inputs(input_file).drop_sel(variable=["tcwv"]).to_netcdf(tmp_path / "short.nc")
    code, err = run_tool("2024-07-24T12", "--source", str(tmp_path / "short.nc"))
    assert code == 2 and "lacks the input variable(s) tcwv" in err


def test_file_source_must_cover_the_input_grid(
    run_tool: Run, tmp_path: Path, input_file: Path
) -> None:
    load_inputs(input_file).sel(lon=slice(118, 130)).to_netcdf(tmp_path / "east.nc")
    code, err = run_tool("2024-07-24T12", "--source", str(tmp_path / "east.nc"))
    assert code == 2 and "does not contain the model's 0.25 degree input grid" in err


def test_nan_input_is_refused_naming_variable_and_time(
    run_tool: Run, tmp_path: Path, input_file: Path
) -> None:
    array = load_inputs(input_file).load()
    array.loc[{"variable": "z500", "time": "2024-07-24T12:00"}] = np.nan
    array.to_netcdf(tmp_path / "holes.nc")
    code, err = run_tool("2024-07-24T12", "--source", str(tmp_path / "holes.nc"), "--steps", "2")
    assert code == 2  # found by validation, before anything loads
    assert err.strip().splitlines() == [
        f"run_corrdiff.py: error: input z500 at 2024-07-24T12:00 in --source {tmp_path}/holes.nc "
        "has 1440 NaN/inf value(s) of 1440 on the model's input grid: fill the gaps or pick "
        "another time"
    ]
    assert not (tmp_path / "outputs").exists()


def test_network_failure_is_one_line_with_the_offline_options(
    run_tool: Run, tmp_path: Path
) -> None:

    class Unreachable:
        def __call__(self, time: object, variable: object) -> None:
            raise OSError("Temporary failure in name resolution: noaa-gfs-bdp-pds.s3.amazonaws.com")

    code, err = run_tool(
        "2024-07-24T12", "--source", "gfs", build_source=lambda spec, times: Unreachable()
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[-1].startswith(
        "run_corrdiff.py: error: could not reach gfs for the inputs at 2024-07-24T12:00 "
        "(DNS lookup failed)"
    )
    assert "--source FILE" in lines[-1] and "--model-package DIR" in lines[-1]
    assert "see the README's 'Offline and HPC use'" in lines[-1]
    assert not (tmp_path / "outputs").exists()


def test_prefetch_writes_a_file_the_run_can_use(
    run_tool: Run,
    tmp_path: Path,
    input_file: Path,
) -> None:
    from corrdiff_tools import sources

    # The GFS seam, fed from the local file: the real prefetch path runs offline.
    def from_file(spec: object, times: list[datetime]) -> object:
        return sources.build_source(sources.SourceSpec("file", input_file), times)

    code, err = run_tool(
        "2024-07-24T00/2024-07-24T06",
        "--source",
        "gfs",
        "--prefetch",
        "pre.nc",
        build_source=from_file,
    )
    assert code == 0, err
    fetched = load_inputs(tmp_path / "pre.nc")
    assert fetched.dims == ("time", "variable", "lat", "lon")
    assert list(fetched["variable"].values) == [*INPUT_VARIABLES, "refc"]
    assert fetched.sizes == {"time": 2, "variable": 13, "lat": 36, "lon": 40}
    code, err = run_tool(
        "2024-07-24T06",
        "--source",
        "pre.nc",
        "--steps",
        "2",
    )
    assert code == 0, err
    ds = open_store(tmp_path / "outputs" / "corrdiff-2024-07-24T06.zarr")
    original = load_inputs(input_file).sel(time="2024-07-24T06", lat=LR_LAT, lon=LR_LON)
    np.testing.assert_array_equal(ds["lr_u850"].values[0], original.sel(variable="u850").values)

    code, err = run_tool(
        "2024-07-24T06", "--source", "gfs", "--prefetch", "pre.nc", build_source=from_file
    )
    assert code == 2 and "--prefetch pre.nc already exists" in err


@pytest.mark.parametrize(
    ("extra", "flag"),
    [(("--output", "o.zarr"), "--output"), (("--resume",), "--resume"),
     (("--overwrite",), "--overwrite"), (("--stats",), "--stats")],
)  # fmt: skip
def test_prefetch_refuses_the_options_of_a_store_in_one_line(
    run_tool: Run, tmp_path: Path, extra: tuple[str, ...], flag: str
) -> None:
    """--prefetch writes the inputs file and stops: store options were silently ignored."""
    code, err = run_tool("2024-07-24T06", "--source", "gfs", "--prefetch", "pre.nc", *extra)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"writes no store, so {flag} does not apply: drop it" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); from corrdiff_tools.cli import run_main\n"
        "try:\n    run_main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "heavy = [m for m in ('torch', 'earth2studio', 'matplotlib', 'xarray') if m in sys.modules]\n"
        "print(heavy, time.perf_counter() - t)"
    )
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    elapsed = time.perf_counter() - start
    heavy, _ = result.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert heavy == "[]"
    assert "examples:" in result.stdout and "--samples" in result.stdout
    heavy_free_seconds = float(result.stdout.strip().splitlines()[-1].rsplit(" ", 1)[1])
    assert heavy_free_seconds < 1.0  # import + parse + print help, in-process
    assert elapsed < 10  # the whole interpreter, with slack for a loaded CI machine


def test_script_entry_point_and_version() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "run_corrdiff.py"), "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout.strip() == "run_corrdiff.py 0.1.0"


@pytest.mark.parametrize("module", ["torch", "xarray"])
def test_a_python_without_the_requirements_is_told_which_to_use(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As with the blog's `python3 run_corrdiff.py ...` outside the environment.
    from corrdiff_tools.cli import plot_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now fails
    if module == "torch":
        code = run_main(["2024-07-24T12:00", "--samples", "1"])
    else:
        (tmp_path / "s.zarr").mkdir()
        code = plot_main([str(tmp_path / "s.zarr")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1, lines
    assert f"this Python ({sys.executable}) has no '{module}'" in lines[0]
    assert ".venv/bin/pip install -c constraints.txt -r requirements.txt" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if module == "torch" else ["s.zarr"])


def test_forecast_source_adds_a_lead_time_axis(
    run_tool: Run,
    tmp_path: Path,
    input_file: Path,
) -> None:
    code, err = run_tool(
        "2024-07-24T06",
        "--source",
        "gfs-forecast",
        "--lead-time",
        "6",
        "0",
        "--samples",
        "2",
        "--steps",
        "2",
        build_source=lambda spec, times: FileForecast(input_file),
    )
    assert code == 0, err
    ds = open_store(tmp_path / "outputs" / "corrdiff-2024-07-24T06-forecast.zarr")
    assert ds["t2m"].dims == ("time", "lead_time", "sample", "y", "x")
    assert ds["t2m"].shape == (1, 2, 2, 448, 448)
    assert ds["lead_time"].values.astype("timedelta64[h]").astype(int).tolist() == [0, 6]
    assert ds["completed"].values.all() and np.isfinite(ds["t2m"].values).all()
    analysis = load_inputs(input_file).sel(lat=LR_LAT, lon=LR_LON, variable="t2m")
    np.testing.assert_array_equal(
        ds["lr_t2m"].values[0, 1], analysis.sel(time="2024-07-24T12").values
    )
    np.testing.assert_array_equal(
        ds["lr_t2m"].values[0, 0], analysis.sel(time="2024-07-24T06").values
    )
    assert not np.allclose(ds["t2m"].values[0, 0], ds["t2m"].values[0, 1])
    assert json.loads(ds.attrs[store.SETTINGS_ATTR])["lead_times"] == [0, 6]


def test_quiet_run_prints_nothing_and_verbose_says_more(run_tool: Run) -> None:
    code, err = run_tool("2024-07-24T12", "--steps", "2", "-q", "--output", "q.zarr")
    assert code == 0 and err == ""
    code, err = run_tool("2024-07-24T12", "--steps", "2", "-v", "--output", "v.zarr")
    assert code == 0
    assert (
        "device: CPU" in err
        and "model loaded in" in err
        and "model package already extracted" in err
    )
    assert "start-up " in err and " load " in err and " inference " in err and " write " in err


def test_a_library_that_cannot_be_loaded_is_one_line(
    run_tool: Callable[..., tuple[int, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a memory limit torch's shared library does not map: "unexpected ImportError"."""
    from corrdiff_tools import model

    def cannot_map(*args: object) -> None:
        raise ImportError("libtorch_cpu.so: failed to map segment from shared object", name="torch")

    monkeypatch.setattr(model, "import_model_stack", cannot_map)
    code, err = run_tool("2024-07-24T12", "--steps", "2", "--output", "o.zarr")
    assert code == 1
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            "run_corrdiff.py: error: could not load torch into memory (libtorch_cpu.so: failed to "
            "map segment from shared object): the process may run under a memory limit"
        )
    )


def test_a_path_in_a_loop_of_links_is_one_line(
    run_tool: Callable[..., tuple[int, str]], tmp_path: Path
) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    code, err = run_tool("2024-07-24T12", "--output", "a")
    assert code == 2
    assert err.strip().splitlines() == [
        "run_corrdiff.py: error: --output a: the system cannot look this path up (a loop of "
        "symbolic links); choose a shorter or simpler one"
    ]
