"""Several processes under torchrun (gloo on CPU): one store, the same answer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import offline_args
from hypothesis import given
from hypothesis import strategies as st

from corrdiff_tools import distributed
from corrdiff_tools.store import OUTPUT_VARIABLES

ROOT = Path(__file__).resolve().parents[1]
JOB = ["2024-07-24T06/2024-07-24T12", "--samples", "3", "--steps", "2", "--batch-size", "1"]


def test_ranks_from_torchrun_and_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "SLURM_LOCALID",
    ):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launched_ranks() == (0, 1, 0)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert distributed.launched_ranks() == (5, 8, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert distributed.launched_ranks() == (2, 4, 2)  # torchrun's variables win


def test_single_process_collectives_are_no_ops() -> None:
    context = distributed.Context()
    assert not context.enabled and context.is_root
    assert context.broadcast({"a": 1}) == {"a": 1}
    assert context.gather(3) == [3]
    context.barrier()
    fetch = distributed.broadcast_fetch(len, context)
    assert fetch is len


@given(
    st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=6),
    st.integers(min_value=1, max_value=5),
)
def test_pieces_are_dealt_once_each_and_evenly(jobs: list[int], world: int) -> None:
    counts = [0] * world
    dealt = 0
    for size in jobs:
        samples = tuple(range(size))
        shares = [
            distributed.share(samples, distributed.Context(r, world), dealt) for r in range(world)
        ]
        assert sorted(s for share in shares for s in share) == list(samples)
        for rank, share in enumerate(shares):
            counts[rank] += len(share)
        dealt += size
    assert max(counts) - min(counts) <= 1


def run(
    args: list[str], env_extra: dict[str, str], processes: int = 1
) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    launcher = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
        ]
        if processes > 1
        else [sys.executable]
    )
    return subprocess.run(
        [*launcher, str(ROOT / "run_corrdiff.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def stores(
    package_dir: Path, input_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("distributed")
    common = [*JOB, *offline_args(package_dir, input_file)]
    single = run([*common, "--output", str(base / "single.zarr")], {})
    assert single.returncode == 0, single.stderr
    double = run([*common, "--output", str(base / "double.zarr")], {}, processes=2)
    assert double.returncode == 0, double.stderr
    return {
        "single": base / "single.zarr",
        "double": base / "double.zarr",
        "log": double.stderr,
        "common": common,
    }  # type: ignore[dict-item]


@pytest.mark.slow
def test_two_ranks_write_the_same_store_as_one_process(stores: dict) -> None:
    single = xr.open_zarr(stores["single"]).load()
    double = xr.open_zarr(stores["double"]).load()
    for name in [*OUTPUT_VARIABLES, "completed", "lr_t2m", "lr_refc", "lat", "lon"]:
        np.testing.assert_array_equal(double[name].values, single[name].values)
    assert double["completed"].values.all()


@pytest.mark.slow
def test_one_summary_with_per_rank_throughput(stores: dict) -> None:
    log = stores["log"]
    assert log.count("done: 6 sample(s) for 2 time(s)") == 1
    assert "rank 0: 3 sample(s)" in log and "rank 1: 3 sample(s)" in log
    assert "(rank 0 of 2)" in log


@pytest.mark.slow
def test_resume_a_distributed_run_that_died_part_way(stores: dict, tmp_path: Path) -> None:
    partial = tmp_path / "partial.zarr"
    shutil.copytree(stores["double"], partial)
    group = zarr.open_group(str(partial), mode="r+")
    # What a run killed during time 1 leaves: its pieces unmarked, one of them half-written.
    group["completed"][1, :] = 0
    group["t2m"][1, 2] = np.full((448, 448), np.nan, dtype="float32")
    group["mrr"][1, 1] = np.full((448, 448), np.nan, dtype="float32")
    result = run([*stores["common"], "--output", str(partial), "--resume"], {}, processes=2)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr and "3 sample(s) left to compute" in result.stderr
    resumed = xr.open_zarr(partial).load()
    single = xr.open_zarr(stores["single"]).load()
    for name in [*OUTPUT_VARIABLES, "completed"]:
        np.testing.assert_array_equal(resumed[name].values, single[name].values)


@pytest.mark.slow
def test_two_ranks_give_the_same_stochastic_ensemble_with_churn(
    package_dir: Path, input_file: Path, tmp_path: Path
) -> None:
    """Churn noise is drawn per sample, so the rank count does not change it either."""
    churn = ["--sampler", "stochastic", "--s-churn", "0.5", "--steps", "3", "--sigma-max", "80"]
    job = [word for word in JOB if word not in ("--steps", "2")]  # churn names its steps
    common = [*job, *churn, *offline_args(package_dir, input_file)]
    single = run([*common, "--output", str(tmp_path / "single.zarr")], {})
    assert single.returncode == 0, single.stderr
    double = run([*common, "--output", str(tmp_path / "double.zarr")], {}, processes=2)
    assert double.returncode == 0, double.stderr
    one = xr.open_zarr(tmp_path / "single.zarr").load()
    two = xr.open_zarr(tmp_path / "double.zarr").load()
    assert two.attrs["sampler"] == "stochastic" and two.attrs["S_churn"] == 0.5
    for name in [*OUTPUT_VARIABLES, "completed"]:
        np.testing.assert_array_equal(two[name].values, one[name].values)
