"""The GPU kit (bench/kit): what it carries covers what a run imports; the stand-ins work.

The kit itself is rehearsed end to end by ``bench/kit/rehearse.sh`` (CI's last step: a
fresh Python 3.12, the wheels installed with no index, every stage of the measurement at
the tiny width). These tests are the cheap part: offline, in seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from conftest import offline_args

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "kit"))

import measure  # noqa: E402 - bench/kit is not a package
import standins  # noqa: E402
import wheelhouse  # noqa: E402

#: Distributions a run may import that the kit leaves out on purpose: the standard
#: library's, and what only this development environment has (test tools, the
#: stand-ins' real modules, optional accelerators xarray and dask use when present).
NOT_CARRIED = {
    "corrdiff-tools",
    *("pytest", "pytest-socket", "hypothesis", "iniconfig", "pluggy", "_pytest"),
    *("distributed", "tornado", "zict", "locket", "sortedcontainers", "tblib", "lz4"),
    *("truststore", "httpx2", "httpcore2", "cuda-bindings", "cuda-pathfinder", "triton"),
}

TRACE = """
import atexit, json, runpy, sys
out = sys.argv[1]
sys.argv = sys.argv[2:]
atexit.register(lambda: json.dump(sorted(sys.modules), open(out, "w")))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_the_kit_carries_every_distribution_a_run_imports(
    package_dir: Path, input_file: Path, tmp_path: Path
) -> None:
    """What a real run imports, traced: each module's distribution is carried, is on the
    GPU image, is stood in for, or is knowingly left out (and then must be optional)."""
    trace = tmp_path / "modules.json"
    argv = [*offline_args(package_dir, input_file), "2024-07-24T12", "--steps", "2"]
    done = subprocess.run(
        [sys.executable, "-c", TRACE, str(trace), str(ROOT / "run_corrdiff.py"), *argv,
         "--output", str(tmp_path / "s.zarr"), "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    owners = packages_distributions()
    imported = {
        wheelhouse.normalise(dist)
        for module in json.loads(trace.read_text())
        for dist in owners.get(module.split(".")[0], [])
    }
    covered = {wheelhouse.normalise(n) for n in wheelhouse.CARRY}
    covered |= {wheelhouse.normalise(n) for n in wheelhouse.IMAGE}
    covered |= {wheelhouse.normalise(d) for ds in wheelhouse.STOOD_IN.values() for d in ds}
    covered |= {wheelhouse.normalise(n) for n in NOT_CARRIED}
    assert sorted(imported - covered) == []
    # And nothing carried is dead weight: every carried distribution is imported by a run
    # or by the blog's way / the package build (those listed here).
    only_elsewhere = {"antlr4-python3-runtime", "omegaconf", "h5netcdf", "netcdf4", "gitpython",
                      "gitdb", "smmap", "pyproj", "termcolor", "treelib"}  # fmt: skip
    carried = {wheelhouse.normalise(n) for n in wheelhouse.CARRY}
    assert sorted(carried - imported - only_elsewhere) == []


def test_every_carried_distribution_is_pinned_as_tested() -> None:
    specs = wheelhouse.requested()
    assert len(specs) == len(wheelhouse.CARRY)
    pins = wheelhouse.pins()
    for spec in specs:
        name, version = spec.split("==")
        assert pins[wheelhouse.normalise(name)] == version
    assert "warp-lang" not in {wheelhouse.normalise(n) for n in wheelhouse.CARRY}


def test_the_requirement_check_finds_what_is_missing(tmp_path: Path) -> None:
    """check() reads each wheel's Requires-Dist; a dependency nobody provides is named."""
    import zipfile

    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(
            "demo-1.0.dist-info/METADATA",
            "Name: demo\nRequires-Dist: numpy\nRequires-Dist: nosuchthing>=1\n"
            "Requires-Dist: pywin32; sys_platform == 'win32'\n"
            "Requires-Dist: sphinx; extra == 'docs'\n",
        )
    unmet = wheelhouse.check(tmp_path)
    assert "demo needs nosuchthing>=1" in unmet
    assert not any("numpy" in line or "pywin32" in line or "sphinx" in line for line in unmet)
    assert sum(line.endswith(f"is not in {tmp_path}") for line in unmet) == len(wheelhouse.CARRY)


def test_a_stand_in_takes_what_the_libraries_do_with_it_at_import(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("kit_demo_module",):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(standins.STAND_INS, "kit_demo_module", "kit-demo")
    placed = standins.install()
    try:
        assert "kit_demo_module" in placed
        import kit_demo_module as wp  # type: ignore[import-not-found]
        from kit_demo_module.optim.linear import LinearOperator  # type: ignore[import-not-found]

        wp.config.log_level = wp.LOG_WARNING  # attribute chains, assignment
        wp.init()  # calls are inert

        @wp.kernel  # a decorator
        def kernel() -> None: ...

        hint = wp.Stream | None  # an annotation evaluated at import
        assert hint is not None and LinearOperator is not None
        assert "stand-in for kit-demo" in (wp.__doc__ or "")
    finally:
        for name in [n for n in sys.modules if n.startswith("kit_demo_module")]:
            del sys.modules[name]
    # A module that is installed is never stood in for.
    assert "json" not in standins.install() and type(sys.modules["json"]).__name__ == "module"


def test_the_report_renders_every_stage() -> None:
    results = {
        "device": {"device": "NVIDIA H200, CUDA 13.0", "torch": "2.11.0"},
        "tests": {"cases": [{"test": "t", "outcome": "passed", "seconds": 1.0,
                             "measured": {"float16 max |diff| t2m": "0.01"}}]},
        "benchmark": {"width": "full", "skipped": ["bf16 compiled: out of time"], "rows": [
            {"precision": "float16", "compiled": False, "samples": 4, "batch": 4,
             "per_call_s": 0.01, "per_sample_s": 0.09, "samples_per_s": 11.0,
             "diffusion_tflops": 450.0, "fraction_of_peak": 0.455, "peak_device_gib": 7.1},
            {"precision": "fp32 compiled", "error": "RuntimeError: x"}]},
        "startup": {"job": "1 time x 4 samples", "wall_ratio": {"blog's way": 1.0, "ours": 4.0},
                    "configurations": {
                        "blog's way": {"wall": 20.0, "startup": 18.0, "regression": 1.0,
                                       "diffusion": 1.0},
                        "ours": {"wall": 5.0, "startup": 3.0, "regression": 1.0,
                                 "diffusion": 1.0}}},
        "torchrun": {"skipped": "one GPU"},
        "stages": {"device": 0.1},
    }  # fmt: skip
    text = measure.markdown(results)
    assert text.startswith("# GPU kit: NVIDIA H200, CUDA 13.0")
    assert "| float16 | False | 4 | 4 | 0.01 | 0.09 | 11.0 | 450.0 | 0.455 | 7.1 |" in text
    assert "| fp32 compiled | error: RuntimeError: x |" in text
    assert "- skipped: bf16 compiled: out of time" in text
    assert "| blog's way | 20.00 | 18.00 | 2.00 | 1.0 |" in text and "| ours | 5.00 |" in text
    assert '"skipped": "one GPU"' in text
    assert measure._peak("NVIDIA H200, CUDA 13.0", "float16") == 989.4
    assert measure._peak("CPU, 2 threads", "float32") is None


def test_a_failed_test_or_configuration_fails_the_run() -> None:
    assert not measure._failed({"exit_code": 0, "cases": []})
    assert measure._failed({"exit_code": 1, "cases": []})  # pytest failed
    assert measure._failed({"rows": [{"precision": "fp16"}, {"precision": "x", "error": "e"}]})
    assert measure._failed({"error": "RuntimeError: x"})
    assert not measure._failed({"skipped": "one GPU"})
