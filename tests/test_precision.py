"""``--precision``: fp32 is the CPU default and bitwise unchanged, bf16 runs and stays within
its measured error, fp16 is refused where physicsnemo cannot compute it, and a store is
never finished in another precision than it was begun in.

The narrow-width figures (speed, max/RMS difference per variable, CRPS, spectra, PDFs)
come from ``bench/precision.py`` and are in bench/RESULTS.md and the README.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from corrdiff_tools import model
from corrdiff_tools.errors import UsageError

OUTPUTS = ("mrr", "t2m", "u10m", "v10m")
RUN = ("2024-07-24T06", "--samples", "2", "--steps", "2")


def test_auto_is_fp32_on_a_cpu_and_fp16_is_refused_there() -> None:
    cpu = model.resolve_device("cpu")
    assert model.resolve_precision("auto", cpu) == "fp32"
    assert model.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(UsageError, match="fp16 needs a GPU.*--precision bf16"):
        model.resolve_precision("fp16", cpu)
    gpu = model.DeviceInfo(torch.device("cuda:0"), "a GPU")  # resolved, never touched
    assert model.resolve_precision("auto", gpu) == "fp16"  # as published


def test_fp16_on_a_cpu_exits_with_one_line_and_writes_nothing(
    run_tool: Callable[..., tuple[int, str]], tmp_path: Path
) -> None:
    code, err = run_tool(*RUN, "--output", "half.zarr", "--precision", "fp16")
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("run_corrdiff.py: error: --precision fp16 needs a GPU")
    assert not (tmp_path / "half.zarr").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_unknown_precision_is_refused_by_the_parser(
    run_tool: Callable[..., tuple[int, str]],
) -> None:
    code, err = run_tool(*RUN, "--precision", "fp8")
    assert code == 2
    assert "--precision: invalid choice: 'fp8'" in err


@pytest.fixture(scope="module")
def stores(
    tmp_path_factory: pytest.TempPathFactory, package_dir: Path, input_file: Path
) -> dict[str, xr.Dataset]:
    """The same run (2 samples, 2 steps) by default, with --precision fp32 and with bf16."""
    from conftest import offline_args

    from corrdiff_tools.cli import run_main

    directory = tmp_path_factory.mktemp("precision")
    found = {}
    for name, extra in (
        ("default", []),
        ("fp32", ["--precision", "fp32"]),
        ("bf16", ["--precision", "bf16"]),
    ):
        output = directory / f"{name}.zarr"
        code = run_main(
            [*offline_args(package_dir, input_file), *RUN, "--output", str(output), *extra]
        )
        assert code == 0
        found[name] = xr.open_zarr(output).load()
    return found


def test_explicit_fp32_is_bitwise_the_default_on_a_cpu(stores: dict[str, xr.Dataset]) -> None:
    for name in OUTPUTS:
        np.testing.assert_array_equal(stores["fp32"][name].values, stores["default"][name].values)
    assert stores["default"].attrs["precision"] == "float32"


def test_bf16_runs_in_bfloat16_within_its_measured_error(stores: dict[str, xr.Dataset]) -> None:
    """Bounds measured on the tiny lively package (2 steps): max |bf16 - fp32| was 0.03 in
    t2m, u10m and v10m, RMS 0.004; asserted with a margin of about 3x. A difference of 0
    would mean bf16 was not in effect at all."""
    bf16, fp32 = stores["bf16"], stores["fp32"]
    assert bf16.attrs["precision"] == "bfloat16"
    for name in ("t2m", "u10m", "v10m"):
        difference = bf16[name].values - fp32[name].values
        spread = float(fp32[name].std())
        assert np.isfinite(bf16[name].values).all()
        assert 0 < np.abs(difference).max() < 0.1, name
        assert np.sqrt(np.mean(difference**2)) < 0.01 * spread, name
        # the regression mean (one call) is within the same bounds
        regression = bf16[f"{name}_regression"].values - fp32[f"{name}_regression"].values
        assert 0 < np.abs(regression).max() < 0.1, name


def test_bf16_autocasts_the_backbones_and_keeps_float32_weights(package_dir: Path) -> None:
    loaded, dtype = model.load_corrdiff(str(package_dir), model.resolve_device("cpu"), "bf16")
    assert dtype == "bfloat16"
    for net in (loaded.regression_model, loaded.residual_model):
        assert type(net.model).__name__ == "AutocastNetwork" and net.model.dtype == torch.bfloat16
        assert net.amp_mode and all(p.dtype == torch.float32 for p in net.parameters())
        # physicsnemo's preconditioner sees float32 from the backbone, as it checks
        x = torch.zeros(1, 4, 448, 448)
    with torch.inference_mode():
        out = loaded.regression_model(x=x, img_lr=torch.zeros(1, 16, 448, 448))
    assert out.dtype == torch.float32 and out.shape == (1, 4, 448, 448)
    again = model.set_precision(loaded, model.resolve_device("cpu"), "bf16")
    assert again == "bfloat16"
    assert type(loaded.residual_model.model.inner).__name__ != "AutocastNetwork"  # not twice
    assert model.set_precision(loaded, model.resolve_device("cpu"), "fp32") == "float32"
    for net in (loaded.regression_model, loaded.residual_model):
        assert type(net.model).__name__ == "SongUNet" and not net.amp_mode  # unwrapped


def test_resume_in_another_precision_is_refused(
    run_tool: Callable[..., tuple[int, str]], tmp_path: Path
) -> None:
    code, err = run_tool("2024-07-24T06", "--samples", "2", "--steps", "2", "--output", "o.zarr")
    assert code == 0, err
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "o.zarr").rglob("*")}
    code, err = run_tool(
        "2024-07-24T06", "--samples", "2", "--steps", "2", "--output", "o.zarr", "--resume",
        "--precision", "bf16",
    )  # fmt: skip
    assert code == 2
    assert "its samples were computed in float32, this run would compute in bfloat16" in err
    assert "--precision fp32" in err
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "o.zarr").rglob("*")} == before


@pytest.mark.gpu
def test_fp16_on_a_gpu_is_the_published_setting(package_dir: Path) -> None:
    gpu = model.resolve_device("cuda")
    loaded, dtype = model.load_corrdiff(str(package_dir), gpu)
    assert dtype == "float16"
    assert all(p.dtype == torch.float16 for p in loaded.residual_model.parameters())
