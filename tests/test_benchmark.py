"""run_corrdiff.py --benchmark: the table's figures are measured and consistent."""

import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from corrdiff_tools import benchmark, synthetic
from corrdiff_tools.benchmark import synthetic_model_inputs
from corrdiff_tools.cli import run_main
from corrdiff_tools.models.generic import package_settings as generic_settings
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
        (["--benchmark", "--stats"], "--benchmark writes nothing, so --stats does not apply"),
        (["--benchmark", "--threshold", "mrr=40"], "so --threshold does not apply"),
        (
            ["--benchmark", "--source", "x.nc"],
            "random inputs (and CorrDiff Taiwan's architecture "
            "with random weights), so --source does not apply",
        ),
        (["--benchmark", "--model-package", "/nowhere"], "so --model-package does not apply"),
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


GENERIC_GRID = synthetic.regular_grid(41.0, -9.0, (24, 40), 0.0625)
CMIP6_OUT = (np.linspace(-60.0, 60.0, 25), np.arange(64) * 5.625)


def _package_table(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> dict[str, str]:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code = run_main(
        ["--benchmark", *argv, "--samples", "3", "--batch-size", "2", "--device", "cpu"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return _table(captured.out)


@pytest.mark.parametrize("kind", ["generic", "cmip6"])
def test_a_package_model_is_benchmarked_as_its_run_samples_it(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """--benchmark --model PATH|cmip6 times the package itself with the run's forward pass
    (its metadata.json sampler, its grid, its mean conditioning), writes nothing, and its
    FLOPs per diffusion call are what one sample drawn by that forward pass costs per call
    (counted apart, by torch's own counter)."""
    from corrdiff_tools import model, run_workflow
    from corrdiff_tools.models.declaration import from_package

    folder = tmp_path / "pkg"
    if kind == "generic":
        synthetic.build_generic_package(
            folder, ("t2m", "u10m"), ("t2m", "tp"), GENERIC_GRID,
            synthetic.regular_grid(40.1, -10.05, (14, 18), 0.25),
            metadata={"number_of_steps": 3, "sigma_max": 80.0},
        )  # fmt: skip
        argv, shown, shape = ["--model", str(folder)], f"--model {folder}", "24x40"
    else:
        synthetic.build_cmip6_package(
            folder, ("t2m", "u10m", "siconc", "snc"), ("t2m", "u10m"), CMIP6_OUT,
            (np.linspace(-90.0, 90.0, 9), np.arange(16) * 22.5),
            synthetic.cmip6_invariants(CMIP6_OUT[0], CMIP6_OUT[1].size),
            metadata={"number_of_steps": 3, "sigma_max": 80.0},
        )  # fmt: skip
        argv = ["--model", "cmip6", "--model-package", str(folder)]
        shown, shape = f"--model cmip6 --model-package {folder}", "25x64"
    before = sorted(p.name for p in folder.iterdir())
    rows = _package_table(argv, tmp_path, monkeypatch, capsys)
    kind_name = "CorrDiffCMIP6" if kind == "cmip6" else "a generic CorrDiff package"
    assert rows["network"] == f"{kind_name} ({shown}), {shape} out, its own weights"
    assert "build package" not in rows
    sigma = "1..80" if kind == "cmip6" else "0.002..80"  # CorrDiffCMIP6's own sigma_min
    assert rows["job"] == (
        "3 sample(s), batch 2, stochastic sampler, 3 heun step(s) = 5 diffusion call(s) "
        f"per sample, sigma {sigma}, rho 7"
    )  # earth2studio's default sampler for a package, with what metadata.json says
    assert rows["device"].startswith("CPU") and "float32" in rows["device"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]  # nothing written
    assert sorted(p.name for p in folder.iterdir()) == before
    # One sample drawn by the run's own forward pass, its FLOPs counted apart.
    device = model.resolve_device("cpu")
    declared = from_package(folder, "x")
    if kind == "cmip6":
        from corrdiff_tools.models import cmip6

        declared = cmip6.family(declared)
    loaded, _ = model.load_generic(str(folder), device, "fp32", declared)
    settings = generic_settings(loaded)
    assert settings.calls_per_sample == 5
    sampler = run_workflow.sampler_for(loaded, declared, settings, "x", None)
    inputs = benchmark.package_inputs(declared)
    condition = sampler.condition(inputs, datetime(2024, 7, 24, 0))
    mean = sampler.regression_mean(condition)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        drawn = sampler.draw(condition, mean, [1])
    assert np.isfinite(sampler.denormalise(drawn)).all()
    per_call = counter.get_total_flops() / settings.calls_per_sample
    assert _number(rows["FLOP per call"], r"([\d.e-]+) T per sample") == pytest.approx(
        per_call / 1e12, rel=1e-3
    )


def test_benchmark_size_is_refused_for_a_package_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = synthetic.build_generic_package(
        tmp_path / "pkg", ("t2m",), ("t2m",), GENERIC_GRID,
        synthetic.regular_grid(40.1, -10.05, (14, 18), 0.25),
    )  # fmt: skip
    monkeypatch.chdir(tmp_path)
    code = run_main(["--benchmark", "--model", str(folder), "--benchmark-size", "tiny"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"--benchmark-size tiny sizes CorrDiff Taiwan's architecture; --model {folder}" in err[0]


@pytest.mark.slow
def test_a_compiled_benchmark_reports_compiling_in_the_first_calls_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch.compile does not compile under the FLOP counter of the first calls, so the
    compiling fell into the timed calls: a tiny package's regression read 3.5 s per call
    compiled against 0.01 s not. Now every shape is compiled before the clock starts.
    (Not a speed target: compiling costs seconds and a compiled call of this package
    milliseconds, so the bound below holds with a margin of about 100.)"""
    folder = synthetic.build_generic_package(
        tmp_path / "pkg", ("t2m", "u10m"), ("t2m",), GENERIC_GRID,
        synthetic.regular_grid(40.1, -10.05, (14, 18), 0.25),
        metadata={"number_of_steps": 2, "sigma_max": 80.0},
    )  # fmt: skip
    rows = _package_table(["--model", str(folder), "--compile"], tmp_path, monkeypatch, capsys)
    assert rows["device"].endswith(", compiled")
    first = _number(rows["first calls"], r"regression ([\d.]+) s")
    steady = _number(rows["regression"], r"([\d.]+) s per call")
    assert "(include compiling)" in rows["first calls"]
    assert steady * 10 < first, rows
