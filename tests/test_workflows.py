"""The workflows take a typed request and injected parts, never argparse."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import offline_args

from corrdiff_tools import model, sources, store
from corrdiff_tools.cli import run_main
from corrdiff_tools.downscale import GEOMETRY
from corrdiff_tools.requests import RunRequest
from corrdiff_tools.run_workflow import RunParts, run
from corrdiff_tools.sampling import PRESETS

NOON = datetime(2024, 7, 24, 12)


def test_a_run_is_a_request_and_its_parts_and_equals_the_command_line_run(
    package_dir: Path, input_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    calls: dict[str, list[object]] = {"source": [], "load": [], "imports": [], "progress": []}

    def gfs_from_file(spec: sources.SourceSpec, times: Sequence[datetime]) -> object:
        calls["source"].append((spec.kind, list(times)))
        return sources.build_source(sources.SourceSpec("file", input_file), times)

    def loader(spec: str, device: model.DeviceInfo, precision: str) -> tuple[object, str]:
        calls["load"].append((spec, str(device.device), precision))
        return model.load_corrdiff(spec, device, precision)

    @contextlib.contextmanager
    def progress(total: int) -> Iterator[Callable[[int], object]]:
        calls["progress"].append(("total", total))
        yield lambda done: calls["progress"].append(("done", done))

    request = RunRequest(
        times=[NOON],
        lead_times=None,
        source=sources.SourceSpec("gfs"),
        source_identity="gfs",
        lowres_variables=sources.lowres_variables(sources.SourceSpec("gfs")),
        output=tmp_path / "direct.zarr",
        samples=3,
        seed=0,
        sampler=replace(PRESETS["blog"], steps=2),
        model_package=str(package_dir),
        package_identity=model.package_identity(str(package_dir)),
        statistics=None,
        overwrite=False,
        resume=False,
        batch_size=2,
        device="cpu",
        compile=False,
        prefetch=None,
        command=("2024-07-24T12", "--samples", "3"),
    )
    parts = RunParts(
        build_source=gfs_from_file,
        load_model=loader,
        import_libraries=lambda: calls["imports"].append(True),
        progress=progress,
    )
    assert run(request, parts) == 0

    assert calls["source"] == [("gfs", [NOON])]
    assert calls["load"] == [(str(package_dir), "cpu", "auto")]
    assert calls["imports"] == [True]
    assert calls["progress"] == [("total", 3), ("done", 2), ("done", 1)]
    direct = xr.open_zarr(tmp_path / "direct.zarr").load()
    assert direct["completed"].values.tolist() == [[1, 1, 1]]
    assert json.loads(direct.attrs[store.SETTINGS_ATTR]) == request.resume_settings()
    assert direct.attrs["geometry"] == GEOMETRY
    assert direct.attrs["history"].endswith("run_corrdiff.py 2024-07-24T12 --samples 3")
    assert direct.attrs["input_source"] == "gfs"

    # The same job through the command line, reading the file: the same ensemble, bitwise.
    args = [*offline_args(package_dir, input_file), "2024-07-24T12", "--samples", "3"]
    assert run_main([*args, "--steps", "2", "--batch-size", "2", "--output", "cli.zarr"]) == 0
    cli = xr.open_zarr(tmp_path / "cli.zarr").load()
    for name in (*store.OUTPUT_VARIABLES, "lr_t2m", "lr_refc", "t2m_regression"):
        np.testing.assert_array_equal(direct[name].values, cli[name].values)
