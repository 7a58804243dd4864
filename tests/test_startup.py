"""Start-up: lazy package ``__init__``s give the same objects and results, and less.

The start-up benchmark itself is ``bench/startup.py`` (figures in bench/RESULTS.md); these
tests pin what it relies on: which modules a run imports, that the networks it loads
compute bitwise what they compute after the libraries' whole ``__init__``s, and that the
garbage-collector pause is confined to the command line.
"""

from __future__ import annotations

import gc
import importlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from corrdiff_tools import imports

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def lazy_root(tmp_path: Path) -> Iterator[Path]:
    """A package ``lazyroot`` on sys.path whose subpackage ``sub`` has an import-only init.

    ``heavy.py`` appends to ``lazyroot.LOADED`` when imported, so a test can see whether it
    was. The lazy hook is installed for ``lazyroot.`` alone and removed afterwards.
    """
    root = tmp_path / "lazyroot"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("LOADED = []\n")
    (root / "sub" / "__init__.py").write_text(
        textwrap.dedent(
            '''
            """Import-only, like physicsnemo.nn's."""
            from .heavy import Heavy, helper as renamed
            from .light import Light
            from . import other
            import json as js
            __all__ = ["Heavy", "Light", "renamed"]
            '''
        )
    )
    (root / "sub" / "heavy.py").write_text(
        "import lazyroot\nlazyroot.LOADED.append('heavy')\nclass Heavy: pass\n"
        "def helper(): return 42\n"
    )
    (root / "sub" / "light.py").write_text("class Light: pass\n")
    (root / "sub" / "other.py").write_text("VALUE = 7\n")
    (root / "sub" / "unlisted.py").write_text("VALUE = 9\n")
    (root / "eager").mkdir()
    (root / "eager" / "__init__.py").write_text("from .part import X\nY = X + 1\n")
    (root / "eager" / "part.py").write_text("X = 1\n")
    finder = imports._LazyPackages(("lazyroot.",))
    sys.path.insert(0, str(tmp_path))
    sys.meta_path.insert(0, finder)
    try:
        yield root
    finally:
        sys.meta_path.remove(finder)
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "lazyroot" or m.startswith("lazyroot.")]:
            del sys.modules[name]


def test_an_import_only_init_runs_nothing_until_a_name_is_asked_for(lazy_root: Path) -> None:
    import lazyroot
    import lazyroot.sub as sub

    assert lazyroot.LOADED == [] and "lazyroot.sub.heavy" not in sys.modules
    from lazyroot.sub import Light

    assert "lazyroot.sub.heavy" not in sys.modules  # only light.py was imported
    assert Light is importlib.import_module("lazyroot.sub.light").Light
    from lazyroot.sub import Heavy, renamed

    assert lazyroot.LOADED == ["heavy"]
    assert Heavy is sys.modules["lazyroot.sub.heavy"].Heavy and renamed() == 42
    assert sub.other.VALUE == 7 and sub.js is importlib.import_module("json")
    assert sub.unlisted.VALUE == 9  # a submodule the init never named: imported on demand
    assert sub.__all__ == ["Heavy", "Light", "renamed"]
    namespace: dict[str, object] = {}
    exec("from lazyroot.sub import *", namespace)  # noqa: S102 - the statement under test
    assert {"Heavy", "Light", "renamed"} <= set(namespace) and "other" not in namespace
    with pytest.raises(AttributeError, match="has no attribute 'missing'"):
        _ = sub.missing
    with pytest.raises(ImportError):
        exec("from lazyroot.sub import missing", {})  # noqa: S102


def test_an_init_that_does_more_than_import_runs_as_usual(lazy_root: Path) -> None:
    import lazyroot.eager as eager

    assert eager.__dict__["Y"] == 2  # executed at import, not resolved on demand
    assert imports._import_only_plan(str(lazy_root / "eager" / "__init__.py"), "x") is None


def test_the_libraries_inits_a_run_touches_are_all_import_only() -> None:
    """If an upgrade adds code to one of them, it is imported whole (slower, still right)."""
    for package in (
        "physicsnemo.models",
        "physicsnemo.nn",
        "physicsnemo.nn.module",
        "physicsnemo.diffusion",
        "physicsnemo.diffusion.preconditioners",
        "physicsnemo.diffusion.samplers",
        "earth2studio.models.dx",
        "earth2studio.data",
    ):
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.origin is not None
        assert imports._import_only_plan(spec.origin, package) is not None, package


