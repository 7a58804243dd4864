"""``--model cmip6``'s default package through the real Hugging Face client, on loopback.

``run_corrdiff.py --model cmip6`` without ``--model-package`` fetches
``corrdiff_tools.models.cmip6.DEFAULT_PACKAGE`` (``hf://nvidia/corrdiff-cmip6-era5@<commit>``)
with earth2studio's ``Package`` and huggingface_hub's ``HfFileSystem``. Here the Hub is
:class:`services.hf.HubServer`, serving a tiny CorrDiffCMIP6 package as that repository at
that commit, and nothing is injected: the tool runs as a user runs it, ``python
run_corrdiff.py ...`` in a child process, with only environment variables pointing the
client at loopback (``HF_ENDPOINT``) and every cache into the test's folders.

Why a child process: huggingface_hub reads ``HF_ENDPOINT`` once, at import, into
``constants.ENDPOINT`` and ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` (``hf_hub_url``
builds download URLs from the latter), and ``HfFileSystem`` instances are cached per
thread and arguments (``hf_file_system._Cached``) with what they learnt about a
repository (``_repo_and_revision_exists_cache``, ``dircache``). In this process those are
set by whichever test imported earth2studio first; a fresh interpreter reads the
environment the way a user's does.

Sockets: pytest-socket polices this process only (the server binds 127.0.0.1). The child
gets ``HTTP(S)_PROXY``/``ALL_PROXY`` set to a closed port on 127.0.0.1 with
``NO_PROXY=127.0.0.1,localhost`` (httpx honours them): a request for any other host would
go to a proxy that refuses it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from services import hf

from corrdiff_tools import sources, synthetic
from corrdiff_tools.models import cmip6

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ("t2m", "u10m")
OUTPUTS = ("t2m",)
OUT_GRID = (np.linspace(-90.0, 90.0, 25), np.arange(64) * 5.625)
IN_GRID = (np.linspace(-90.0, 90.0, 9), np.arange(16) * 22.5)
#: The initialisation time run, and the days the input file holds (-24, 0, +24 h).
TIME = datetime(2037, 9, 6, 12)
DAYS = [TIME + timedelta(days=d) for d in (-1, 0, 1)]
#: The package's files, as the tool fetches them (declaration.REQUIRED_FILES, ...).
PACKAGE_FILES = (
    "metadata.json", "stats.json", "output_latlon_grid.nc", "regression.mdlus",
    "diffusion.mdlus", "input_latlon_grid.nc", "invariants.nc",
)  # fmt: skip
#: Variables of the test process that could send the child's client elsewhere or let it
#: read a user's token or caches: the child gets its own values or none.
INHERITED_OUT = (
    "HF_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE",
    "HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT", "HF_HUB_DISABLE_XET",
    "EARTH2STUDIO_MODEL_CACHE", "EARTH2STUDIO_DATA_CACHE",
    *(f"{name}_PROXY" for name in ("HTTPS", "HTTP", "ALL", "NO")),
    *(f"{name}_proxy" for name in ("https", "http", "all", "no")),
)  # fmt: skip


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CorrDiffCMIP6 package: two inputs, one output, two sampler steps."""
    invariants = synthetic.cmip6_invariants(OUT_GRID[0], OUT_GRID[1].size)
    folder = synthetic.build_cmip6_package(
        tmp_path_factory.mktemp("cmip6") / "package", INPUTS, OUTPUTS, OUT_GRID, IN_GRID,
        invariants, metadata={"number_of_steps": 2, "sigma_max": 80.0},
    )  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == sorted(PACKAGE_FILES)
    return folder


