"""Faults: killed runs, concurrent runs, network, memory, disk, broken packages, bad stores.

Each fault is injected at a seam (the store writer, the data source, the sampler, the
package) while the real CLI runs, and each test checks the exit code, the one line on
stderr, and that the store is consistent and completes with --resume to the same values as
an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from conftest import lively_package, load_inputs, offline_args
from hypothesis import given
from hypothesis import strategies as st

from corrdiff_tools import sources, store
from corrdiff_tools.cli import plot_main, run_main
from corrdiff_tools.downscale import CorrDiffSampler
from corrdiff_tools.drawn import MANIFEST
from corrdiff_tools.errors import RunError, UsageError
from corrdiff_tools.lock import lock_path
from corrdiff_tools.requests import parse_selection, parse_thresholds
from corrdiff_tools.sampling import PRESETS
from corrdiff_tools.store import OUTPUT_VARIABLES, StoreWriter

ROOT = Path(__file__).resolve().parents[1]
JOB = ["2024-07-24T06/2024-07-24T12", "--samples", "3", "--steps", "2", "--batch-size", "2"]
Run = Callable[..., tuple[int, str]]


@pytest.fixture(scope="module")
def reference(
    package_dir: Path, input_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> xr.Dataset:
    """The uninterrupted run every faulty run must end up equal to."""
    path = tmp_path_factory.mktemp("reference") / "ref.zarr"
    args = [*JOB, *offline_args(package_dir, input_file)]
    assert run_main([*args, "--output", str(path), "-q"]) == 0
    return xr.open_zarr(path).load()


def assert_same_ensemble(path: Path, reference: xr.Dataset, exact: bool = True) -> None:
    """Bitwise equal; or, when the batch size differed, equal to float32 rounding."""
    got = xr.open_zarr(path).load()
    np.testing.assert_array_equal(got["completed"].values, reference["completed"].values)
    for name in OUTPUT_VARIABLES:
        if exact:
            np.testing.assert_array_equal(got[name].values, reference[name].values)
        else:
            np.testing.assert_allclose(
                got[name].values, reference[name].values, rtol=1e-6, atol=1e-5
            )


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines, "nothing on stderr"
    return lines[-1]


# ------------------------------------------------------------------- killed runs

DRIVER = """
import os, signal, sys
import xarray
from corrdiff_tools import store
from corrdiff_tools.cli import run_main

point = os.environ["KILL_AT"]
signum = getattr(signal, os.environ.get("KILL_SIGNAL", "SIGKILL"))
# Ctrl-C as at a terminal, even when the suite runs as a shell background job (whose
# children start with SIGINT ignored, which Python then keeps).
signal.signal(signal.SIGINT, signal.default_int_handler)
calls = {"write_samples": 0}

def die():
    os.kill(os.getpid(), signum)

real_to_zarr = xarray.Dataset.to_zarr
def to_zarr(self, *args, **kwargs):
    result = real_to_zarr(self, *args, **kwargs)
    if point == "mid-create":
        die()
    return result
xarray.Dataset.to_zarr = to_zarr

real_create = store.create_store
def create(*args, **kwargs):
    real_create(*args, **kwargs)
    if point == "after-create":
        die()
store.create_store = create

real_write = store.StoreWriter.write_samples
def write_samples(self, *args, **kwargs):
    calls["write_samples"] += 1
    if point == "between-pieces" and calls["write_samples"] == 2:
        die()
    return real_write(self, *args, **kwargs)
store.StoreWriter.write_samples = write_samples

real_array = store.StoreWriter._array
def array(self, name):
    if point == "mid-write" and calls["write_samples"] == 2 and name == "u10m":
        die()
    return real_array(self, name)
store.StoreWriter._array = array

