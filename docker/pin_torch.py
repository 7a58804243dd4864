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
    pins = []
    for name in FAMILY:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return pins


def main() -> int:
    pins = constraints()
    if not any(pin.startswith("torch==") for pin in pins):
        print("pin_torch.py: torch is not installed in this environment", file=sys.stderr)
        return 1
    print("\n".join(pins))
    return 0


if __name__ == "__main__":
    sys.exit(main())
