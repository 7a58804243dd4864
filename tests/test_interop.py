"""Clients nobody here wrote open our store: earth2studio's ZarrBackend, CF checkers.

Stores are built with the store contract itself (no model run), with distinct values per
(time, [lead,] sample), so a client that reads the wrong piece fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from corrdiff_tools import store

TIMES = [datetime(2024, 7, 24, 0), datetime(2024, 7, 24, 6)]


def filled_store(path: Path, lead_times: list[int] | None = None) -> Path:
    """A store whose field at (time t, lead l, sample s) is 280 + 10 t + 3 l + s everywhere."""
    lat, lon = np.meshgrid(np.linspace(20, 27, 448), np.linspace(117, 125, 448), indexing="ij")
    layout = store.StoreLayout(
        times=TIMES,
        samples=3,
        lat=lat,
        lon=lon,
        lead_times=lead_times,
        lowres_variables=list(store.INPUT_VARIABLES),
        statistics={"mrr": 35.0},
    )
    attrs = store.provenance(
        command=["2024-07-24T00/2024-07-24T06", "--samples", "3"],
        model_package="pkg",
        input_source="inputs.nc",
        seed=0,
        sampler={"sampler": "deterministic"},
        geometry="trained",
        device="CPU",
        precision="float32",
    )
    store.create_store(path, layout, attrs, {})
    writer = store.StoreWriter(path)
    for t in range(len(TIMES)):
        for li in [None] if lead_times is None else range(len(lead_times)):
            base = 280.0 + 10 * t + 3 * (li or 0)
            fields = {
                name: np.stack([np.full((448, 448), base + s, "float32") for s in range(3)])
                for name in store.OUTPUT_VARIABLES
            }
            writer.write_samples(store.piece_index(t, li), [0, 1, 2], fields)
    return path


# ------------------------------------------------------------ earth2studio ZarrBackend


def test_earth2studio_zarr_backend_opens_lists_and_reads_our_store(tmp_path: Path) -> None:
    from earth2studio.io import ZarrBackend

    path = filled_store(tmp_path / "a.zarr")
    backend = ZarrBackend(str(path))
    assert list(backend.coords) == ["time", "sample", "y", "x", "lat_lr", "lon_lr"]
    assert backend.coords["time"].dtype == np.dtype("datetime64[ns]")
    np.testing.assert_array_equal(backend.coords["time"], np.array(TIMES, "datetime64[ns]"))
    np.testing.assert_array_equal(backend.coords["sample"], [0, 1, 2])
    np.testing.assert_array_equal(backend.coords["y"], np.arange(448))
    np.testing.assert_array_equal(backend.coords["lat_lr"], store.LR_LAT)
    # Read by position, then by labels through its own read(): time 06 UTC, sample 2.
    assert float(backend["t2m"][1, 2, 100, 100]) == 292.0
    coords = OrderedDict(
        time=np.array(["2024-07-24T06:00"], dtype="datetime64[ns]"),
        sample=np.array([2]),
        y=np.arange(448),
        x=np.arange(448),
    )
    values, _ = backend.read(coords, "t2m")
    assert tuple(values.shape) == (1, 1, 448, 448) and float(values.mean()) == 292.0
    # And write at a datetime, which failed with CF-encoded integer times.
    import torch

    backend.write(torch.full((1, 1, 448, 448), 300.5), coords, "t2m")
    assert float(xr.open_zarr(path)["t2m"][1, 2].mean()) == 300.5
    assert float(xr.open_zarr(path)["t2m"][1, 1].mean()) == 291.0


def test_new_arrays_through_zarr_backend_with_the_readme_recipe(tmp_path: Path) -> None:
    import torch
    import zarr
    from earth2studio.io import ZarrBackend

    plain = filled_store(tmp_path / "plain.zarr")
    bias = OrderedDict(
        time=np.array(["2024-07-24T06:00"], dtype="datetime64[ns]"),
        y=np.arange(448),
        x=np.arange(448),
    )
    # zarr-python does not add a new array to a group opened from consolidated metadata.
    with pytest.raises(KeyError, match="consolidated metadata"):
        ZarrBackend(str(plain)).write(torch.full((1, 448, 448), 0.5), bias, "t2m_bias")
    # The README's recipe: a group that reads the store itself, then consolidate again.
    path = filled_store(tmp_path / "a.zarr")
    backend = ZarrBackend(str(path))
    backend.root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    backend.add_array(bias, "t2m_bias", fill_value=np.nan)  # else unwritten reads as 0.0
    backend.write(torch.full((1, 448, 448), 0.5), bias, "t2m_bias")
    zarr.consolidate_metadata(str(path))
    ds = xr.open_zarr(path)
    assert ds["t2m_bias"].dims == ("time", "y", "x")
    assert float(ds["t2m_bias"][1].mean()) == 0.5 and np.isnan(ds["t2m_bias"][0]).all()
    assert store.open_store(path)["t2m"].shape == (2, 3, 448, 448)  # still our store


def test_earth2studio_zarr_backend_lists_forecast_lead_times(tmp_path: Path) -> None:
    from earth2studio.io import ZarrBackend

    path = filled_store(tmp_path / "f.zarr", lead_times=[0, 6, 12])
    backend = ZarrBackend(str(path))
    assert backend.coords["lead_time"].dtype.kind == "m"
    hours = backend.coords["lead_time"].astype("timedelta64[h]").astype(int).tolist()
    assert hours == [0, 6, 12]
    assert float(backend["u10m"][1, 2, 1, 0, 0]) == 280.0 + 10 + 6 + 1


def test_xarray_reads_the_native_times_as_datetimes_without_warnings(tmp_path: Path) -> None:
    import warnings

    path = filled_store(tmp_path / "f.zarr", lead_times=[0, 6])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(path)
    np.testing.assert_array_equal(ds["time"].values, np.array(TIMES, "datetime64[ns]"))
    assert ds["lead_time"].values.astype("timedelta64[h]").astype(int).tolist() == [0, 6]
    assert float(ds["t2m"].sel(time="2024-07-24T06", lead_time=np.timedelta64(6, "h"))[1].mean())
    assert ds["time"].attrs["axis"] == "T" and "units" not in ds["time"].attrs
    # The blog's own reading of a store: by position, time first.
    assert float(xr.open_zarr(path, consolidated=False)["mrr"][1, 0, 2][0, 0]) == 292.0


# ---------------------------------------------------------------- CF conventions


def zarr_attrs(path: Path, name: str) -> dict[str, object]:
    return json.loads((path / name / "zarr.json").read_text())["attributes"]


def test_coordinates_carry_cf_attributes_and_no_fill_value(tmp_path: Path) -> None:
    path = filled_store(tmp_path / "a.zarr")
    for name in ("lat_lr", "lon_lr", "lat", "lon", "y", "x", "sample", "time"):
        assert "_FillValue" not in zarr_attrs(path, name), name
    assert zarr_attrs(path, "sample")["units"] == "1"
    assert zarr_attrs(path, "lat_lr")["axis"] == "Y" and zarr_attrs(path, "lon_lr")["axis"] == "X"
    assert zarr_attrs(path, "y")["units"] == "1" and "axis" not in zarr_attrs(path, "y")
    # Data arrays keep NaN as fill value: an unwritten piece reads as missing.
    assert "_FillValue" in zarr_attrs(path, "t2m")
    assert json.loads((path / "t2m" / "zarr.json").read_text())["fill_value"] == "NaN"


def netcdf_export(zarr_path: Path, nc_path: Path) -> None:
    """The README's export, as written there."""
    ds = xr.open_zarr(zarr_path)
    ds.to_netcdf(nc_path, encoding={name: {"_FillValue": None} for name in ds.coords})