@pytest.fixture(scope="module")
def daily(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The daily fields around :data:`TIME`, as a user's file."""
    rng = np.random.default_rng(7)
    shape = (len(DAYS), len(INPUTS), IN_GRID[0].size, IN_GRID[1].size)
    data = rng.standard_normal(shape) * np.array([5.0, 3.0])[:, None, None]
    data[:, 0] += 285.0
    array = sources.input_dataarray(data.astype("float32"), DAYS, list(INPUTS), *IN_GRID)
    path = tmp_path_factory.mktemp("inputs") / "daily.nc"
    array.to_netcdf(path)
    return path


@dataclass
class Result:
    """What a user sees: the exit code, stderr and how long the command took."""

    code: int
    err: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return self.err.strip().splitlines()


@dataclass
class User:
    """A user's machine: caches of their own, the Hub at ``endpoint``."""

    home: Path
    daily: Path
    dead_port: int

    def run(self, endpoint: str, output: Path, *extra: str) -> Result:
        """``run_corrdiff.py TIME --model cmip6 ...`` (no ``--model-package``), as typed."""
        env = {k: v for k, v in os.environ.items() if k not in INHERITED_OUT}
        proxy = f"http://127.0.0.1:{self.dead_port}"
        env |= {
            "HF_ENDPOINT": endpoint,
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HOME": str(self.home / "huggingface"),
            "CORRDIFF_TOOLS_CACHE": str(self.home / "corrdiff_tools"),
            "EARTH2STUDIO_CACHE": str(self.home / "earth2studio"),
            "HTTPS_PROXY": proxy,
            "HTTP_PROXY": proxy,
            "ALL_PROXY": proxy,
            "NO_PROXY": "127.0.0.1,localhost",
            "TQDM_DISABLE": "1",
        }
        command = [
            sys.executable, "run_corrdiff.py", f"{TIME:%Y-%m-%dT%H:%M}", "--model", "cmip6",
            "--source", str(self.daily), "--lead-time", "-12", "--samples", "1",
            "--seed", "3", "--device", "cpu", "--output", str(output), "-q", *extra,
        ]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(  # noqa: S603 - our own tool, by the interpreter running us
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        return Result(done.returncode, done.stderr, time.monotonic() - started)

    def package_folders(self) -> list[Path]:
        """The cache folders remote packages were fetched into."""
        return sorted((self.home / "corrdiff_tools" / "packages").glob("remote-*"))


def new_user(tmp_path_factory: pytest.TempPathFactory, daily: Path, dead_port: int) -> User:
    return User(tmp_path_factory.mktemp("user"), daily, dead_port)


@dataclass
class FirstRun:
    """The first run against the Hub: what it printed, wrote and asked the Hub for."""

    hub: hf.HubServer
    user: User
    result: Result
    output: Path


@pytest.fixture(scope="module")
def first_run(
    package: Path, daily: Path, dead_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FirstRun]:
    """The default package fetched from the loopback Hub by a user with an empty cache."""
    user = new_user(tmp_path_factory, daily, dead_port)
    with hf.HubServer(package) as hub:
        output = user.home / "first.zarr"
        yield FirstRun(hub, user, user.run(hub.url, output), output)


@dataclass
class Failure:
    """A run against a Hub that cannot serve the package."""

    result: Result
    user: User
    output: Path
    requests: list[tuple[str, str]]


#: The failures, each met with an empty cache: the repository lacks the pinned commit
#: (404 RevisionNotFound), the Hub does not show the repository (401 RepoNotFound), the
#: commit lacks diffusion.mdlus, every route answers 503, the endpoint is a closed port.
FAULTS = ("unknown-revision", "unknown-repo", "missing-file", "unavailable", "unreachable")


@pytest.fixture(scope="module")
def failure(
    package: Path, daily: Path, dead_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Failure]:
    """Each fault's run, made once for the tests that read it (each with an empty cache)."""
    made: dict[str, Failure] = {}

    def get(fault: str) -> Failure:
        if fault in made:
            return made[fault]
        user = new_user(tmp_path_factory, daily, dead_port)
        output = user.home / "out.zarr"
        if fault == "unreachable":
            made[fault] = Failure(
                user.run(f"http://127.0.0.1:{dead_port}", output), user, output, []
            )
            return made[fault]
        # unknown-revision: the repository exists, the pinned commit is not one of its.
        commit = "0" * 40 if fault == "unknown-revision" else hf.COMMIT
        with hf.HubServer(package, commit=commit) as hub:
            if fault == "missing-file":
                hub.remove("diffusion.mdlus")
            elif fault in hf.FAULTS:
                hub.fault = fault
            result = user.run(hub.url, output)
        made[fault] = Failure(result, user, output, hub.seen())
        return made[fault]

    return get


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_the_default_package_is_fetched_from_the_hub_at_its_pinned_revision(
    first_run: FirstRun, package: Path
) -> None:
    """No ``--model-package``: the run asks the Hub for the pinned commit only (never
    ``main``, which the stand-in would serve too), fetches each file once into the
    tool's cache, byte for byte the repository's, and writes a CorrDiffCMIP6 store that
    names the address it ran."""
    assert cmip6.DEFAULT_PACKAGE == f"hf://{hf.REPO_ID}@{hf.COMMIT}"  # what is served
    result, hub = first_run.result, first_run.hub
    assert result.code == 0, result.err
    requests = hub.seen()
    assert requests[0] == ("GET", f"/api/models/{hf.REPO_ID}/revision/{hf.COMMIT}"), requests
    assert hub.revisions() == {hf.COMMIT}, requests
    assert {method for method, _ in requests} == {"GET"}, requests
    assert sorted(hub.resolved()) == sorted(PACKAGE_FILES), requests  # each once

    (folder,) = first_run.user.package_folders()
    for name in PACKAGE_FILES:
        assert (folder / name).read_bytes() == (package / name).read_bytes(), name
    assert (folder / ".fetched").read_text().strip() == cmip6.DEFAULT_PACKAGE

    dataset = xr.open_zarr(first_run.output)
    assert dataset.attrs["model_package"] == cmip6.DEFAULT_PACKAGE
    assert dataset["t2m"].shape == (1, 1, 1, *(axis.size for axis in OUT_GRID))
    assert np.isfinite(dataset["t2m"].values).all()
    assert int(dataset["completed"].values.sum()) == 1


@pytest.mark.slow
def test_a_second_run_reads_the_cache_with_the_hub_gone(first_run: FirstRun) -> None:
    """With the Hub stopped (its port refuses connections, so any request would fail the
    run, as the unreachable case shows), the same command runs from the cache: exit 0,
    the same store."""
    first_run.hub.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", first_run.hub.port), timeout=5).close()
    before = len(first_run.hub.seen())
    output = first_run.user.home / "again.zarr"
    result = first_run.user.run(first_run.hub.url, output)
    assert result.code == 0, result.err
    assert len(first_run.hub.seen()) == before
    again, first = xr.open_zarr(output), xr.open_zarr(first_run.output)
    np.testing.assert_array_equal(again["t2m"].values, first["t2m"].values)
    assert len(first_run.user.package_folders()) == 1


@pytest.mark.parametrize("fault", FAULTS)
def test_a_hub_failure_is_one_line_and_writes_nothing(
    failure: Callable[[str], Failure], fault: str
) -> None:
    """A repository or revision the Hub does not know, a file it lacks, a 503, a closed
    port: exit 1 or 2 with one ``run_corrdiff.py: error:`` line, no traceback, no store,
    and no cache folder marked as fetched (the next run tries again)."""
    found = failure(fault)
    result = found.result
    assert result.code in (1, 2), result.err
    assert len(result.lines) == 1, result.err
    assert result.lines[0].startswith("run_corrdiff.py: error: "), result.err
    assert "Traceback" not in result.err
    assert not found.output.exists()
    assert not any((folder / ".fetched").exists() for folder in found.user.package_folders())
    if fault != "unreachable":  # the pinned commit was asked for, first
        assert found.requests[0][1] == f"/api/models/{hf.REPO_ID}/revision/{hf.COMMIT}"


#: What the line of each failure must say beyond the address and ``--model-package``.
SAYS = {
    "unknown-revision": ("the hub has no such revision",),
    "unknown-repo": ("the hub has no such repository",),
    "missing-file": ("is not a complete corrdiff package: it has no diffusion.mdlus",),
    "unavailable": ("503",),
    "unreachable": ("connection refused",),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_hub_failure_names_the_address_and_the_way_out(
    failure: Callable[[str], Failure], fault: str
) -> None:
    """The line names the address the user never typed (the default package), what went
    wrong (the Hub's "repository/revision not found" was read as a package lacking
    metadata.json, "not a generic CorrDiff package", before), and the offline route
    (``--model cmip6 --model-package FOLDER``). Every one is exit 1: the default address
    is not the user's to correct."""
    result = failure(fault).result
    line = result.lines[-1] if result.lines else ""
    assert cmip6.DEFAULT_PACKAGE in line, line
    assert "--model-package" in line, line
    for words in SAYS[fault]:
        assert words in line.lower(), line
    assert "--model cmip6 --model-package FOLDER" in line, line
    assert result.code == 1, line
