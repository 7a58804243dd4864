"""Run a script or module with stand-ins for heavy modules it imports but never uses.

The GPU machine the kit targets carries at most 64 MiB, and three modules the two
libraries import unconditionally would take more than that on their own, though neither
route (``run_corrdiff.py`` with a local package and input file, nor the blog's way) calls
them there:

* ``warp`` (warp-lang, 392 MB installed): physicsnemo's ``__init__`` imports it to quiet
  its logging, and ``physicsnemo.core.function_spec`` for kernels CorrDiff does not use;
* ``pygrib``: earth2studio's GFS and other GRIB sources, which the blog's
  ``from earth2studio.data import ...`` imports all of;
* ``s3fs`` (with aiobotocore and botocore): earth2studio's package loader imports it for
  ``s3://`` packages, a local package never reaches it.

A stand-in is put in ``sys.modules`` only where the real module is absent. It is inert:
any attribute of it, and the result of calling one, is another stand-in, so what the
libraries do with these modules at import works (``warp.config.log_level = ...``,
``wp.init()``, ``@wp.kernel``, ``warp.Stream | None``, ``import pygrib``). Nothing
CorrDiff computes goes through them: in a run, warp is only imported (by physicsnemo's
``__init__`` and ``core.function_spec``) and s3fs only by the package loaders' imports;
the kit's tests compare the device's results with float32 ones. Both sides of every
comparison run under the same stand-ins, and the kit reports which were put in place.

    python bench/kit/standins.py SCRIPT [ARGS ...]
    python bench/kit/standins.py -m MODULE [ARGS ...]
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import runpy
import sys
import types
from typing import Any

#: Module -> the distribution that provides it (named in the stand-in's docstring).
STAND_INS = {
    "warp": "warp-lang",
    "pygrib": "pygrib",
    "s3fs": "s3fs",
}


class _StandInType(type):
    """Classes whose every attribute, and the result of every call, is another stand-in."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        child = _stand_in_class(f"{cls.__qualname__}.{name}", cls._package)  # type: ignore[attr-defined]
        setattr(cls, name, child)
        return child

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return _stand_in_class(f"{cls.__qualname__}()", cls._package)  # type: ignore[attr-defined]


def _stand_in_class(name: str, package: str) -> type:
    return _StandInType(name, (), {"_package": package, "__module__": name.split(".")[0]})


class StandInModule(types.ModuleType):
    """A module whose attributes are stand-in classes (see the module docstring)."""

    def __init__(self, name: str, package: str) -> None:
        super().__init__(name, f"stand-in for {package} (not installed)")
        self.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
        self.__path__: list[str] = []  # a package: ``import warp.config`` resolves too
        self._package = package

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        child = _stand_in_class(f"{self.__name__}.{name}", self._package)
        setattr(self, name, child)
        return child


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``import warp.optim.linear`` (any submodule of a stand-in) to a stand-in."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        root = name.partition(".")[0]
        parent = sys.modules.get(root)
        if "." in name and isinstance(parent, StandInModule):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        root = sys.modules[spec.name.partition(".")[0]]
        return StandInModule(spec.name, root._package)  # type: ignore[attr-defined]

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the module is its attributes."""


def install(force: bool = False) -> list[str]:
    """Put stand-ins for the absent modules of :data:`STAND_INS`; return their names.

    ``force`` stands in even for installed ones (a rehearsal of the GPU machine on a
    machine that has them).
    """
    placed = []
    if not any(isinstance(finder, _StandInFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _StandInFinder())
    for name, package in STAND_INS.items():
        if name in sys.modules:
            continue
        if force or importlib.util.find_spec(name) is None:
            sys.modules[name] = StandInModule(name, package)
            placed.append(name)
    return placed


def main(argv: list[str]) -> None:
    """Run ``argv`` (a script, or ``-m module``) as ``python`` would, with stand-ins."""
    placed = install(force=bool(os.environ.get("KIT_FORCE_STAND_INS")))
    if placed:
        print(
            f"stand-ins (not installed, imported but unused): {', '.join(placed)}", file=sys.stderr
        )
    if not argv:
        raise SystemExit(__doc__)
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
