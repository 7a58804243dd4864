"""run_corrdiff.py --benchmark: the table's figures are measured and consistent."""

import re
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from corrdiff_tools.benchmark import synthetic_model_inputs
from corrdiff_tools.cli import run_main
from corrdiff_tools.store import HR_SHAPE, INPUT_VARIABLES
from corrdiff_tools.synthetic import build_networks


def _table(text: str) -> dict[str, str]:
    rows = {}
    for line in text.splitlines():
        name, _, value = line.partition("  ")
        rows[name.strip()] = value.strip()
    return rows


def _number(text: str, pattern: str) -> float:
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return float(match.group(1))


@pytest.fixture(scope="module")
def tiny_diffusion_flops() -> float:
    """FLOPs of one tiny diffusion call per sample, counted independently."""
    _, diffusion = build_networks("tiny")
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        diffusion(torch.zeros(2, 4, *HR_SHAPE), torch.zeros(2, 16, *HR_SHAPE), torch.tensor(1.0))
    return counter.get_total_flops() / 2


@pytest.mark.slow
def test_benchmark_prints_a_consistent_table(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tiny_diffusion_flops: float,
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["--benchmark", "--benchmark-size", "tiny", "--samples", "3", "--batch-size", "2"]
    code = run_main([*argv, "--steps", "2", "--device", "cpu", "--peak-tflops", "0.5"])
    out = capsys.readouterr().out
    assert code == 0
    rows = _table(out)
    assert rows["network"].startswith("tiny width, 448x448")
    assert rows["device"].startswith("CPU") and "float32" in rows["device"]
    assert rows["job"] == (
        "3 sample(s), batch 2, deterministic sampler, 2 euler step(s) = 2 diffusion call(s) "
        "per sample, sigma 0.002..80, rho 7"
    )
    per_sample_tflop = _number(rows["FLOP per call"], r"([\d.e-]+) T per sample")
    assert per_sample_tflop == pytest.approx(tiny_diffusion_flops / 1e12, rel=1e-3)
    per_sample = _number(rows["per sample"], r"([\d.]+) s")
    rate = _number(rows["samples/s"], r"([\d.]+)")
    assert rate == pytest.approx(1 / per_sample, rel=0.02)
    # Three significant figures each: the printed fraction follows from the printed rate.
    achieved = _number(rows["achieved"], r"([\d.e-]+) TFLOP/s")
    fraction = _number(rows["achieved"], r"= ([\d.e-]+)% of --peak-tflops 0.5")
    assert achieved > 0
    assert fraction == pytest.approx(100 * achieved / 0.5, rel=0.01)
    assert achieved == pytest.approx(
        (per_sample_tflop * 3 * 2 + _number(rows["FLOP per call"], r"([\d.e-]+) T \(regression\)"))
        / (per_sample * 3),
        rel=0.05,
    )
    assert _number(rows["peak host RSS"], r"([\d.]+) GiB") > 0.1
    assert not list(tmp_path.iterdir())  # nothing written


def test_synthetic_model_inputs_are_the_models_shape_and_finite() -> None:
    inputs = synthetic_model_inputs()
    assert inputs.shape == (len(INPUT_VARIABLES), 36, 40)
    assert inputs.dtype == "float32"
    assert abs(inputs[INPUT_VARIABLES.index("t2m")].mean() - 298.0) < 5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--benchmark", "2024-07-24T12"], "--benchmark takes no TIME (got 2024-07-24T12)"),
        (["--benchmark", "--resume"], "--benchmark writes nothing, so --resume does not apply"),
        (["--benchmark", "--output", "x.zarr"], "so --output does not apply"),
        (["--benchmark", "--peak-tflops", "0"], "--peak-tflops must be a positive number"),
        (["--benchmark", "--peak-tflops", "fast"], "--peak-tflops must be a number, got 'fast'"),
        (["--benchmark", "--benchmark-size", "huge"], "invalid choice: 'huge'"),
    ],
)
def test_bad_benchmark_options_exit_2_with_one_line(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    code = run_main([*argv, "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0], err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_benchmark_counts_the_paper_samplers_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["--benchmark", "--benchmark-size", "tiny", "--preset", "paper", "--steps", "3"]
    assert run_main([*argv, "--device", "cpu"]) == 0
    rows = _table(capsys.readouterr().out)
    assert rows["job"] == (
        "1 sample(s), batch 1, stochastic sampler, 3 heun step(s) = 5 diffusion call(s) "
        "per sample, sigma 0.002..800, rho 7"
    )
