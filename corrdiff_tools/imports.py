"""Import one module of an earth2studio package without the package's eager ``__init__``.

earth2studio's ``models/dx/__init__.py`` imports every diagnostic model it has and
``data/__init__.py`` every data source: on a 2-core CPU (2026-11-29) 29 s for the first
against 10 s for CorrDiff and the physicsnemo networks it needs, and 6.4 s more for the
second where a run needs GFS, ERA5 or a file. A run needs one model and one source.

:func:`bare_package` registers such a package as a plain module over its own directory,
so its submodules import alone. The first time anything asks the package for a name it
lacks (``from earth2studio.models.dx import ClimateNet``), its real ``__init__`` runs into
the same module object, so other code still sees the whole package.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def bare_package(name: str) -> None:
    """Register package ``name`` without running its ``__init__`` (see the module doc).

    Does nothing if it is already imported (bare or whole).
    """
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        importlib.import_module(name)  # an unexpected layout: the normal way
        return
    package = types.ModuleType(name)
    package.__spec__ = spec
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__package__ = name
    loader = spec.loader
    completed: list[bool] = []

    def complete(attribute: str) -> object:
        if not completed:
            completed.append(True)
            loader.exec_module(package)
        if attribute in package.__dict__:
            return package.__dict__[attribute]
        raise AttributeError(f"module {name!r} has no attribute {attribute!r}")

    package.__getattr__ = complete  # type: ignore[method-assign]
    sys.modules[name] = package


def import_alone(module: str) -> types.ModuleType:
    """Import ``package.module`` with its package bare (see :func:`bare_package`)."""
    bare_package(module.rsplit(".", 1)[0])
    return importlib.import_module(module)