def test_a_function_compiled_at_import_sets_up_at_its_first_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    made: list[tuple[object, dict[str, object]]] = []

    def compile_now(model: object = None, **options: object) -> object:
        made.append((model, options))
        if callable(model) and not isinstance(model, torch.nn.Module):
            return lambda *args, **kwargs: ("compiled", model(*args, **kwargs))  # type: ignore[operator]
        return ("module compiled", model)

    monkeypatch.setattr(torch, "compile", compile_now)
    layer = torch.nn.Linear(2, 2)
    with imports.compile_on_first_call():

        @torch.compile()
        def double(x: int) -> int:
            return 2 * x

        triple = torch.compile(lambda x: 3 * x, mode="max-autotune", dynamic=False)
        with imports.compile_on_first_call():  # nested: still deferred, restored once
            pass
        assert made == []  # nothing set up at import time
        assert torch.compile(layer) == ("module compiled", layer)  # a module: at once
    assert torch.compile is compile_now  # restored
    assert double.__name__ == "double"
    assert double(5) == ("compiled", 10) and double(6) == ("compiled", 12)
    assert triple(2) == ("compiled", 6)
    # Each function set up once, at its first call, with the options it was given.
    assert [(getattr(model, "__name__", None), options) for model, options in made] == [
        (None, {}),  # the Linear layer
        ("double", {}),
        ("<lambda>", {"mode": "max-autotune", "dynamic": False}),
    ]

    with pytest.raises(ImportError), imports.compile_on_first_call():
        raise ImportError("a failed import")
    assert torch.compile is compile_now


def test_a_deferred_compile_computes_what_torch_compile_computes() -> None:
    import torch

    def affine(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(2.0 * x + 1.0)

    with imports.compile_on_first_call():
        deferred = torch.compile(affine, backend="eager")
    now = torch.compile(affine, backend="eager")
    x = torch.linspace(-2, 2, 17)
    assert torch.equal(deferred(x), now(x)) and torch.equal(deferred(x), affine(x))


LOAD_AND_CALL = """
import hashlib, sys
import torch
if sys.argv[1] == "whole":  # the libraries' own __init__s, before anything of ours
    import earth2studio.models.dx, earth2studio.data, physicsnemo.models, physicsnemo.nn
    import physicsnemo.diffusion
from corrdiff_tools import model, downscale, sources
from corrdiff_tools.store import INPUT_VARIABLES
corrdiff, _ = model.load_corrdiff(sys.argv[2], model.resolve_device("cpu"))
model.import_model_stack(debug=False, verbose=False)
from datetime import datetime
import numpy as np
spec = sources.parse_source(sys.argv[3])
when = datetime(2024, 7, 24, 6)
fields = sources.fetch_inputs(sources.build_source(spec, [when]), spec, when, 0)
sampler = downscale.CorrDiffSampler(corrdiff)
condition = sampler.condition(np.stack([fields[n] for n in INPUT_VARIABLES]))
mean = sampler.regression_mean(condition)
out = sampler.residuals(condition, seeds=[0, 1])
digest = hashlib.sha256(mean.numpy().tobytes() + out.numpy().tobytes()).hexdigest()
heavy = sorted(m for m in ("physicsnemo.models.dit", "physicsnemo.nn.module.ball_query",
               "physicsnemo.nn.functional.interpolation", "earth2studio.models.dx.climatenet",
               "earth2studio.data.gfs", "torch._functorch.aot_autograd") if m in sys.modules)
print(digest, ",".join(heavy) or "-")
"""


@pytest.mark.slow
def test_lazy_imports_load_and_sample_bitwise_as_after_the_whole_inits(
    package_dir: Path, input_file: Path
) -> None:
    results = {}
    running = {  # side by side: each is a cold process that mostly waits on imports
        mode: subprocess.Popen(
            [sys.executable, "-c", LOAD_AND_CALL, mode, str(package_dir), str(input_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for mode in ("whole", "lazy")
    }
    try:
        for mode, process in running.items():
            out, err = process.communicate(timeout=600)
            assert process.returncode == 0, err[-2000:]
            results[mode] = out.split()
    finally:  # a failure or a timeout leaves no process behind
        for process in running.values():
            process.kill()
            process.wait()
    whole, lazy = results["whole"], results["lazy"]
    assert lazy[0] == whole[0]  # regression mean and two samples, bitwise
    assert lazy[1] == "-"  # none of the unneeded heavy modules was imported
    # (the whole inits do import them, and the samplers' torch.compile set-up AOT autograd)
    assert "physicsnemo.nn.module.ball_query" in whole[1]
    assert "torch._functorch.aot_autograd" in whole[1]


def test_the_collector_pause_is_for_the_command_line_only(run_tool) -> None:  # noqa: ANN001
    code, _ = run_tool("2024-07-24T06", "--samples", "1", "--steps", "2", "--output", "o.zarr")
    assert code == 0 and gc.isenabled()  # run_main(argv) from Python leaves gc alone
    before = gc.get_freeze_count()
    imports.pause_collection()
    try:
        assert not gc.isenabled()
    finally:
        imports.resume_collection()
    assert gc.isenabled() and gc.get_freeze_count() >= before
    imports.resume_collection()  # a second resume does nothing
    assert gc.isenabled()