sys.exit(run_main(sys.argv[1:]))
"""

#: Where a clean stop (SIGTERM, SIGINT) leaves them: the store is created and written on
#: a background thread, and a clean stop lets the call in flight finish (creating the
#: store, or writing the batch and then flagging it) before the run exits; SIGKILL stops
#: everything where it is.
CLEAN_STOP_POINTS = {
    "mid-create": [[0, 0, 0], [0, 0, 0]],
    "mid-write": [[1, 1, 1], [0, 0, 0]],
}
#: Where each kill point leaves the completion flags (None: no store at all).
KILL_POINTS = {
    "mid-create": None,
    "after-create": [[0, 0, 0], [0, 0, 0]],
    "between-pieces": [[1, 1, 0], [0, 0, 0]],
    "mid-write": [[1, 1, 0], [0, 0, 0]],
}
SIGNALS = {"SIGKILL": -signal.SIGKILL, "SIGTERM": 143, "SIGINT": 130}
SWEEP = [(p, "SIGKILL") for p in KILL_POINTS] + [
    (p, s) for s in ("SIGTERM", "SIGINT") for p in ("mid-create", "mid-write")
]
#: The sweep runs in CI's slow step: each case is a real process killed (about 45 s). The
#: default run covers interruption and --resume in-process (test_cli_run).
SWEEP_CASES = [pytest.param(*case, marks=pytest.mark.slow) for case in SWEEP]


@pytest.mark.parametrize(("point", "signame"), SWEEP_CASES, ids=[f"{p}-{s}" for p, s in SWEEP])
def test_killed_then_resume_equals_an_uninterrupted_run(
    point: str,
    signame: str,
    reference: xr.Dataset,
    package_dir: Path,
    input_file: Path,
    tmp_path: Path,
) -> None:
    path = tmp_path / "out" / "killed.zarr"
    args = [*JOB, *offline_args(package_dir, input_file)]
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, *args, "--output", str(path)],
        cwd=ROOT,
        env={**os.environ, "KILL_AT": point, "KILL_SIGNAL": signame},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == SIGNALS[signame], result.stderr
    if signame != "SIGKILL":
        # A clean stop: one line with the command that finishes the job, lock released.
        what = "terminated" if signame == "SIGTERM" else "interrupted"
        line = one_line(result.stderr)
        assert line.startswith(f"run_corrdiff.py: {what}; completed samples are kept; ")
        assert line.endswith(f"--output {path} --resume")
        assert not lock_path(path).exists()
    # The store is complete or absent, never half-made; nothing is marked complete that
    # is not on disk.
    expected = KILL_POINTS[point] if signame == "SIGKILL" else CLEAN_STOP_POINTS[point]
    if expected is None:
        assert not path.exists()
    else:
        assert xr.open_zarr(path)["completed"].values.tolist() == expected

    # The kernel released a killed run's lock: --resume needs no clean-up by hand.
    assert run_main([*args, "--output", str(path), "--resume", "-q"]) == 0
    assert_same_ensemble(path, reference)
    assert not lock_path(path).exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["killed.zarr"]


# ------------------------------------------------------------------- damaged stores


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param("deleted sample chunk", marks=pytest.mark.slow),
        pytest.param("truncated input chunk", marks=pytest.mark.slow),
        "both",
    ],
)
def test_resume_verifies_completed_pieces_and_recomputes_damaged_ones(
    damage: str,
    reference: xr.Dataset,
    package_dir: Path,
    input_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "damaged.zarr"
    args = [*JOB, *offline_args(package_dir, input_file), "--output", str(path)]
    assert run_main([*args, "-q"]) == 0
    if damage in ("deleted sample chunk", "both"):
        (path / "t2m" / "c" / "1" / "2" / "0" / "0").unlink()  # time 1, sample 2
    if damage in ("truncated input chunk", "both"):
        chunk = path / "lr_u850" / "c" / "0" / "0" / "0"  # time 0: all its samples
        chunk.write_bytes(chunk.read_bytes()[:40])
    capsys.readouterr()
    assert run_main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    count = {"deleted sample chunk": 1, "truncated input chunk": 3, "both": 4}[damage]
    assert f"{count} piece(s) marked complete in {path} are missing or unreadable" in err
    assert f"resuming {path}: {count} sample(s) left to compute" in err
    assert_same_ensemble(path, reference)
    np.testing.assert_array_equal(xr.open_zarr(path)["lr_u850"].values, reference["lr_u850"].values)


# ------------------------------------------------------------------- concurrent runs


@pytest.mark.slow
def test_a_second_run_on_the_same_output_is_refused_and_the_first_is_unharmed(
    reference: xr.Dataset,
    package_dir: Path,
    input_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "shared.zarr"
    args = [*JOB, *offline_args(package_dir, input_file)]
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "run_corrdiff.py"), *args, "--output", str(path), "-q"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not lock_path(path).exists():
        assert first.poll() is None and time.monotonic() < deadline, "first run never took its lock"
        time.sleep(0.2)
    code = run_main([*args, "--output", str(path), "--resume"])
    line = one_line(capsys.readouterr().err)
    assert code == 2
    assert f"shared.zarr is in use by another run (pid {first.pid} on " in line
    assert first.wait(timeout=600) == 0, first.stderr.read() if first.stderr else ""
    assert_same_ensemble(path, reference)
    assert not lock_path(path).exists()


def test_a_lock_file_left_by_a_dead_run_is_not_in_the_way(run_tool: Run, tmp_path: Path) -> None:
    lock = lock_path(tmp_path / "s.zarr")
    lock.write_text('{"pid": 1, "host": "elsewhere", "started": 0}')  # no flock held on it
    code, err = run_tool("2024-07-24T12", "--steps", "2", "--output", "s.zarr")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_a_symlinked_alias_of_a_busy_store_is_refused(run_tool: Run, tmp_path: Path) -> None:
    from corrdiff_tools.lock import StoreLock

    assert run_tool("2024-07-24T12", "--steps", "2", "--output", "real.zarr")[0] == 0
    (tmp_path / "alias.zarr").symlink_to(tmp_path / "real.zarr")
    with StoreLock(tmp_path / "real.zarr"):
        code, err = run_tool("2024-07-24T12", "--steps", "2", "--output", "alias.zarr", "--resume")
    assert code == 2
    assert one_line(err).startswith(
        "run_corrdiff.py: error: real.zarr is in use by another run (pid "
    )


def test_overwrite_through_a_symlinked_output_replaces_the_store_not_the_link(
    run_tool: Run, tmp_path: Path
) -> None:
    assert run_tool("2024-07-24T12", "--steps", "2", "--output", "real.zarr")[0] == 0
    (tmp_path / "alias.zarr").symlink_to(tmp_path / "real.zarr")
    code, err = run_tool(
        "2024-07-24T12", "--steps", "2", "--seed", "4", "--output", "alias.zarr", "--overwrite"
    )
    assert code == 0, err
    assert (tmp_path / "alias.zarr").is_symlink()
    assert xr.open_zarr(tmp_path / "alias.zarr").attrs["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias.zarr", "real.zarr"]


def test_without_flock_a_stale_lock_is_reported_with_what_to_do(
    run_tool: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Filesystems without flock (Lustre without -o flock): the exclusive-file fallback."""
    import fcntl
    import json
    import socket

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    lock = lock_path(tmp_path / "s.zarr")
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": 0}))
    code, err = run_tool("2024-07-24T12", "--output", "s.zarr")
    assert code == 2
    assert one_line(err) == (
        f"run_corrdiff.py: error: stale lock {lock}: the run that took it (pid {pid}, "
        "started 1970-01-01T00:00:00Z) is no longer running and this filesystem has no flock; "
        "delete the lock file, then rerun with --resume to finish s.zarr"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr.lock"]
    lock.unlink()
    code, err = run_tool("2024-07-24T12", "--steps", "2", "--output", "s.zarr")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


# ------------------------------------------------------------------- network


class FlakySource:
    """The input file behind a source that fails as configured (the GFS seam)."""

    def __init__(self, path: Path, fail_from: str | None = None, failures: int = 0) -> None:
        self.inner = sources.build_source(sources.SourceSpec("file", path))
        self.fail_from = np.datetime64(fail_from) if fail_from else None
        self.failures = failures

    def __call__(self, time: np.ndarray, variable: np.ndarray) -> xr.DataArray:
        if self.failures > 0:
            self.failures -= 1
            raise OSError("Connection reset by peer: noaa-gfs-bdp-pds.s3.amazonaws.com")
        if self.fail_from is not None and np.asarray(time).max() >= self.fail_from:
            raise OSError("Network is unreachable: noaa-gfs-bdp-pds.s3.amazonaws.com")
        return self.inner(time, variable)


def serving(source: object) -> Callable[[object, object], object]:
    """A data-source factory for ``run_main(build_source=...)`` that returns ``source``."""
    return lambda spec, times: source


def gfs_args(package_dir: Path) -> list[str]:
    return [*JOB, "--source", "gfs", "--model-package", str(package_dir), "--device", "cpu"]


@pytest.mark.slow
def test_network_lost_part_way_keeps_completed_times_and_resume_continues(
    reference: xr.Dataset, package_dir: Path, input_file: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    path = tmp_path / "net.zarr"
    cut_at_noon = serving(FlakySource(input_file, "2024-07-24T12"))
    assert run_main([*gfs_args(package_dir), "--output", str(path)], build_source=cut_at_noon) == 1
    err = capsys.readouterr().err
    line = one_line(err)
    assert line == (
        "run_corrdiff.py: error: could not reach gfs for the inputs at 2024-07-24T12:00 after 3 "
        f"tries (network unreachable); {sources.OFFLINE_HINT}"
    )
    # Lost after it had delivered: retried, in case it was a hiccup.
    assert err.count("retrying in") == 2
    assert xr.open_zarr(path)["completed"].values.tolist() == [[1, 1, 1], [0, 0, 0]]
    assert not lock_path(path).exists()

    resumed = [*gfs_args(package_dir), "--output", str(path), "--resume", "-q"]
    assert run_main(resumed, build_source=serving(FlakySource(input_file))) == 0
    assert_same_ensemble(path, reference)


def test_a_source_never_reached_fails_at_once_in_one_short_line(
    package_dir: Path, input_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class Offline:
        def __call__(self, time: object, variable: object) -> None:
            # What obstore says offline, Rust debug dump and all (abridged).
            raise RuntimeError(
                "Generic S3 error: Error performing GET https://s3.us-east-1.amazonaws.com/"
                "noaa-gfs-bdp-pds/gfs.20240724/06/atmos/gfs.t06z.pgrb2.0p25.f000.idx in 2.8s, "
                "after 10 retries - HTTP error: error sending request\n\nDebug source:\nGeneric "
                '{\n    store: "S3",\n    source: ConnectError(\n        "dns error",\n    ),\n}'
            )

    args = [*gfs_args(package_dir), "--output", str(tmp_path / "o.zarr")]
    assert run_main(args, build_source=serving(Offline())) == 1
    err = capsys.readouterr().err
    line = one_line(err)
    assert line == (
        "run_corrdiff.py: error: could not reach gfs for the inputs at 2024-07-24T06:00 "
        f"(DNS lookup failed); {sources.OFFLINE_HINT}"
    )
    assert len(line) < 200 and "retrying" not in err and "Debug source" not in err
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.slow  # network faults, quickly: test_real_clients
def test_a_brief_network_hiccup_is_retried(
    reference: xr.Dataset, package_dir: Path, input_file: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    flaky = FlakySource(input_file, failures=2)
    args = [*gfs_args(package_dir), "--output", str(tmp_path / "h.zarr")]
    assert run_main(args, build_source=serving(flaky)) == 0
    assert capsys.readouterr().err.count("retrying in") == 2
    assert_same_ensemble(tmp_path / "h.zarr", reference)


def test_a_corrupt_download_points_at_the_cache(
    package_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    class Corrupt:
        cache = str(tmp_path / "cache" / "gfs")

        def __call__(self, time: object, variable: object) -> None:
            raise RuntimeError("ECCODES ERROR: grib_handle_new_from_message: truncated message")

    args = [*gfs_args(package_dir), "--output", str(tmp_path / "c.zarr")]
    assert run_main(args, build_source=serving(Corrupt())) == 1
    line = one_line(capsys.readouterr().err)
    assert "truncated message" in line
    assert line.endswith(
        f"if a cached download is corrupt, delete {tmp_path}/cache/gfs and run again (a run "
        "with --resume keeps what it has done)"
    )


def test_the_real_gfs_source_names_its_cache_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EARTH2STUDIO_CACHE", str(tmp_path))
    hint = sources.cache_hint(sources.build_source(sources.SourceSpec("gfs")))
    assert (
        hint == f"delete {tmp_path}/gfs and run again (a run with --resume keeps what it has done)"
    )


def test_unreachable_hosts_are_listed_together_before_anything_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default model and GFS, with sockets disabled (pytest-socket) and no cache."""
    from corrdiff_tools import model

    monkeypatch.setenv("EARTH2STUDIO_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    loaded = []
    monkeypatch.setattr(model, "import_model_stack", lambda *a: loaded.append("imports"))
    start = time.monotonic()
    code = run_main(["2024-07-24T12", "--device", "cpu"])
    err = capsys.readouterr().err
    line = one_line(err)
    assert code == 1 and time.monotonic() - start < 15
    assert line.startswith(
        "run_corrdiff.py: error: cannot reach api.ngc.nvidia.com (model weights) or "
        "s3.us-east-1.amazonaws.com (GFS inputs)"
    )
    assert line.endswith(sources.OFFLINE_HINT)
    assert loaded == [] and list(tmp_path.iterdir()) == []


def test_a_cached_source_is_tried_when_its_host_is_unreachable(
    package_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from corrdiff_tools import network

    (tmp_path / "cache" / "gfs").mkdir(parents=True)
    (tmp_path / "cache" / "gfs" / "0a1b2c").write_bytes(b"grib")
    monkeypatch.setenv("EARTH2STUDIO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(
        network.Probe,
        "unreachable",
        lambda self: [(e, "DNS lookup failed") for e in self.endpoints],
    )
    tried = []

    def factory(spec: object, times: object) -> object:
        tried.append(spec)
        raise RunError("stop here")

    from corrdiff_tools import cli

    monkeypatch.setattr(sources, "build_source", factory)
    args = [*gfs_args(package_dir), "--output", str(tmp_path / "c.zarr")]
    assert cli.run_main(args) == 1
    err = capsys.readouterr().err
    assert len(tried) == 1
    assert (
        "cannot reach s3.us-east-1.amazonaws.com for the GFS inputs (DNS lookup failed): trying "
        f"earth2studio's cache in {tmp_path}/cache/gfs" in err
    )


def test_model_download_failure_is_one_line_with_the_offline_route(
    input_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Reachable at first (the probe), then the download fails."""
    from earth2studio.models.auto import Package

    from corrdiff_tools import network

    def unreachable(self: object, name: str) -> str:
        raise OSError("Cannot connect to host api.ngc.nvidia.com:443 [Name or service not known]")

    monkeypatch.setattr(Package, "resolve", unreachable)
    monkeypatch.setattr(network.Probe, "unreachable", lambda self: [])
    monkeypatch.setenv("EARTH2STUDIO_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    code = run_main(["2024-07-24T12", "--source", str(input_file), "--device", "cpu"])
    line = one_line(capsys.readouterr().err)
    assert code == 1
    assert line == (
        "run_corrdiff.py: error: could not download the model package "
        "ngc://models/nvidia/modulus/corrdiff_inference_package@1 (DNS lookup failed): "
        f"{sources.OFFLINE_HINT}"
    )
    assert list(tmp_path.iterdir()) == [tmp_path / "cache"]


# ------------------------------------------------------------------- memory


def test_out_of_memory_names_batch_size_and_resume_finishes(
    reference: xr.Dataset, run_tool: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = CorrDiffSampler.residuals

    def small_gpu(self: CorrDiffSampler, condition: object, seeds: list[int]) -> object:
        if len(seeds) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 7.5 GiB")
        return real(self, condition, seeds)

    monkeypatch.setattr(CorrDiffSampler, "residuals", small_gpu)
    code, err = run_tool(*JOB, "--output", "oom.zarr")
    assert code == 1
    assert one_line(err) == (
        "run_corrdiff.py: error: out of device memory with a batch of 2 sample(s): rerun with "
        "--resume and a smaller --batch-size (e.g. --batch-size 1); completed samples are kept"
    )
    code, err = run_tool(*JOB[:-2], "--batch-size", "1", "--output", "oom.zarr", "--resume")
    assert code == 0, err
    # Batches of 1 instead of 2 change the summation order inside convolutions: ~1 ulp.
    assert_same_ensemble(tmp_path / "oom.zarr", reference, exact=False)


def test_automatic_batch_size_backs_off(
    loaded_model: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import datetime

    from corrdiff_tools.downscale import Job, downscale
    from corrdiff_tools.synthetic import synthetic_inputs

    sampler = CorrDiffSampler(loaded_model, replace(PRESETS["blog"], steps=2))
    real = CorrDiffSampler.residuals
    monkeypatch.setattr(
        CorrDiffSampler,
        "residuals",
        lambda self, c, seeds: (
            (_ for _ in ()).throw(MemoryError()) if len(seeds) > 1 else real(self, c, seeds)
        ),
    )
    array = synthetic_inputs([datetime(2024, 7, 24, 12)]).sel(lat=store.LR_LAT, lon=store.LR_LON)
    fields = {v: array.sel(variable=v).values[0] for v in store.INPUT_VARIABLES}

    class Sink:
        def write_inputs(self, *a: object) -> None: ...
        def write_regression(self, *a: object) -> None: ...
        def write_samples(self, *a: object) -> None: ...

    timings = downscale(
        [Job((0,), datetime(2024, 7, 24, 12), 0, (0, 1, 2, 3))], lambda job: fields, sampler, Sink,
        seed=0, batch_size=4, adaptive_batch=True,
    )  # fmt: skip
    assert timings.batch_sizes == [1, 1, 1, 1] and timings.samples == 4


# ------------------------------------------------------------------- disk


def test_disk_full_mid_run_is_one_line_and_the_store_resumes(
    reference: xr.Dataset, run_tool: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = StoreWriter._array
    writes = {"fields": 0}

    def filling_disk(self: StoreWriter, name: str) -> object:
        if name in OUTPUT_VARIABLES:
            writes["fields"] += 1
            if writes["fields"] == 10:  # the 2nd variable of the 3rd sample
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name)

    monkeypatch.setattr(StoreWriter, "_array", filling_disk)
    code, err = run_tool(*JOB, "--output", "full.zarr")
    assert code == 1
    assert one_line(err) == (
        "run_corrdiff.py: error: could not write to full.zarr (No space left on device): free some "
        "space or fix the permissions, then rerun with --resume (what was completed is kept)"
    )
    monkeypatch.setattr(StoreWriter, "_array", real)
    assert xr.open_zarr(tmp_path / "full.zarr")["completed"].values.tolist() == [
        [1, 1, 0],
        [0, 0, 0],
    ]
    assert not lock_path(tmp_path / "full.zarr").exists()
    code, err = run_tool(*JOB, "--output", "full.zarr", "--resume")
    assert code == 0, err
    assert_same_ensemble(tmp_path / "full.zarr", reference)


def test_unwritable_output_at_creation(
    run_tool: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(xr.Dataset, "to_zarr", denied)
    code, err = run_tool("2024-07-24T12", "--steps", "2", "--output", "denied.zarr")
    assert code == 1
    assert one_line(err).startswith(
        "run_corrdiff.py: error: could not create denied.zarr (Permission denied)"
    )
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------- broken packages


def test_package_with_a_missing_checkpoint(run_tool: Run, tmp_path: Path) -> None:
    from corrdiff_tools.synthetic import build_package

    build_package(tmp_path / "pkg", zipped=False)
    (tmp_path / "pkg" / "corrdiff_inference_package" / "checkpoints" / "diffusion.mdlus").unlink()
    code, err = run_tool("2024-07-24T12", "--model-package", str(tmp_path / "pkg"))
    assert code == 2
    assert one_line(err).endswith(
        "corrdiff_inference_package/checkpoints/diffusion.mdlus is missing"
    )


def _rewrite_member(checkpoint: Path, member: str, change: Callable[[bytes], bytes]) -> None:
    """Replace one file inside a ``.mdlus`` checkpoint (a zip) by ``change`` of it."""
    import zipfile

    with zipfile.ZipFile(checkpoint) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    contents[member] = change(contents[member])
    with zipfile.ZipFile(checkpoint, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data)


def _rewrite_args(checkpoint: Path, change: Callable[[dict], None]) -> None:
    import json

    def edit(data: bytes) -> bytes:
        args = json.loads(data)
        change(args)
        return json.dumps(args).encode()

    _rewrite_member(checkpoint, "args.json", edit)


def test_a_checkpoint_missing_a_weight_is_refused_not_left_at_zero(
    run_tool: Run, tmp_path: Path
) -> None:
    """The load is strict: a weight the checkpoint lacks does not stay at its zero start."""
    import io

    from corrdiff_tools.synthetic import build_package

    build_package(tmp_path / "pkg", zipped=False)
    checkpoint = (
        tmp_path / "pkg" / "corrdiff_inference_package" / "checkpoints" / "regression.mdlus"
    )
    dropped = []

    def drop_a_weight(data: bytes) -> bytes:
        weights = torch.load(io.BytesIO(data), weights_only=True)
        dropped.append(next(key for key in weights if key.endswith(".weight")))
        del weights[dropped[0]]
        buffer = io.BytesIO()
        torch.save(weights, buffer)
        return buffer.getvalue()

    _rewrite_member(checkpoint, "model.pt", drop_a_weight)
    code, err = run_tool("2024-07-24T12", "--steps", "2", "--model-package", str(tmp_path / "pkg"))
    assert code == 2
    assert re.search(f"could not be loaded .*Missing key.*{re.escape(dropped[0])}", one_line(err))
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [("this", "EDMPrecondSR"), ("os", "system"), ("physicsnemo.models.mlp", "FullyConnected")],
)
def test_a_package_naming_foreign_code_is_refused_before_import(
    run_tool: Run, tmp_path: Path, module: str, name: str
) -> None:
    from corrdiff_tools.synthetic import build_package

    build_package(tmp_path / "pkg", zipped=False)
    checkpoint = tmp_path / "pkg" / "corrdiff_inference_package" / "checkpoints" / "diffusion.mdlus"

    def change(args: dict) -> None:
        args.update({"__module__": module, "__name__": name})

    _rewrite_args(checkpoint, change)
    imported = set(sys.modules)
    code, err = run_tool("2024-07-24T12", "--steps", "2", "--model-package", str(tmp_path / "pkg"))
    assert code == 2
    assert one_line(err).endswith(
        f"checkpoints/diffusion.mdlus asks to import {module}.{name}, which a CorrDiff package "
        "does not use (diffusion: EDMPrecondSR or EDMPrecondSuperResolution); refusing to load "
        "it (a model package is code: use only packages you trust)"
    )
    assert module == "os" or module not in set(sys.modules) - imported
    assert not (tmp_path / "outputs").exists()


def test_a_zip_bomb_package_is_refused_before_extraction(run_tool: Run, tmp_path: Path) -> None:
    import zipfile

    (tmp_path / "bomb").mkdir()
    with zipfile.ZipFile(tmp_path / "bomb" / "corrdiff_inference_package.zip", "w",
                         zipfile.ZIP_DEFLATED) as archive:  # fmt: skip
        archive.writestr("corrdiff_inference_package/checkpoints/regression.mdlus", b"")
        archive.writestr("corrdiff_inference_package/zeros.bin", bytes(300 * 2**20))
    code, err = run_tool("2024-07-24T12", "--model-package", str(tmp_path / "bomb"))
    assert code == 2
    assert "would expand to 0.3 GiB from 0 MiB" in one_line(err)
    assert "this is not a CorrDiff package" in one_line(err)
    cache = Path(os.environ["CORRDIFF_TOOLS_CACHE"]) / "packages"
    assert not any(p.name.startswith(".extract-") for p in cache.glob("*"))


def test_resume_knows_inputs_and_packages_by_content_not_spelling(
    run_tool: Run, tmp_path: Path, input_file: Path, package_dir: Path
) -> None:
    import shutil

    local = tmp_path / "in.nc"
    shutil.copy(input_file, local)
    args = ("2024-07-24T12", "--steps", "2", "--output", "r.zarr")
    assert run_tool(*args, "--source", "in.nc", "--samples", "1")[0] == 0
    # The same file, spelled absolutely and through a symlink: the same source.
    (tmp_path / "link.nc").symlink_to(local)
    code, err = run_tool(*args, "--samples", "2", "--source", str(tmp_path / "link.nc"), "--resume")
    assert code == 2 and "samples: store has 1, this run asks for 2" in err  # only that
    assert "source:" not in err and "model_package:" not in err
    # New content behind the same path: refused, naming the fingerprint.
    changed = load_inputs(local)
    changed.loc[{"variable": "t2m"}] = changed.sel(variable="t2m") + 0.5
    changed.to_netcdf(local)
    code, err = run_tool(*args, "--source", "in.nc", "--samples", "1", "--resume")
    assert code == 2
    assert "was made with other settings (source: store has {'path': " in err
    assert "'sha256': " in err
    # A package whose weights changed behind the same path is refused too.
    shutil.copytree(package_dir, tmp_path / "pkg")
    package_args = ("2024-07-24T12", "--steps", "2", "--model-package", "pkg")
    assert run_tool(*package_args, "--output", "p.zarr")[0] == 0
    lively_package(tmp_path / "pkg", seed=9)
    code, err = run_tool(*package_args, "--output", "p.zarr", "--resume")
    assert code == 2 and "(model_package: store has {'path': " in err


def test_package_with_the_wrong_grid(run_tool: Run, tmp_path: Path) -> None:
    from corrdiff_tools.synthetic import build_package

    build_package(tmp_path / "pkg", zipped=False, seed=3)
    dataset = (
        tmp_path
        / "pkg"
        / "corrdiff_inference_package"
        / "dataset"
        / "2023-01-24-cwb-4years_5times.zarr"
    )
    group = zarr.open_group(str(dataset), mode="r+")
    for name in ("XLAT", "XLONG"):
        del group[name]
        group.create_array(name, data=np.zeros((100, 100), dtype="float32"))
    code, err = run_tool("2024-07-24T12", "--steps", "2", "--model-package", str(tmp_path / "pkg"))
    assert code == 2
    line = one_line(err)
    assert "dataset/2023-01-24-cwb-4years_5times.zarr has XLAT/XLONG of shape (100, 100)" in line
    assert not (tmp_path / "outputs").exists()


# ------------------------------------------------------------------- stores from elsewhere


def test_run_tool_refuses_to_resume_a_store_it_did_not_write(run_tool: Run, tmp_path: Path) -> None:
    xr.Dataset({"t2m": (("time",), [1.0])}).to_zarr(tmp_path / "other.zarr")
    code, err = run_tool("2024-07-24T12", "--output", "other.zarr", "--resume")
    assert code == 2 and "is not a corrdiff-tools store; refusing to touch it" in err


def test_plot_tool_on_an_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from datetime import datetime

    lat, lon = np.meshgrid(np.linspace(20, 27, 448), np.linspace(117, 125, 448), indexing="ij")
    store.create_store(
        tmp_path / "empty.zarr", store.StoreLayout([datetime(2024, 7, 24)], 2, lat, lon), {}, {}
    )
    assert plot_main([str(tmp_path / "empty.zarr")]) == 2
    assert (
        "nothing to draw: sample maps asked for, and the store's selected samples are not "
        "complete (2024-07-24T00:00: 0 of 2 complete; each needs at least one complete sample)"
    ) in capsys.readouterr().err
    assert not (tmp_path / "empty-plots").exists()


def test_plot_tool_skips_a_nan_filled_sample_of_a_foreign_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_cli_plot import blog_store

    path = blog_store(tmp_path / "blog.zarr", samples=2)
    zarr.open_group(str(path), mode="r+")["t2m"][0, 1] = np.full(
        (448, 448), np.nan, dtype="float32"
    )
    assert plot_main([str(path), "--dpi", "20", "--jobs", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "blog-plots").iterdir() if p.name != MANIFEST) == [
        "corrdiff-2024-07-24T12-sample-00.jpg"
    ]
    assert "skipping corrdiff-2024-07-24T12-sample-01.jpg" in capsys.readouterr().err


# ------------------------------------------------------------------- typed garbage


@given(st.text(max_size=30), st.integers(min_value=1, max_value=50))
def test_sample_selectors_parse_or_refuse(text: str, size: int) -> None:
    try:
        chosen = parse_selection(text, size, "--sample")
    except UsageError as err:
        assert "\n" not in str(err) and "--sample" in str(err)
    else:
        assert chosen == sorted(set(chosen)) and all(0 <= i < size for i in chosen)


@given(st.lists(st.text(max_size=20), max_size=3))
def test_thresholds_parse_or_refuse(values: list[str]) -> None:
    try:
        got = parse_thresholds(values)
    except UsageError as err:
        assert "\n" not in str(err) and "--threshold" in str(err)
    else:
        assert set(got) <= {"mrr", "t2m", "wind"} and all(np.isfinite(v) for v in got.values())


@given(
    st.integers(min_value=0, max_value=9), st.integers(min_value=0, max_value=9), st.integers(1, 12)
)
def test_sample_ranges_are_inclusive(low: int, high: int, size: int) -> None:
    text = f"{low}-{high}"
    if low > high or high >= size:
        with pytest.raises(UsageError):
            parse_selection(text, size, "--sample")
    else:
        assert parse_selection(text, size, "--sample") == list(range(low, high + 1))


# ------------------------------------------------------------------- round three: lost data


@pytest.mark.slow
def test_overwrite_keeps_the_old_store_when_the_new_input_fails_validation(
    reference: xr.Dataset, run_tool: Run, input_file: Path, tmp_path: Path
) -> None:
    """A NaN at a later time of the file was found only after --overwrite had replaced."""
    assert run_tool(*JOB, "--output", "s.zarr")[0] == 0
    before = {p: p.read_bytes() for p in (tmp_path / "s.zarr").rglob("*") if p.is_file()}
    broken = load_inputs(input_file)
    noon = list(broken["time"].values).index(np.datetime64("2024-07-24T12:00", "ns"))
    row = int(np.argmin(np.abs(broken["lat"].values - 23.0)))
    broken.values[noon, list(broken["variable"].values).index("t850"), row, :] = np.nan
    broken.to_netcdf(tmp_path / "broken.nc")
    code, err = run_tool(*JOB, "--source", "broken.nc", "--output", "s.zarr", "--overwrite")
    assert code == 2
    assert one_line(err) == (
        "run_corrdiff.py: error: input t850 at 2024-07-24T12:00 in --source broken.nc has 40 "
        "NaN/inf value(s) of 1440 on the model's input grid: fill the gaps or pick another time"
    )
    after = {p: p.read_bytes() for p in (tmp_path / "s.zarr").rglob("*") if p.is_file()}
    assert after == before  # not one byte of the old ensemble changed
    assert_same_ensemble(tmp_path / "s.zarr", reference)


@pytest.mark.parametrize(
    "array",
    [
        pytest.param("t2m", marks=pytest.mark.slow),  # an output: every sample recomputed
        pytest.param("lr_t850", marks=pytest.mark.slow),  # an input: each time recomputed
        pytest.param("completed", marks=pytest.mark.slow),  # the record itself
        pytest.param("time", marks=pytest.mark.slow),  # a coordinate
    ],
)
def test_resume_recreates_an_array_whose_metadata_was_removed(
    array: str,
    reference: xr.Dataset,
    run_tool: Run,
    tmp_path: Path,
) -> None:
    """The consolidated metadata still listed it: the store "resumed" with the array gone."""
    import shutil

    path = tmp_path / "s.zarr"
    assert run_tool(*JOB, "--output", "s.zarr")[0] == 0
    shutil.rmtree(path / array)
    code, err = run_tool(*JOB, "--output", "s.zarr", "--resume")
    assert code == 0, err
    assert f"s.zarr lacked the metadata of {array}: recreated empty" in err
    assert (path / array / "zarr.json").is_file()
    # The store is still ours, with its settings and provenance (xarray's append used to
    # replace the root attributes).
    assert store.is_store(path) and store.read_settings(path)["samples"] == 3
    assert "history" in store.read_attrs(path)
    assert array in zarr.open_group(str(path), mode="r", use_consolidated=False)
    assert array in zarr.open_group(str(path), mode="r", use_consolidated=True)
    assert_same_ensemble(path, reference)
    got = xr.open_zarr(path)
    for name in ("lr_t850", "t2m_regression", "time"):
        np.testing.assert_array_equal(got[name].values, reference[name].values)
    assert got["t2m"].attrs["units"] == "K" and got["time"].dtype == reference["time"].dtype


@pytest.mark.slow
def test_a_store_whose_array_has_another_shape_is_refused(run_tool: Run, tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    assert run_tool(*JOB, "--output", "s.zarr")[0] == 0
    meta = json.loads((path / "mrr" / "zarr.json").read_text())
    meta["shape"][1] = 5
    (path / "mrr" / "zarr.json").write_text(json.dumps(meta))
    code, err = run_tool(*JOB, "--output", "s.zarr", "--resume")
    assert code == 2
    assert one_line(err) == (
        "run_corrdiff.py: error: --resume s.zarr is a damaged store: mrr has shape "
        "(2, 5, 448, 448), expected (2, 3, 448, 448); restore it from a copy, or start a new "
        "store (--overwrite or another --output)"
    )


DAMAGES = {
    "root metadata cut short": (
        lambda root: root.write_text(root.read_text()[:200]),
        "its root metadata {root} does not parse (JSONDecodeError)",
    ),
    "root metadata removed": (lambda root: root.unlink(), "its root metadata {root} is missing"),
    "settings attribute garbled": (
        lambda root: root.write_text(
            json.dumps(
                {
                    **(meta := json.loads(root.read_text())),
                    "attributes": {**meta["attributes"], store.SETTINGS_ATTR: '{"times": ['},
                },
            )
        ),
        "its corrdiff_tools_settings attribute is not the JSON object it should be",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_store_is_called_damaged_and_left_alone(
    damage: str, run_tool: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: "not a corrdiff-tools store", or an unexpected JSONDecodeError."""
    path = tmp_path / "s.zarr"
    assert run_tool("2024-07-24T12", "--steps", "2", "--output", "s.zarr")[0] == 0
    change, why = DAMAGES[damage]
    change(path / "zarr.json")
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    for flag in ("--resume", "--overwrite"):
        code, err = run_tool("2024-07-24T12", "--steps", "2", "--output", "s.zarr", flag)
        assert code == 2
        assert one_line(err) == (
            "run_corrdiff.py: error: --output s.zarr is a damaged store: "
            f"{why.format(root='s.zarr/zarr.json')}; neither "
            "--resume nor --overwrite acts on a store it cannot read: restore it from a copy, "
            "or move it away and run again"
        )
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before
    capsys.readouterr()
    if damage != "settings attribute garbled":  # the plot tool does not need the settings
        assert plot_main([str(path), "--outdir", str(tmp_path / "plots")]) == 2
        err = capsys.readouterr().err
        assert one_line(err) == (
            f"plot_corrdiff.py: error: {path} is a damaged store: "
            f"{why.format(root=path / 'zarr.json')}; restore it from a copy"
        )
        assert not (tmp_path / "plots").exists()


@pytest.mark.slow
def test_resume_after_staging_matches_inputs_and_package_by_content(
    reference: xr.Dataset,
    run_tool: Run,
    input_file: Path,
    package_dir: Path,
    tmp_path: Path,
) -> None:
    """HPC jobs copy inputs and packages to a per-job $TMPDIR: not a different input."""
    import shutil

    path = tmp_path / "s.zarr"
    assert run_tool(*JOB, "--output", "s.zarr")[0] == 0
    StoreWriter(path).unmark([(1, 0), (1, 1)])  # as if killed in time 1's first batch
    staged = tmp_path / "job-1234"
    shutil.copytree(package_dir, staged / "pkg")
    shutil.copy(input_file, staged / "inputs.nc")
    code, err = run_tool(
        *JOB,
        *("--source", str(staged / "inputs.nc"), "--model-package", str(staged / "pkg")),
        *("--output", "s.zarr", "--resume"),
    )
    assert code == 0, err
    assert f"source {input_file.resolve()} is now {staged / 'inputs.nc'} (same content)" in err
    assert f"model_package {package_dir.resolve()} is now {staged / 'pkg'} (same content)" in err
    assert "resuming s.zarr: 2 sample(s) left to compute" in err
    assert_same_ensemble(path, reference)
    # Other content at the staged path is still another input.
    changed = load_inputs(staged / "inputs.nc")
    changed.loc[{"variable": "t2m"}] = changed.sel(variable="t2m") + 0.5
    changed.to_netcdf(staged / "inputs.nc")
    StoreWriter(path).unmark([(1, 2)])
    code, err = run_tool(
        *JOB, "--source", str(staged / "inputs.nc"), "--output", "s.zarr", "--resume"
    )
    assert code == 2 and "was made with other settings (source: store has" in err


@pytest.mark.slow
def test_a_resumed_sample_is_bitwise_in_its_own_batch_and_to_rounding_alone(
    reference: xr.Dataset, run_tool: Run, tmp_path: Path
) -> None:
    """What the README promises: whole batches bitwise, a sample alone to float32 rounding.

    JOB computes 3 samples in batches of 2: [0, 1] and [2]. A kill leaves whole batches
    missing, so their recomputation is bitwise; sample 1 recomputed alone (a damaged
    chunk) sums its convolutions in another order.
    """
    path = tmp_path / "s.zarr"
    assert run_tool(*JOB, "--output", "s.zarr")[0] == 0
    StoreWriter(path).unmark([(0, 0), (0, 1)])  # the whole first batch of time 0
    assert run_tool(*JOB, "--output", "s.zarr", "--resume")[0] == 0
    assert_same_ensemble(path, reference)  # bitwise
    StoreWriter(path).unmark([(1, 1)])  # one sample of a batch of two
    assert run_tool(*JOB, "--output", "s.zarr", "--resume")[0] == 0
    got = xr.open_zarr(path)["t2m"].values
    expected = reference["t2m"].values
    np.testing.assert_array_equal(
        got[[0, 0, 1, 1], [0, 1, 0, 2]], expected[[0, 0, 1, 1], [0, 1, 0, 2]]
    )
    # Sample 1 of time 1, recomputed alone: float32 rounding of a ~300 K field at most.
    assert np.abs(got[1, 1] - expected[1, 1]).max() <= 4 * np.spacing(np.float32(300.0))


# ------------------------------------------------------------------- round three: numbers


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        pytest.param(
            float("nan"),
            "t2m has 200704 NaN/inf value(s) of 200704, so nothing",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            1e15, "outside its physical range 100 to 450 K, so nothing", marks=pytest.mark.slow
        ),
    ],
    ids=["NaN", "1e15 K"],
)
def test_a_batch_that_is_not_physical_is_never_marked_complete(
    value: float,
    fragment: str,
    reference: xr.Dataset,
    run_tool: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settings that gave every value NaN, or t2m in the 1e15 K, ended "done", exit 0."""
    real = CorrDiffSampler.residuals
    calls = []

    def second_batch_breaks(self: CorrDiffSampler, condition: object, seeds: list[int]) -> object:
        calls.append(seeds)
        out = real(self, condition, seeds)
        if len(calls) == 2:  # time 0's second batch: sample 2 alone
            out = out.clone()
            out[:, 1] = value  # t2m, in normalised units
        return out

    monkeypatch.setattr(CorrDiffSampler, "residuals", second_batch_breaks)
    code, err = run_tool(*JOB, "--output", "s.zarr")
    assert code == 1
    line = one_line(err)
    assert line.startswith("run_corrdiff.py: error: sample(s) 2 at 2024-07-24T06:00: t2m ")
    assert fragment in line, line
    assert "stored: the sampler settings (deterministic sampler, 2 euler step(s)" in line
    done = xr.open_zarr(tmp_path / "s.zarr")["completed"].values
    np.testing.assert_array_equal(done, [[1, 1, 0], [0, 0, 0]])  # the batch before is kept
    monkeypatch.setattr(CorrDiffSampler, "residuals", real)
    assert run_tool(*JOB, "--output", "s.zarr", "--resume")[0] == 0
    assert_same_ensemble(tmp_path / "s.zarr", reference)


@pytest.mark.parametrize("where", ["batch", "regression"])
def test_host_out_of_memory_names_batch_size_as_on_a_gpu(
    where: str, run_tool: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU's allocator raises a plain RuntimeError: it was "unexpected RuntimeError"."""
    message = (
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
        "memory: you tried to allocate 400000000000 bytes. Error code 12 (Cannot allocate memory)"
    )

    def exhausted(self: CorrDiffSampler, *args: object) -> object:
        raise RuntimeError(message)

    name = "residuals" if where == "batch" else "regression_mean"
    monkeypatch.setattr(CorrDiffSampler, name, exhausted)
    code, err = run_tool(*JOB, "--output", "oom.zarr")
    assert code == 1
    if where == "batch":
        assert one_line(err) == (
            "run_corrdiff.py: error: out of host memory with a batch of 2 sample(s): rerun with "
            "--resume and a smaller --batch-size (e.g. --batch-size 1); completed samples are kept"
        )
    else:
        assert one_line(err).startswith(
            "run_corrdiff.py: error: out of host memory computing the regression mean at "
            "2024-07-24T06:00 (one sample's worth): this machine cannot run the model"
        )
    # Any other RuntimeError is not called memory.
    monkeypatch.setattr(
        CorrDiffSampler, name, lambda self, *a: (_ for _ in ()).throw(RuntimeError("shapes"))
    )
    code, err = run_tool(*JOB, "--output", "other.zarr")
    assert code == 1 and "unexpected RuntimeError: shapes" in one_line(err)


# ------------------------------------------------------------------- round three, second pass


@pytest.mark.parametrize(
    "coordinate", [pytest.param(name, marks=pytest.mark.slow) for name in ("lat", "time")]
)
def test_resume_rewrites_coordinates_whose_chunks_were_lost(
    coordinate: str, reference: xr.Dataset, run_tool: Run, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """It said "complete" and left lat all NaN (or time NaT), which nothing could draw."""
    path = tmp_path / "s.zarr"
    assert run_tool(*JOB, "--output", "s.zarr")[0] == 0
    for chunk in (path / coordinate / "c").rglob("*"):
        if chunk.is_file():
            chunk.unlink()
    assert plot_main([str(path), "--outdir", str(tmp_path / "p")]) == 2
    assert "is a damaged store: its " in capsys.readouterr().err
    code, err = run_tool(*JOB, "--output", "s.zarr", "--resume")
    assert code == 0, err
    assert f"s.zarr had damaged coordinates ({coordinate}): rewritten" in err
    got = xr.open_zarr(path)
    np.testing.assert_array_equal(got[coordinate].values, reference[coordinate].values)
    assert_same_ensemble(path, reference)


@pytest.mark.slow
def test_resume_rebuilds_consolidated_metadata_that_omits_an_array(
    reference: xr.Dataset, run_tool: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It cleared every completion flag, then crashed with "unexpected KeyError"."""
    path = tmp_path / "s.zarr"
    assert run_tool(*JOB, "--output", "s.zarr")[0] == 0
    root = json.loads((path / "zarr.json").read_text())
    del root["consolidated_metadata"]["metadata"]["t2m"]
    (path / "zarr.json").write_text(json.dumps(root))
    capsys.readouterr()
    assert plot_main([str(path), "--sample", "0", "--time", "0", "--dpi", "20", "--jobs", "1",
                      "--outdir", str(tmp_path / "p")]) == 0  # fmt: skip
    assert "its consolidated metadata omits the array t2m; reading each array's own" in (
        capsys.readouterr().err
    )
    code, err = run_tool(*JOB, "--output", "s.zarr", "--resume")
    assert code == 0, err
    assert "its consolidated metadata omits the array t2m; rebuilding it" in err
    assert "nothing to do: s.zarr is complete" in err  # not one flag was cleared
    assert store.consolidation_problem(path) is None
    assert_same_ensemble(path, reference)


@pytest.mark.slow
def test_overwrite_keeps_the_old_store_until_a_batch_is_complete(
    reference: xr.Dataset, run_tool: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings that gave no physical result replaced a complete store with an empty one."""
    path = tmp_path / "s.zarr"
    assert run_tool(*JOB, "--output", "s.zarr")[0] == 0
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    real = CorrDiffSampler.residuals
    monkeypatch.setattr(
        CorrDiffSampler, "residuals", lambda self, c, seeds: real(self, c, seeds) * np.nan
    )
    code, err = run_tool(*JOB, "--output", "s.zarr", "--overwrite", "--seed", "3")
    assert code == 1 and "so nothing of it was stored" in one_line(err)
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]  # no staging left
    # A run that works replaces it, leaving nothing beside it.
    monkeypatch.setattr(CorrDiffSampler, "residuals", real)
    assert run_tool(*JOB, "--output", "s.zarr", "--overwrite")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
    assert_same_ensemble(path, reference)


def test_a_replacement_left_by_a_killed_overwrite_is_cleared(tmp_path: Path) -> None:
    (tmp_path / "s.zarr").mkdir()
    (tmp_path / ".s.zarr.replacing-12345").mkdir()
    store.clean_leftovers(tmp_path / "s.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


@pytest.mark.slow
def test_times_before_1900_are_downscaled(run_tool: Run, input_file: Path, tmp_path: Path) -> None:
    """A reanalysis of the 1800s: the noise seed took minutes since 1900 and crashed."""
    from datetime import datetime

    from corrdiff_tools.downscale import sample_seed

    old = load_inputs(input_file)
    old = old.assign_coords(time=old["time"].values - np.timedelta64(365 * 125, "D"))
    old.to_netcdf(tmp_path / "old.nc")
    when = str(old["time"].values[2])[:16]
    code, err = run_tool(when, "--samples", "2", "--steps", "2", "--source", "old.nc",
                         "--output", "old.zarr")  # fmt: skip
    assert code == 0, err
    assert xr.open_zarr(tmp_path / "old.zarr")["completed"].values.all()
    seeds = {sample_seed(0, datetime(1899, 7, 24, 12), 0, s) for s in range(3)}
    assert len(seeds) == 3
    # Seeds of times after 1900 are what they always were.
    minutes = int((datetime(2024, 7, 24, 12) - datetime(1900, 1, 1)).total_seconds() // 60)
    expected = np.random.SeedSequence([0, minutes, 0, 1]).generate_state(1, dtype=np.uint64)[0]
    assert sample_seed(0, datetime(2024, 7, 24, 12), 0, 1) == int(expected)


@pytest.mark.parametrize("obstacle", ["directory", "broken link"])
def test_a_lock_path_that_is_not_a_file_is_named(
    obstacle: str, run_tool: Run, tmp_path: Path
) -> None:
    lock = lock_path(tmp_path / "s.zarr")
    if obstacle == "directory":
        lock.mkdir()
    else:
        lock.symlink_to(tmp_path / "nowhere" / "x")
    code, err = run_tool("2024-07-24T12", "--steps", "2", "--output", "s.zarr")
    what = "a directory" if obstacle == "directory" else "a link to nowhere"
    assert code == 1
    assert one_line(err) == (
        f"run_corrdiff.py: error: the lock {lock} is {what}, not a lock file: move it away, "
        "then rerun"
    )


@pytest.mark.slow
def test_resume_knows_the_same_content_in_another_form(
    reference: xr.Dataset, run_tool: Run, input_file: Path, package_dir: Path, tmp_path: Path
) -> None:
    """The package's zip and its unzipped folder; an input file with its variables reordered."""
    import zipfile

    path = tmp_path / "s.zarr"
    assert run_tool(*JOB, "--output", "s.zarr")[0] == 0
    StoreWriter(path).unmark([(1, 0), (1, 1)])
    with zipfile.ZipFile(package_dir / "corrdiff_inference_package.zip") as archive:
        archive.extractall(tmp_path / "unzipped")
    shuffled = load_inputs(input_file)
    shuffled.isel(variable=list(range(shuffled.sizes["variable"]))[::-1]).to_netcdf(
        tmp_path / "shuffled.nc"
    )
    code, err = run_tool(
        *JOB, "--model-package", str(tmp_path / "unzipped"), "--source", "shuffled.nc",
        "--output", "s.zarr", "--resume",
    )  # fmt: skip
    assert code == 0, err
    assert "(same content)" in err
    assert_same_ensemble(path, reference)


def test_an_array_an_older_version_never_wrote_is_not_a_gap(run_tool: Run, tmp_path: Path) -> None:
    """A store from before the regression mean was kept: nothing to recompute."""
    import shutil

    path = tmp_path / "s.zarr"
    assert run_tool(*JOB, "--output", "s.zarr")[0] == 0
    for name in OUTPUT_VARIABLES:
        shutil.rmtree(path / store.regression_name(name))
    zarr.consolidate_metadata(str(path))  # as such a store was written: never listed
    code, err = run_tool(*JOB, "--output", "s.zarr", "--resume")
    assert code == 0, err
    assert "nothing to do: s.zarr is complete" in err and "recreated" not in err
    assert not (path / "t2m_regression").exists()


@pytest.mark.slow
def test_a_store_copied_through_xarray_resumes_with_its_times_intact(
    reference: xr.Dataset, run_tool: Run, tmp_path: Path
) -> None:
    """xarray re-encodes times as CF integers; rewriting them raw corrupted the store."""
    assert run_tool(*JOB, "--output", "a.zarr")[0] == 0
    with xr.open_zarr(tmp_path / "a.zarr") as original:
        original.to_zarr(tmp_path / "b.zarr", mode="w", consolidated=True)
    StoreWriter(tmp_path / "b.zarr").unmark([(1, 2)])
    code, err = run_tool(*JOB, "--output", "b.zarr", "--resume")
    assert code == 0, err
    assert "damaged coordinates" not in err
    got = xr.open_zarr(tmp_path / "b.zarr")
    np.testing.assert_array_equal(got["time"].values, reference["time"].values)
    np.testing.assert_array_equal(got["t2m"].values, reference["t2m"].values)


def test_every_name_a_run_makes_beside_a_store_is_checked(tmp_path: Path) -> None:
    names = store.sibling_names("s.zarr")
    assert [n.split("-")[0] for n in names[:3]] == [
        ".s.zarr.creating",
        ".s.zarr.replacing",
        ".s.zarr.replaced",
    ]
    assert names[3] == "s.zarr.lock"
    # A store name whose --overwrite staging name alone is too long is refused up front.
    from corrdiff_tools.requests import check_writable_location

    longest = max(len(n) for n in names) - len("s.zarr")
    name = "o" * (255 - longest) + ".zarr"
    with pytest.raises(UsageError, match="bytes, more than the 255 this filesystem holds"):
        check_writable_location(tmp_path / name, "--output", store.sibling_names(name))
    assert list(tmp_path.iterdir()) == []


def test_a_swap_that_fails_half_way_puts_the_old_store_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = tmp_path / "s.zarr", tmp_path / ".s.zarr.replacing-1"
    old.mkdir()
    (old / "mine").write_text("old")
    new.mkdir()
    real = os.rename
    calls = []

    def second_fails(src: object, dst: object) -> None:
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError(errno.EXDEV, "cross-device link")
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", second_fails)
    with pytest.raises(OSError):
        store._swap_in(new, old)
    assert (old / "mine").read_text() == "old" and new.is_dir()
