"""The hot-path levers change nothing: bitwise in float32 on CPU against a reference forward
pass built from physicsnemo's unoptimised pieces with the same weights, inputs and seeds."""

from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import lively_networks
from physicsnemo.diffusion.samplers.legacy_deterministic_sampler import deterministic_sampler
from physicsnemo.nn.module.group_norm import GroupNorm

from corrdiff_tools import speed
from corrdiff_tools.downscale import CorrDiffSampler, sample_seed
from corrdiff_tools.sampling import PRESETS
from corrdiff_tools.store import HR_SHAPE, INPUT_VARIABLES, LR_LAT, LR_LON, OUTPUT_VARIABLES
from corrdiff_tools.synthetic import build_networks, synthetic_inputs

TIME = datetime(2024, 7, 24, 12)


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    array = synthetic_inputs([TIME], seed=5)
    return array.sel(variable=list(INPUT_VARIABLES), lat=LR_LAT, lon=LR_LON).values[0]


def _patched(layer: GroupNorm) -> bool:
    return hasattr(layer, "_physicsnemo_forward")


def _group_norm(channels: int, groups: int = 32) -> GroupNorm:
    layer = GroupNorm(num_channels=channels, num_groups=groups)
    generator = torch.Generator().manual_seed(channels)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(channels, generator=generator))
        layer.bias.copy_(torch.randn(channels, generator=generator))
    return layer.eval()


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(("channels", "size"), [(64, 56), (256, 28), (8, 448)])
def test_inplace_group_norm_is_bitwise_physicsnemos(
    layout: torch.memory_format, channels: int, size: int
) -> None:
    generator = torch.Generator().manual_seed(size)
    x = (3 * torch.randn(2, channels, size, size, generator=generator) + 1).contiguous(
        memory_format=layout
    )
    reference = _group_norm(channels)
    fast = _group_norm(channels)
    assert speed.use_inplace_group_norm(fast) == 1
    with torch.inference_mode():
        expected = reference(x)
        got = fast(x)
    assert torch.equal(got, expected)
    assert got.is_contiguous(memory_format=layout)  # the layout is kept for the next conv
    assert not torch.equal(got, x)


