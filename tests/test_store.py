from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from corrdiff_tools import store
from corrdiff_tools.errors import RunError


def layout(lead_times=None) -> store.StoreLayout:
    lat, lon = np.meshgrid(np.linspace(20, 27, 448), np.linspace(117, 125, 448), indexing="ij")
    return store.StoreLayout(
        times=[datetime(2024, 7, 24, 0), datetime(2024, 7, 24, 6)],
        samples=3,
        lat=lat,
        lon=lon,
        lead_times=lead_times,
        lowres_variables=[*store.INPUT_VARIABLES, "refc"],
    )


def test_empty_store_reads_as_missing_with_cf_metadata(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    store.create_store(path, layout(), {"title": "t"}, {"seed": 1})
    ds = xr.open_zarr(path)
    assert ds["t2m"].dims == ("time", "sample", "y", "x") and ds["t2m"].shape == (2, 3, 448, 448)
    assert np.isnan(ds["t2m"].values).all()
    assert ds["completed"].values.sum() == 0 and ds["completed"].dtype == np.int8
    assert ds["lr_refc"].attrs["units"] == "dBZ" and ds["lr_z500"].attrs["units"] == "m2 s-2"
    assert ds["t2m"].encoding["chunks"] == (1, 1, 448, 448)
    assert store.is_store(path) and store.read_settings(path) == {"seed": 1}
    assert ds.attrs["title"] == "t"


def test_writer_marks_only_what_it_wrote(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    store.create_store(path, layout(), {}, {})
    writer = store.StoreWriter(path)
    field = np.full((2, 448, 448), 300.0, dtype="float32")
    writer.write_samples((1,), [0, 2], {name: field for name in store.OUTPUT_VARIABLES})
    writer.write_inputs((1,), {"t2m": np.full((36, 40), 299.0), "unknown": np.zeros((36, 40))})
    assert writer.completed().tolist() == [[False, False, False], [True, False, True]]
    ds = xr.open_zarr(path)
    assert float(ds["t2m"][1, 2].mean()) == 300.0 and np.isnan(ds["t2m"][1, 1]).all()
    assert float(ds["lr_t2m"][1].mean()) == 299.0 and np.isnan(ds["lr_t2m"][0]).all()


def test_lead_time_axis(tmp_path: Path) -> None:
    path = tmp_path / "f.zarr"
    store.create_store(path, layout(lead_times=[0, 6, 123]), {}, {})
    ds = xr.open_zarr(path)
    assert ds["t2m"].dims == ("time", "lead_time", "sample", "y", "x")
    assert ds["lead_time"].values.astype("timedelta64[h]").astype(int).tolist() == [0, 6, 123]
    assert ds["completed"].shape == (2, 3, 3)


def test_create_refuses_an_existing_path(tmp_path: Path) -> None:
    store.create_store(tmp_path / "s.zarr", layout(), {}, {})
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(RunError, match="s.zarr: it already exists"):
        store.create_store(tmp_path / "s.zarr", layout(), {}, {})
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(RunError, match="empty.zarr: it already exists"):
        store.create_store(tmp_path / "empty.zarr", layout(), {}, {})
    after = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}
    assert after == {*before, Path("empty.zarr")}  # nothing written, nothing replaced


def test_replacing_a_store_keeps_it_until_the_new_one_is_in_place(tmp_path: Path) -> None:
    store.create_store(tmp_path / "s.zarr", layout(), {"title": "old"}, {})
    store.create_store(tmp_path / "s.zarr", layout(), {"title": "new"}, {}, replace=True)
    assert store.read_attrs(tmp_path / "s.zarr")["title"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
    # A kill between the two renames leaves the old store aside: put back, never lost.
    (tmp_path / "s.zarr").rename(tmp_path / ".s.zarr.replaced-99")
    store.clean_leftovers(tmp_path / "s.zarr")
    assert store.read_attrs(tmp_path / "s.zarr")["title"] == "new"
    (tmp_path / ".s.zarr.creating-98").mkdir()
    store.clean_leftovers(tmp_path / "s.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_foreign_paths_are_not_stores(tmp_path: Path) -> None:
    assert not store.is_store(tmp_path)
    xr.Dataset({"a": ("x", [1.0])}).to_zarr(tmp_path / "other.zarr")
    assert not store.is_store(tmp_path / "other.zarr")
    assert store.read_settings(tmp_path / "other.zarr") is None


def test_settings_mismatch_names_each_difference() -> None:
    got = store.settings_mismatch(
        {"seed": 0, "steps": 8}, {"seed": 1, "steps": 8, "solver": "heun"}
    )
    assert got == [
        "seed: store has 0, this run asks for 1",
        "solver: store has None, this run asks for 'heun'",
    ]
