#!/usr/bin/env python3
"""Print pip constraints that pin the torch family exactly as installed.

Used by Dockerfile.rocm: ``pip install -c <this output> -r requirements.txt`` can then
only keep the image's own ROCm builds (local versions such as ``2.11.0+rocm7.2`` match
only themselves); a requirement they do not satisfy fails the build instead of pulling a
CUDA build from PyPI. Exits non-zero if torch itself is not installed.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

#: The packages whose builds are tied to the accelerator stack.
FAMILY = ("torch", "torchvision", "torchaudio", "triton", "pytorch-triton-rocm")


def constraints() -> list[str]:
    """``name==version`` for each installed member of :data:`FAMILY`."""
    return [f"{name}=={found}" for name in FAMILY if (found := _installed(name))]


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def main() -> int:
    """Write the constraints to stdout; exit 1 without torch."""
    pins = constraints()
    if not any(pin.startswith("torch==") for pin in pins):
        sys.stderr.write("pin_torch.py: torch is not installed in this environment\n")
        return 1
    sys.stdout.write("\n".join(pins) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