def cf_check(nc_path: Path) -> dict[str, list[str]]:
    """IOOS compliance-checker cf:1.10 on a file: failed checks' messages by priority."""
    report = nc_path.with_suffix(".json")
    checker = Path(sys.executable).with_name("compliance-checker")
    assert checker.exists(), "compliance-checker is in requirements-dev.txt"
    subprocess.run(
        [str(checker), "--test", "cf:1.10", "--format", "json", "-o", str(report), str(nc_path)],
        check=False,
        capture_output=True,
        timeout=300,
    )
    result = next(iter(json.loads(report.read_text()).values()))
    failed: dict[str, list[str]] = {}
    for priority in ("high_priorities", "medium_priorities", "low_priorities"):
        for check in result[priority]:
            scored, possible = check["value"]
            if scored < possible:
                failed.setdefault(priority, []).append(f"{check['name']}: {check['msgs'][:1]}")
    return failed


@pytest.mark.parametrize(
    "lead_times",
    [None, pytest.param([0, 6], marks=pytest.mark.slow)],
    ids=["analysis", "forecast"],
)
def test_netcdf_export_passes_the_cf_checker(tmp_path: Path, lead_times: list[int] | None) -> None:
    path = filled_store(tmp_path / "a.zarr", lead_times)
    netcdf_export(path, tmp_path / "a.nc")
    failed = cf_check(tmp_path / "a.nc")
    assert "high_priorities" not in failed, failed["high_priorities"]
    # The two warnings left on purpose (README, "Opening a store with other tools"):
    # sample sits between time and y/x (the blog's layout), and cell_methods names the
    # ensemble by its standard name, which CF 7.3 allows and the checker does not know.
    names = sorted({message.split(":")[0] for message in failed.get("medium_priorities", [])})
    assert names == ["§2.4 Dimensions", "§7.3 Cell Methods"], failed
    assert "low_priorities" not in failed, failed["low_priorities"]
    round_trip = xr.open_dataset(tmp_path / "a.nc")
    xr.testing.assert_identical(round_trip["t2m"].load(), xr.open_zarr(path)["t2m"].load())


