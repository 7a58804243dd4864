"""What only a GPU can show (marked ``gpu``: skipped here, run by ``bench/kit/measure.py``).

The published precision (float16 with channels_last, as earth2studio's ``load_model``
sets it) against float32, bf16 autocast, batch sizing from free device memory, halving
on a real out-of-memory, and a whole run through the command line on the device. The
bounds are those of the tiny test package (``conftest.lively_package``); each test
records what it measured (``record_property``), which the kit's report prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import offline_args

from corrdiff_tools import downscale, model
from corrdiff_tools.sampling import PRESETS
from corrdiff_tools.store import INPUT_VARIABLES, LR_LAT, LR_LON, OUTPUT_VARIABLES

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU"),
]

NOON = datetime(2024, 7, 24, 12)
#: Largest difference allowed from float32 on the same device, per variable (store units).
#: float16 keeps 11 significant bits and bfloat16 8; bf16 on a CPU measured 0.032 K,
#: 0.066 m/s and 0.105 dBZ at most (README, "Precision").
BOUNDS = {
    "float16": {"mrr": 0.1, "t2m": 0.03, "u10m": 0.06, "v10m": 0.06},
    "bfloat16": {"mrr": 0.5, "t2m": 0.15, "u10m": 0.3, "v10m": 0.3},
}


def _inputs(input_file: Path) -> np.ndarray:
    with xr.open_dataarray(input_file) as array:
        box = array.sel(time=np.datetime64(NOON), lat=LR_LAT, lon=LR_LON)
        return np.stack([box.sel(variable=v).values for v in INPUT_VARIABLES]).astype("float32")


def _ensemble(package: Path, precision: str, inputs: np.ndarray) -> np.ndarray:
    loaded, _ = model.load_corrdiff(str(package), model.resolve_device("cuda"), precision)
    sampler = downscale.CorrDiffSampler(loaded, PRESETS["blog"])
    condition = sampler.condition(inputs)
    seeds = [downscale.sample_seed(0, NOON, 0, s) for s in range(2)]
    return sampler.denormalise(
        sampler.regression_mean(condition) + sampler.residuals(condition, seeds)
    )


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_on_a_gpu_is_within_its_bound_of_float32(
    precision: str,
    package_dir: Path,
    input_file: Path,
    record_property: Callable[[str, object], None],
) -> None:
    inputs = _inputs(input_file)
    reference = _ensemble(package_dir, "fp32", inputs)
    reduced = _ensemble(package_dir, precision, inputs)
    dtype = model.PRECISIONS[precision]
    for index, name in enumerate(OUTPUT_VARIABLES):
        worst = float(np.abs(reduced[:, index] - reference[:, index]).max())
        record_property(f"{dtype} max |diff| {name}", worst)
        assert 0 < worst <= BOUNDS[dtype][name], (name, worst)  # in effect, and bounded


def test_fp16_is_loaded_as_published(package_dir: Path) -> None:
    loaded, dtype = model.load_corrdiff(str(package_dir), model.resolve_device("cuda"))
    assert dtype == "float16"
    weights = [p for p in loaded.residual_model.parameters() if p.ndim == 4]
    assert weights and all(p.dtype == torch.float16 for p in weights)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    assert model.resolve_device("cuda").description.startswith(torch.cuda.get_device_name(0))


def test_the_batch_is_sized_from_free_device_memory() -> None:
    gpu = model.resolve_device("cuda")
    free, _ = torch.cuda.mem_get_info(gpu.device)
    size, adaptive = model.default_batch_size(1000, None, gpu)
    assert adaptive and 1 <= size <= 1000
    # What the size leaves free at about 1.7 GiB a sample in fp16: a quarter, within one
    # sample's worth (free memory moves between the two readings).
    per_sample = 1.7 * 2**30
    assert size * per_sample <= free * 0.75 + per_sample
    assert size == 1000 or (size + 2) * per_sample > free * 0.75
    assert model.default_batch_size(1000, 3, gpu) == (3, False)


def test_a_real_out_of_memory_halves_the_batch(
    package_dir: Path, input_file: Path, record_property: Callable[[str, object], None]
) -> None:
    """A ballast tensor leaves room for about three samples: batches of 8 and 4 fail."""
    gpu = model.resolve_device("cuda")
    loaded, _ = model.load_corrdiff(str(package_dir), gpu)
    sampler = downscale.CorrDiffSampler(loaded, replace(PRESETS["blog"], steps=2))
    inputs = _inputs(input_file)
    fields = {name: inputs[i] for i, name in enumerate(INPUT_VARIABLES)}

    def peak(batch: int) -> int:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        condition = sampler.condition(inputs)
        sampler.residuals(condition, list(range(batch)))
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    one, two = peak(1), peak(2)
    per_sample = max(1, two - one)
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(gpu.device)
    room = one + 2 * per_sample + per_sample // 2  # two samples fit, four do not
    ballast = torch.empty(free - room, dtype=torch.uint8, device=gpu.device)

    class Sink:
        def write_inputs(self, *a: object) -> None: ...
        def write_regression(self, *a: object) -> None: ...
        def write_samples(self, *a: object) -> None: ...

    try:
        timings = downscale.downscale(
            [downscale.Job((0,), NOON, 0, tuple(range(8)))], lambda job: fields, sampler, Sink,
            seed=0, batch_size=8, adaptive_batch=True,
        )  # fmt: skip
    finally:
        del ballast
        torch.cuda.empty_cache()
    record_property("batches after halving", timings.batch_sizes)
    record_property("bytes per sample", per_sample)
    assert timings.samples == 8
    assert timings.batch_sizes[0] < 8 and sum(timings.batch_sizes) == 8
    assert len(set(timings.batch_sizes)) == 1  # halved once, then kept


def test_a_run_on_the_gpu_writes_the_store_the_cpu_would_to_the_fp16_bound(
    package_dir: Path,
    input_file: Path,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """The whole command line on the device: fp16, background writes of device results."""
    from corrdiff_tools.cli import run_main

    common = [*offline_args(package_dir, input_file), "2024-07-24T12", "--samples", "4"]
    common = [word for word in common if word not in ("--device", "cpu")]
    assert run_main([*common, "--device", "cuda", "--output", str(tmp_path / "g.zarr")]) == 0
    assert run_main([*common, "--device", "cpu", "--output", str(tmp_path / "c.zarr")]) == 0
    gpu, cpu = xr.open_zarr(tmp_path / "g.zarr"), xr.open_zarr(tmp_path / "c.zarr")
    assert gpu.attrs["precision"] == "float16" and cpu.attrs["precision"] == "float32"
    assert gpu["completed"].values.all()
    for name in OUTPUT_VARIABLES:
        worst = float(np.abs(gpu[name].values - cpu[name].values).max())
        record_property(f"gpu fp16 vs cpu fp32 max |diff| {name}", worst)
        assert worst <= BOUNDS["float16"][name], (name, worst)
