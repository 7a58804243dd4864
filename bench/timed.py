"""Run a Python script as ``__main__`` and time its CorrDiff network calls (for startup.py).

    python bench/timed.py SCRIPT [ARGS ...]     # writes JSON to $BENCH_CALLS

The same instrument for both sides of ``bench/startup.py``: once the script has imported
torch, global forward hooks time every call of a regression network (physicsnemo's
``UNet``) and of a diffusion network (``EDMPrecondSR``), synchronising a GPU around each
call, so the time spent in network arithmetic is measured the same way whatever code
makes the calls. Nothing is imported before the script does it (the scripts' own import
costs stay theirs). At exit the totals and call counts go to the file ``$BENCH_CALLS``.
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.machinery
import json
import os
import runpy
import sys
import time
from types import ModuleType
from typing import Any

KINDS = {
    "UNet": "regression",
    "CorrDiffRegressionUNet": "regression",
    "EDMPrecondSR": "diffusion",
    "EDMPrecondSuperResolution": "diffusion",
}
CALLS: dict[str, list[float]] = {"regression": [0.0, 0], "diffusion": [0.0, 0]}
_STARTED: dict[int, float] = {}


def _install_hooks(torch: Any) -> None:
    def synchronise() -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def before(module: Any, args: Any) -> None:
        if type(module).__name__ in KINDS:
            synchronise()
            _STARTED[id(module)] = time.perf_counter()

    def after(module: Any, args: Any, output: Any) -> None:
        kind = KINDS.get(type(module).__name__)
        if kind is not None and id(module) in _STARTED:
            synchronise()
            CALLS[kind][0] += time.perf_counter() - _STARTED.pop(id(module))
            CALLS[kind][1] += 1

    torch.nn.modules.module.register_module_forward_pre_hook(before)
    torch.nn.modules.module.register_module_forward_hook(after)


class _AfterTorch(importlib.abc.MetaPathFinder):
    """Installs the hooks right after ``import torch`` has finished, then steps aside."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        run_module = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            _install_hooks(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _report() -> None:
    target = os.environ.get("BENCH_CALLS")
    if target:
        with open(target, "w") as handle:
            json.dump({kind: {"seconds": s, "calls": n} for kind, (s, n) in CALLS.items()}, handle)


def main() -> None:
    script = os.path.abspath(sys.argv[1])
    sys.argv = [script, *sys.argv[2:]]
    sys.path[0] = os.path.dirname(script)
    sys.meta_path.insert(0, _AfterTorch())
    atexit.register(_report)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
