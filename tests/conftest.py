"""Shared fixtures: a tiny model package in the published layout and a small input file.

Both are built once per session and driven through the real code: earth2studio's
``load_model`` reads the package, earth2studio's ``DataArrayFile`` reads the inputs.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from corrdiff_tools.synthetic import build_package, synthetic_inputs

#: The times the session's input file holds.
TIMES = [datetime(2024, 7, 24, hour) for hour in (0, 6, 12, 18)]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (the default run: two processes on two cores), one torch thread
    each: two processes of two threads on two cores spin against each other (such a run
    was slower than one process of two threads, 2026-12-03)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"  # and the subprocesses tests start
        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = tmp_path_factory.mktemp("cache")
    os.environ["CORRDIFF_TOOLS_CACHE"] = str(cache / "corrdiff_tools")
    os.environ["EARTH2STUDIO_CACHE"] = str(cache / "earth2studio")
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["MPLBACKEND"] = "Agg"


def offline_args(package_dir: Path, input_file: Path) -> list[str]:
    """run_corrdiff.py options that use the test package and input file, on CPU."""
    return ["--source", str(input_file), "--model-package", str(package_dir), "--device", "cpu"]


def with_defaults(defaults: list[str], args: tuple[str, ...] | list[str]) -> list[str]:
    """The (flag, value) pairs of ``defaults`` whose flag ``args`` does not give itself."""
    pairs = zip(defaults[::2], defaults[1::2], strict=True)
    return [word for flag, value in pairs if flag not in args for word in (flag, value)]


@pytest.fixture(autouse=True)
def _no_retry_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    from corrdiff_tools import sources

    monkeypatch.setattr(sources, "RETRY_DELAYS", (0.0, 0.0))


def lively_networks(seed: int = 0, scale_cond_input: bool = False) -> tuple[Any, Any]:
    """Tiny nets whose outputs are O(0.1) in normalised units, not O(1e-5).

    SongUNet initialises its last convolution (``aux_conv``) near zero, so a random tiny net
    adds almost nothing to the normalisation centre: a dropped regression mean or a
    conditioning fed the wrong way would change the output by less than float32 rounding
    of a 298 K field. Re-drawing those weights (``synthetic.enliven``) makes both nets'
    contributions visible.
    """
    from corrdiff_tools.synthetic import build_networks, enliven

    return enliven(build_networks("tiny", seed, scale_cond_input), seed)


def lively_package(directory: Path, seed: int = 0, scale_cond_input: bool = False) -> Path:
    """A tiny package of :func:`lively_networks` in the published layout."""
    return build_package(directory, networks=lively_networks(seed, scale_cond_input))


@pytest.fixture(scope="session")
def package_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a tiny corrdiff_inference_package.zip (see lively_package)."""
    return lively_package(tmp_path_factory.mktemp("package"), seed=0)


@pytest.fixture(scope="session")
def input_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A NetCDF DataArray (time, variable, lat, lon) with the 12 inputs and refc at TIMES."""
    path = tmp_path_factory.mktemp("inputs") / "inputs.nc"
    synthetic_inputs(TIMES, seed=0).to_netcdf(path)
    return path


@pytest.fixture(scope="session")
def loaded_model(package_dir: Path) -> object:
    """The tiny package loaded through earth2studio's load_model, on CPU."""
    from corrdiff_tools.model import load_corrdiff, resolve_device

    model, _ = load_corrdiff(str(package_dir), resolve_device("cpu"))
    return model


@pytest.fixture
def run_tool(
    package_dir: Path,
    input_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Callable[..., tuple[int, str]]:
    """Call run_main with the offline package and input file, from inside tmp_path.

    Returns the exit code and stderr.
    """
    from corrdiff_tools.cli import run_main

    monkeypatch.chdir(tmp_path)

    def run(*args: str, build_source: Any = None) -> tuple[int, str]:
        # The offline defaults stand where a test gives no option of its own (an option
        # given twice with other values is refused). build_source: a fake data-source
        # factory (see cli.run_main).
        capsys.readouterr()
        argv = [*with_defaults(offline_args(package_dir, input_file), args), *args]
        code = run_main(argv, build_source=build_source)
        return code, capsys.readouterr().err

    return run


def load_inputs(path: Path) -> Any:
    """Read an input file fully and close it (HDF5 dislikes handles left open across runs)."""
    import xarray as xr

    with xr.open_dataarray(path) as array:
        return array.load()


class FileForecast:
    """A forecast source (time, lead_time, variable) read from the session's input file.

    The field at init time t and lead L is the file's analysis at t + L, so the test can
    check which inputs reached which lead.
    """

    def __init__(self, path: Path) -> None:
        self.array = load_inputs(path).load()

    def __call__(
        self, time: np.ndarray, lead_time: np.ndarray, variable: np.ndarray
    ) -> xr.DataArray:
        frames = [
            self.array.sel(time=[t + lead for lead in lead_time], variable=list(variable))
            .rename(time="lead_time")
            .assign_coords(lead_time=np.asarray(lead_time))
            for t in time
        ]
        return xr.concat(frames, "time").assign_coords(time=np.asarray(time))


#: Cases whose parameter comes from a fixture, so their marks cannot be set where they
#: are parametrized: these run in CI's slow step only.
SLOW_CASES = {
    "tests/test_fidelity.py::test_ensemble_equals_the_independent_reference[scale_cond_True-paper]",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid in SLOW_CASES:
            item.add_marker(pytest.mark.slow)


def drawn_files(directory: Path) -> list[Path]:
    """What the plot tool drew into ``directory`` (without its record of it)."""
    from corrdiff_tools.drawn import MANIFEST

    return [p for p in directory.iterdir() if p.name != MANIFEST]


@pytest.fixture(scope="module")
def dead_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
