"""Start-up: import only what a run uses, and do not garbage-collect the imports.

**Lazy package ``__init__``s.** earth2studio's and physicsnemo's package ``__init__``
files import everything the package has: ``earth2studio.models.dx`` every diagnostic
model, ``earth2studio.data`` every data source, ``physicsnemo.models`` every network
(DiT, then ``physicsnemo.nn`` with its warp kernels and torch's inductor). A run needs
CorrDiff's two networks, one sampler and one data source. On a 2-core CPU (2026-11-29)
the whole ``earth2studio.models.dx`` took 29 s to import against 10 s for CorrDiff alone.

:func:`lazy_packages` installs an import hook for the packages under ``physicsnemo.``
and ``earth2studio.``: a package whose ``__init__`` holds nothing but imports (and a
literal ``__all__``), as all of theirs that a run touches do, is created without running
it, and each name it would have imported is imported the first time something asks for
it (``from physicsnemo.nn import Conv2d`` imports ``physicsnemo.nn.module.conv_layers``
and nothing else). The objects are the very ones the ``__init__`` would have bound, from
the same modules. A package whose ``__init__`` does anything else is imported as usual.
Packages imported before the hook is installed are not touched.

**Compiling on first call.** physicsnemo's legacy samplers, which earth2studio's CorrDiff
imports, decorate four grid-patching helpers with ``@torch.compile()`` at import. The
decorator compiles nothing until a call, but setting it up imports dynamo's repro tools
and AOT autograd: 0.9 s of the 4.2 s that importing CorrDiff took on 2 cores
(2026-11-29, best of 5 each). The helpers run only with patching, which the Taiwan model
does not use. :func:`compile_on_first_call` defers that set-up to the first call, where
torch would have compiled anyway; :func:`import_alone` imports under it.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import functools
import gc
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

#: Whether :func:`pause_collection` turned the cyclic garbage collector off.
_PAUSED: list[bool] = []


def pause_collection() -> None:
    """Turn Python's cyclic garbage collector off while the heavy libraries import.

    Importing torch, physicsnemo and earth2studio creates some half a million objects
    that all live to the end, and the collector walks every one of them again and again
    as they accumulate; the interpreter walks them once more when it exits. On 2 cores
    (2026-11-29) importing earth2studio's CorrDiff took 9.8 s with the collector on and
    5.2 s with it off, and the walk at exit took 2.4 s more.
    :func:`resume_collection` freezes what exists by then (the imported modules: never
    garbage) and turns the collector back on for the run itself; at exit everything is
    frozen, so the interpreter does not walk it once more on its way out (files and
    stores are closed by then, and objects that are not in a cycle are still freed as
    usual). Only the command-line entry points pause it: the caller of a library
    function keeps its own settings.
    """
    if gc.isenabled():
        gc.disable()
        _PAUSED.append(True)
        atexit.register(gc.freeze)


def resume_collection() -> None:
    """Undo :func:`pause_collection` (if it paused): freeze what exists, collect again."""
    if _PAUSED:
        _PAUSED.clear()
        gc.freeze()
        gc.enable()


class _LazyInit(importlib.abc.Loader):
    """Creates a package whose ``__init__`` names are imported when first asked for."""

    def __init__(self, names: dict[str, tuple[str, str | None]], public: list[str] | None):
        self._names = names
        self._public = public

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        names = self._names
        package = module.__name__
        if self._public is not None:
            module.__all__ = list(self._public)  # type: ignore[attr-defined]

        def resolve(attribute: str) -> object:
            if attribute in names:
                source, member = names[attribute]
                if source == package:  # ``from . import sub``
                    source, member = f"{package}.{member}", None
                value: object = importlib.import_module(source)
                if member is not None:
                    try:
                        value = getattr(value, member)
                    except AttributeError:  # ``from .a import b``, b a submodule of a
                        value = importlib.import_module(f"{source}.{member}")
            elif importlib.util.find_spec(f"{package}.{attribute}") is not None:
                # A submodule the whole __init__ would have imported on the way.
                value = importlib.import_module(f"{package}.{attribute}")
            else:
                raise AttributeError(f"module {package!r} has no attribute {attribute!r}")
            setattr(module, attribute, value)
            return value

        module.__getattr__ = resolve  # type: ignore[method-assign]


def _import_only_plan(
    path: str, package: str
) -> tuple[dict[str, tuple[str, str | None]], list[str] | None] | None:
    """Which module each name of an ``__init__`` comes from, or None if it does more."""
    try:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
    except (OSError, SyntaxError, ValueError):
        return None
    names: dict[str, tuple[str, str | None]] = {}
    public: list[str] | None = None
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        if isinstance(node, ast.ImportFrom) and all(a.name != "*" for a in node.names):
            base = "." * node.level + (node.module or "")
            source = importlib.util.resolve_name(base, package) if node.level else base
            for alias in node.names:
                names[alias.asname or alias.name] = (source, alias.name)
        elif isinstance(node, ast.Import) and all(a.asname for a in node.names):
            for alias in node.names:
                names[str(alias.asname)] = (alias.name, None)
        elif (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == ["__all__"]
            and public is None
        ):
            try:
                public = [str(name) for name in ast.literal_eval(node.value)]
            except ValueError:
                return None
        else:
            return None
    return names, public


class _LazyPackages(importlib.abc.MetaPathFinder):
    """Finds packages under ``prefixes`` and makes the import-only ones lazy."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self.prefixes = prefixes

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(self.prefixes):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if (
            spec is None
            or spec.submodule_search_locations is None
            or not isinstance(spec.origin, str)
            or not spec.origin.endswith("__init__.py")
        ):
            return spec
        plan = _import_only_plan(spec.origin, fullname)
        if plan is not None:
            spec.loader = _LazyInit(*plan)
        return spec