def test_inplace_group_norm_leaves_training_to_physicsnemo() -> None:
    layer = _group_norm(64)
    speed.use_inplace_group_norm(layer)
    layer.train()
    x = torch.randn(2, 64, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = torch.nn.functional.group_norm(
        x, layer.num_groups, layer.weight, layer.bias, layer.eps
    )
    with torch.no_grad():
        assert torch.equal(layer(x), expected)  # training: torch's biased-variance kernel


def test_patching_twice_changes_each_layer_once() -> None:
    _, diffusion = build_networks("tiny")
    first = speed.use_inplace_group_norm(diffusion)
    assert first > 10
    assert speed.use_inplace_group_norm(diffusion) == 0


def test_zero_churn_noise_is_a_scalar_zero() -> None:
    x = torch.ones(2, 3, dtype=torch.float64)
    noise = speed.zero_churn_noise(x)
    assert noise.shape == () and noise.item() == 0.0 and noise.dtype == torch.float64


def test_host_allocator_is_tuned_on_linux_glibc() -> None:
    assert speed.tune_host_allocator() is True


def test_loaded_model_uses_every_lever(loaded_model: Any) -> None:
    for net in (loaded_model.regression_model, loaded_model.residual_model):
        layers = [m for m in net.modules() if isinstance(m, GroupNorm)]
        assert layers and all(_patched(m) for m in layers)
        # earth2studio leaves the weights channels_last; on CPU we hold them contiguous.
        convs = [p for p in net.parameters() if p.ndim == 4]
        assert convs and all(p.is_contiguous() for p in convs)
        assert next(net.parameters()).dtype == torch.float32


def _reference_ensemble(
    inputs: np.ndarray, sampler: CorrDiffSampler, seeds: list[int], solver: str, steps: int
) -> torch.Tensor:
    """CorrDiff from unoptimised pieces: fresh physicsnemo nets from the package's seed, in
    physicsnemo's own layout and GroupNorm, and physicsnemo's sampler with its own noise.

    ``load_model`` sets ``use_fp16``, which rounds the stored weights and buffers to
    float16; the reference gets the same rounding, and the test checks they are identical.
    """
    regression, diffusion = lively_networks(seed=0)
    with torch.no_grad():
        for fresh, loaded in (
            (regression, sampler.model.regression_model),
            (diffusion, sampler.model.residual_model),
        ):
            pairs = zip(
                [*fresh.named_parameters(), *fresh.named_buffers()],
                [*loaded.parameters(), *loaded.buffers()],
                strict=True,
            )
            for (name, tensor), other in pairs:
                if tensor.is_floating_point():
                    tensor.copy_(tensor.half().float())
                assert torch.equal(tensor, other), name
    condition = sampler.condition(inputs)
    latents = torch.stack(
        [
            torch.randn(
                (len(OUTPUT_VARIABLES), *HR_SHAPE), generator=torch.Generator().manual_seed(s)
            )
            for s in seeds
        ]
    )
    with torch.inference_mode():
        mean = regression(x=torch.zeros((1, len(OUTPUT_VARIABLES), *HR_SHAPE)), img_lr=condition)
        residual = deterministic_sampler(
            diffusion,
            latents,
            condition.expand(len(seeds), -1, -1, -1),
            num_steps=steps,
            solver=solver,
        )
    model = sampler.model
    return (mean + residual).float() * model.out_scale + model.out_center


@pytest.mark.parametrize(
    ("solver", "steps"), [("euler", 3), pytest.param("heun", 2, marks=pytest.mark.slow)]
)
def test_optimised_ensemble_is_bitwise_the_reference(
    loaded_model: Any, inputs: np.ndarray, solver: str, steps: int
) -> None:
    sampler = CorrDiffSampler(loaded_model, replace(PRESETS["blog"], steps=steps, solver=solver))
    seeds = [sample_seed(0, TIME, 0, member) for member in range(2)]
    condition = sampler.condition(inputs)
    got = sampler.denormalise(
        sampler.regression_mean(condition) + sampler.residuals(condition, seeds)
    )
    expected = _reference_ensemble(inputs, sampler, seeds, solver, steps).numpy()
    assert got.shape == (2, 4, 448, 448)
    assert np.isfinite(got).all()
    assert np.std(got[0, 1] - got[1, 1]) > 0.01  # members differ: the test can see noise
    np.testing.assert_array_equal(got, expected)


def test_earth2studio_layout_agrees_to_float32_rounding(
    package_dir: Path, loaded_model: Any, inputs: np.ndarray
) -> None:
    """load_model's channels_last nets, unpatched: the same ensemble within rounding."""
    from earth2studio.models.auto import Package
    from earth2studio.models.dx.corrdiff import CorrDiffTaiwan

    from corrdiff_tools.model import prepare_package

    as_loaded = CorrDiffTaiwan.load_model(Package(str(prepare_package(str(package_dir)))))
    for net in (as_loaded.regression_model, as_loaded.residual_model):
        net.use_fp16 = False
    as_loaded = as_loaded.eval()
    assert not any(_patched(m) for m in as_loaded.modules() if isinstance(m, GroupNorm))
    seeds = [sample_seed(0, TIME, 0, 0)]
    results = []
    for model in (as_loaded, loaded_model):
        sampler = CorrDiffSampler(model, replace(PRESETS["blog"], steps=2))
        condition = sampler.condition(inputs)
        results.append(
            sampler.denormalise(
                sampler.regression_mean(condition) + sampler.residuals(condition, seeds)
            )
        )
    np.testing.assert_allclose(results[1], results[0], rtol=0, atol=1e-3)
    assert np.abs(results[1] - results[0]).max() < 1e-3 * np.abs(results[0]).max()
