"""``run_corrdiff.py --benchmark``: size a machine before downloading anything.

For CorrDiff Taiwan, the published architecture with seeded random weights costs exactly
what the real weights cost, so this builds that package (``synthetic.build_package``) in
a temporary directory, loads it through the same path as a real run (earth2studio's
``load_model``, our precision and GroupNorm levers), and times the same sampler on
synthetic inputs. For a package model (``--model cmip6|PATH``) the package itself is
loaded as a run loads it, and timed on random inputs of its own variables and grid
(:func:`package_inputs`). FLOPs are counted by torch's own ``FlopCounterMode`` on the
warm-up calls, not assumed.
"""

from __future__ import annotations

import logging
import tempfile
import time as clock
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from corrdiff_tools.sampling import SamplerSettings
from corrdiff_tools.store import INPUT_VARIABLES, LR_LAT, LR_LON

if TYPE_CHECKING:
    from corrdiff_tools.downscale import Sampler
    from corrdiff_tools.model import DeviceInfo
    from corrdiff_tools.models.declaration import Declaration

logger = logging.getLogger(__name__)


@dataclass
class BenchmarkResult:
    """What one benchmark measured; times in seconds, FLOPs per sample."""

    size: str
    device: str
    precision: str
    samples: int
    batch_size: int
    sampler: SamplerSettings
    compiled: bool
    build: float
    load: float
    first_regression: float
    first_diffusion: float
    regression: float
    diffusion: list[float]
    regression_flops: float
    diffusion_flops: float
    peak_device_bytes: int | None
    peak_host_bytes: int
    #: What was timed, where it is not Taiwan's architecture at ``size`` width.
    network: str = ""

    @property
    def calls_per_sample(self) -> int:
        """Diffusion network calls per sample (Heun: two per step but the last)."""
        return self.sampler.calls_per_sample

    @property
    def total(self) -> float:
        """Steady-state time for the ensemble: one regression pass plus every batch."""
        return self.regression + sum(self.diffusion)

    @property
    def flops(self) -> float:
        """Floating-point operations of the ensemble."""
        return self.regression_flops + self.samples * self.calls_per_sample * self.diffusion_flops

    def table(self, peak_tflops: float | None) -> str:
        """The human-readable report."""
        per_call = sum(self.diffusion) / (len(self.diffusion) * self.calls_per_sample)
        per_sample_call = sum(self.diffusion) / (self.samples * self.calls_per_sample)
        achieved = self.flops / self.total / 1e12
        rows = [
            ("network", self.network or f"{self.size} width, 448x448, random weights"),
            ("device", f"{self.device}, {self.precision}{', compiled' if self.compiled else ''}"),
            (
                "job",
                f"{self.samples} sample(s), batch {self.batch_size}, {self.sampler.describe()}",
            ),
            *([] if self.network else [("build package", f"{self.build:.2f} s (not in a run)")]),
            ("load", f"{self.load:.2f} s (load_model, precision, to device)"),
            (
                "first calls",
                f"regression {self.first_regression:.3f} s, diffusion {self.first_diffusion:.3f} s"
                + (" (include compiling)" if self.compiled else " (include setup)"),
            ),
            ("regression", f"{self.regression:.3f} s per call (once per time and lead time)"),
            (
                "diffusion",
                f"{per_call:.3f} s per call of up to {self.batch_size} sample(s), "
                f"{per_sample_call:.3f} s per sample and call",
            ),
            ("per sample", f"{self.total / self.samples:.3f} s (regression shared)"),
            ("samples/s", f"{self.samples / self.total:.3f}"),
            (
                "FLOP per call",
                f"{self.diffusion_flops / 1e12:.4g} T per sample (diffusion), "
                f"{self.regression_flops / 1e12:.4g} T (regression)",
            ),
            (
                "achieved",
                f"{achieved:.3g} TFLOP/s"
                + (
                    f" = {100 * achieved / peak_tflops:.3g}% of --peak-tflops {peak_tflops:g}"
                    if peak_tflops
                    else " (give --peak-tflops for the fraction of peak)"
                ),
            ),
            ("peak host RSS", f"{self.peak_host_bytes / 2**30:.2f} GiB"),
        ]
        if self.peak_device_bytes is not None:
            rows.append(("peak device", f"{self.peak_device_bytes / 2**30:.2f} GiB allocated"))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows) + "\n"


def synthetic_model_inputs(seed: int = 0) -> np.ndarray:
    """Plausible inputs on the model's own 36 x 40 grid, shape (12, 36, 40)."""
    from corrdiff_tools.synthetic import synthetic_inputs

    array = synthetic_inputs([datetime(2024, 7, 24, 12)], seed=seed, with_refc=False, margin=0)
    selected = array.sel(variable=list(INPUT_VARIABLES), lat=LR_LAT, lon=LR_LON)
    return np.asarray(selected.values[0], dtype="float32")


def package_inputs(declared: Declaration, seed: int = 0) -> np.ndarray:
    """Random inputs in a package model's variable order on its input grid, float32.

    (variable, lat, lon), or (input lead, variable, lat, lon) for a model that reads
    several. Standard normal values: a network's cost does not depend on them, and
    earth2studio's normalisation maps them to finite conditioning whatever the units.
    """
    shape: tuple[int, ...] = (
        len(declared.inputs),
        declared.input_lat.size,
        declared.input_lon.size,
    )
    if declared.multi_lead:
        shape = (len(declared.input_leads), *shape)
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def timed(function: Callable[[], Any], sync: Callable[[], None]) -> tuple[Any, float]:
    """``function()`` and the seconds it took, the device synchronised before the clock."""
    start = clock.perf_counter()
    result = function()
    sync()
    return result, clock.perf_counter() - start