#: The packages made lazy: their subpackages, not the top-level ones (whose ``__init__``
#: does configure things: physicsnemo sets warp's log level).
LAZY_PREFIXES = ("physicsnemo.", "earth2studio.")


def lazy_packages() -> None:
    """Install the lazy-``__init__`` hook (see the module doc); once per process."""
    if not any(isinstance(finder, _LazyPackages) for finder in sys.meta_path):
        sys.meta_path.insert(0, _LazyPackages(LAZY_PREFIXES))


@contextlib.contextmanager
def compile_on_first_call() -> Iterator[None]:
    """While in effect, ``torch.compile`` of a plain function sets itself up at its first call.

    What that call does is what the function ``torch.compile`` returned would have done
    (torch compiles at the first call either way); only the decorator's own set-up, and
    the imports it brings, wait until then (see the module doc). Modules and anything
    that is not a plain function are compiled at once, as usual. ``torch.compile`` is
    restored on the way out, whatever happens.
    """
    import torch

    compile_now = torch.compile
    if getattr(compile_now, "defers_compile", False):  # nested: the outer one restores
        yield
        return

    def deferred(model: Any = None, **options: Any) -> Any:
        if model is None:  # used as @torch.compile(...): the function comes next
            return functools.partial(deferred, **options)
        if not isinstance(model, types.FunctionType):
            return compile_now(model, **options)
        compiled: list[Callable[..., Any]] = []
        lock = threading.Lock()

        @functools.wraps(model)
        def call(*args: Any, **kwargs: Any) -> Any:
            if not compiled:
                with lock:
                    if not compiled:
                        compiled.append(compile_now(model, **options))
            return compiled[0](*args, **kwargs)

        return call

    deferred.defers_compile = True  # type: ignore[attr-defined]
    torch.compile = deferred  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.compile = compile_now


def import_alone(module: str) -> types.ModuleType:
    """Import ``module`` with the packages above it lazy (see :func:`lazy_packages`).

    Functions it compiles at import set themselves up at their first call (see
    :func:`compile_on_first_call`).
    """
    lazy_packages()
    with compile_on_first_call():
        return importlib.import_module(module)