# ------------------------------------------------------------ the blog's plotting code


def blog_panel(path: Path, sample_ix: int) -> None:
    """The data access and first panel of the blog's plotting snippet, as published."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = xr.open_zarr(path, consolidated=False)
    fig, ax = plt.subplots()
    try:
        ax.pcolormesh(ds["lon"], ds["lat"], ds["mrr"][0, sample_ix], cmap="magma")
    finally:
        plt.close(fig)


def test_the_blogs_plotting_reads_analysis_stores_and_breaks_on_forecasts(tmp_path: Path) -> None:
    # What the README tells blog users: their script plots our analysis stores as they are
    # (the first time only: it indexes time 0), and fails on a forecast store's lead_time.
    blog_panel(filled_store(tmp_path / "a.zarr"), sample_ix=1)
    ds = xr.open_zarr(tmp_path / "a.zarr", consolidated=False)
    assert float(ds["mrr"][0, 1].mean()) == 281.0  # time 0, sample 1
    with pytest.raises(TypeError, match=r"Dimensions of C \(3, 448, 448\)"):
        blog_panel(filled_store(tmp_path / "f.zarr", lead_times=[0, 6, 12]), sample_ix=1)


def readme_section_code(title: str) -> list[str]:
    """The ```python blocks of one README section, in order."""
    import re

    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split(f"### {title}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_snippets_for_other_tools_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = readme_section_code("Opening a store with other tools")
    assert len(blocks) == 4
    monkeypatch.chdir(tmp_path)
    filled_store(tmp_path / "outputs" / "corrdiff-2024-07-24T12.zarr")
    namespace: dict[str, object] = {"xr": xr}
    for block in blocks:
        exec(block, namespace)  # noqa: S102 - the README's own code, on a test store
    assert tuple(namespace["t2m"].shape) == (1, 1, 448, 448)  # type: ignore[attr-defined]
    assert float(namespace["t2m"].mean()) == 280.0  # type: ignore[attr-defined]
    exported = xr.open_dataset(tmp_path / "corrdiff.nc")
    assert float(exported["t2m_bias"][0].mean()) == 0.0 and np.isnan(exported["t2m_bias"][1]).all()
    assert "_FillValue" not in exported["lat_lr"].encoding
    added = store.open_store(tmp_path / "outputs" / "corrdiff-2024-07-24T12.zarr")
    assert added.attrs["institution"] == "My Lab"