def run_benchmark(
    device: DeviceInfo,
    size: str,
    samples: int,
    batch_size: int,
    sampler_settings: SamplerSettings,
    compile_nets: bool = False,
    seed: int = 0,
    precision: str = "auto",
) -> BenchmarkResult:
    """Build, load and time a random-weight CorrDiff (see the module docstring)."""
    import torch

    from corrdiff_tools import model, speed, synthetic

    gpu = device.is_gpu

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize(device.device)

    with tempfile.TemporaryDirectory(prefix="corrdiff-benchmark-") as tmp:
        logger.info("building a %s-width package with random weights", size)
        _, build = timed(lambda: synthetic.build_package(tmp, width=size, zipped=False), sync)
        (corrdiff, dtype), load = timed(lambda: model.load_corrdiff(tmp, device, precision), sync)
    if compile_nets:
        speed.compile_networks(corrdiff)
    return time_ensemble(
        corrdiff,
        device,
        samples=samples,
        batch_size=batch_size,
        sampler_settings=sampler_settings,
        compiled=compile_nets,
        seed=seed,
        size=size,
        precision=dtype,
        build=build,
        load=load,
    )


def time_ensemble(
    corrdiff: Any,
    device: DeviceInfo,
    samples: int,
    batch_size: int,
    sampler_settings: SamplerSettings,
    compiled: bool = False,
    seed: int = 0,
    size: str = "",
    precision: str = "",
    build: float = 0.0,
    load: float = 0.0,
    sampler: Sampler | None = None,
    inputs: np.ndarray | None = None,
    valid_time: datetime | None = None,
    network: str = "",
) -> BenchmarkResult:
    """Time one ensemble of a loaded model (the timed part of :func:`run_benchmark`).

    Separate so that a loaded (and compiled) model can be timed at several ensemble
    sizes without loading it again (``bench/kit/measure.py``), and so that a package
    model is timed by the same code: its ``sampler`` (the run's forward pass), its
    ``inputs`` (:func:`package_inputs`) and ``valid_time`` (for time features), named
    by ``network``; Taiwan's sampler and inputs by default. The first calls of each
    batch shape are timed apart (setup, compiling) and their FLOPs counted.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from corrdiff_tools import downscale, model

    gpu = device.is_gpu

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize(device.device)

    if sampler is None:
        sampler = downscale.CorrDiffSampler(corrdiff, sampler_settings)
        inputs = synthetic_model_inputs(seed)
    assert inputs is not None  # noqa: S101 - a package model's caller gives its inputs
    when = valid_time or datetime(2024, 7, 24, 12)
    condition = sampler.condition(inputs, when)
    channels = len(sampler.declaration.outputs)

    with FlopCounterMode(display=False) as counter:
        mean, first_regression = timed(lambda: sampler.regression_mean(condition), sync)
    regression_flops = float(counter.get_total_flops())
    # One diffusion network call per batch shape the timed part will use (compiling
    # each once when --compile), counting the FLOPs of the first.
    shapes = sorted({min(batch_size, samples), samples % batch_size or batch_size}, reverse=True)
    first_diffusion = 0.0
    diffusion_flops = 0.0
    # What the diffusion net is called on: the conditioning, after the regression mean
    # where the model is conditioned on it (physicsnemo's samplers put it first), on the
    # conditioning's grid (a package may pad it).
    net_condition = condition
    if getattr(corrdiff, "hr_mean_conditioning", False):
        net_condition = torch.cat((mean.to(condition.dtype), condition), dim=1)
    for position, batch in enumerate(shapes):
        latents = torch.randn((batch, channels, *condition.shape[-2:]), device=condition.device)
        sigma = torch.tensor(80.0, dtype=torch.float64, device=condition.device)

        def call(latents: Any = latents, sigma: Any = sigma, batch: int = batch) -> Any:
            return corrdiff.residual_model(latents, net_condition.expand(batch, -1, -1, -1), sigma)

        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            _, seconds = timed(call, sync)
        if position == 0:
            first_diffusion = seconds
            diffusion_flops = counter.get_total_flops() / batch

    if compiled:
        # torch.compile does not compile under FlopCounterMode (the calls above ran eager),
        # so compiling happened in the first timed calls and was reported as steady-state
        # time, 100x too slow. Compile every shape here, into the "first calls" row.
        _, seconds = timed(lambda: sampler.regression_mean(condition), sync)
        first_regression += seconds
        for batch in shapes:

            def draw(batch: int = batch) -> Any:
                return sampler.draw(condition, mean, list(range(batch)))

            _, seconds = timed(draw, sync)
            first_diffusion += seconds
    if gpu:
        torch.cuda.reset_peak_memory_stats(device.device)
    mean, regression = timed(lambda: sampler.regression_mean(condition), sync)
    diffusion = []
    for start in range(0, samples, batch_size):
        members = range(start, min(samples, start + batch_size))
        seeds = [downscale.sample_seed(seed, when, 0, member) for member in members]

        def ensemble(seeds: list[int] = seeds) -> Any:
            return sampler.denormalise(sampler.draw(condition, mean, seeds))

        _, seconds = timed(ensemble, sync)
        diffusion.append(seconds)
    return BenchmarkResult(
        size=size,
        device=device.description,
        precision=precision,
        samples=samples,
        batch_size=min(batch_size, samples),
        sampler=sampler_settings,
        compiled=compiled,
        build=build,
        load=load,
        first_regression=first_regression,
        first_diffusion=first_diffusion,
        regression=regression,
        diffusion=diffusion,
        regression_flops=regression_flops,
        diffusion_flops=diffusion_flops,
        peak_device_bytes=model.peak_memory_bytes(device) if gpu else None,
        peak_host_bytes=model.host_peak_bytes(),
        network=network,
    )
