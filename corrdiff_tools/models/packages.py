"""Where a generic package's files are: a folder, a zip or an address, made a local folder.

``run_corrdiff.py --model`` takes

* a folder, used in place;
* a zip of one (the files at its top, or in one folder), extracted once into the tool's
  cache, keyed by the zip's path, size and modification time, as Taiwan's package is;
* an address earth2studio's ``Package`` reads (``hf://``, ``s3://``, ``ngc://``,
  ``https://``): the package's files are fetched by name into a cache folder of that
  address, once, and read from there on (offline too); an address ending in ``.zip`` is
  downloaded, then extracted as a local zip.

Whatever was given, the rest of the run (the declaration, the store, ``--resume``'s
content digest, the loader) sees a local folder. Downloads and extractions hold a lock
(:func:`corrdiff_tools.model.exclusive`), so torchrun's ranks and parallel runs do the
work once and the others wait for it. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from corrdiff_tools.errors import RunError, UsageError
from corrdiff_tools.models.declaration import (
    CHECKPOINTS,
    OPTIONAL_FILES,
    REQUIRED_FILES,
    missing_files,
)

logger = logging.getLogger(__name__)

#: Written into a remote package's cache folder once all its files are there.
FETCHED = ".fetched"
#: Where the README says how a package is laid out.
PACKAGING_HINT = "see the README's 'Other CorrDiff models'"


def local_package(spec: str, shown: str) -> Path:
    """The local folder of the package ``spec`` names (see the module docstring).

    A local path is returned as given when it is not a zip: whether it is a package is
    for the caller to say (:func:`~corrdiff_tools.models.declaration.missing_files`).

    Raises
    ------
    UsageError
        A zip or an address that holds no generic package (one line, ``shown`` first).
    RunError
        An address that cannot be reached.
    """
    from corrdiff_tools.model import is_remote

    if is_remote(spec):
        if spec.lower().endswith(".zip"):
            return _unzipped(_download(spec, shown), shown, downloaded_from=spec)
        return _fetched(spec, shown)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".zip":
        return _unzipped(path, shown)
    return path


def _root(folder: Path) -> Path | None:
    """The package folder in an extraction: its top, or its one folder with metadata.json."""
    if (folder / "metadata.json").is_file():
        return folder
    inner = [p for p in folder.iterdir() if p.is_dir() and (p / "metadata.json").is_file()]
    return inner[0] if len(inner) == 1 else None


def _unzipped(zip_path: Path, shown: str, downloaded_from: str | None = None) -> Path:
    """The package folder of a zip, extracted once into the tool's cache.

    A zip ``downloaded_from`` an address that turns out damaged is removed from the
    cache, so that the next run downloads it again instead of failing on it forever.
    """
    from corrdiff_tools.model import cache_key, cache_root, extract_once

    target = cache_root() / "packages" / f"generic-{cache_key(zip_path)}"

    def complete(folder: Path) -> bool:
        root = _root(folder) if folder.is_dir() else None
        return root is not None and not missing_files(root)

    def finish(staging: Path) -> None:
        root = _root(staging)
        if root is None:
            raise UsageError(
                f"{shown} holds no metadata.json at its top or in one folder: it is not a "
                f"generic CorrDiff package ({PACKAGING_HINT})"
            )
        missing = missing_files(root)
        if missing:
            raise UsageError(
                f"{shown} is not a generic CorrDiff package: it lacks {', '.join(missing)} "
                f"({PACKAGING_HINT})"
            )

    extract_once(zip_path, target, complete, finish, shown, downloaded_from)
    root = _root(target)
    assert root is not None  # noqa: S101 - extract_once leaves only complete packages
    return root


def _address_folder(spec: str) -> Path:
    """The cache folder of a remote package: one per address."""
    from corrdiff_tools.model import cache_root

    digest = hashlib.sha256(spec.encode()).hexdigest()[:16]
    return cache_root() / "packages" / f"remote-{digest}"


def _package(root: str, folder: Path) -> Any:
    """earth2studio's ``Package`` of ``root``, caching its files by name in ``folder``."""
    from earth2studio.models.auto import Package

    return Package(root, cache_options={"cache_storage": str(folder), "same_names": True})


def _resolve(package: Any, name: str, spec: str, shown: str) -> Path | None:
    """Fetch one file of a remote package (None where the package has no such file).

    Through the package's caching file system, as ``Package.resolve`` does, but with a
    download bar only on a terminal: earth2studio's always draws one, which ignores
    ``TQDM_DISABLE`` and a redirected stderr, and an unfinished bar swallows the one
    line a failure prints.
    """
    import os
    import sys

    from fsspec.callbacks import TqdmCallback

    quiet = not sys.stderr.isatty() or os.environ.get("TQDM_DISABLE", "") not in ("", "0")
    bar = TqdmCallback(
        tqdm_kwargs={"desc": f"Downloading {name}", "unit": "B", "unit_scale": True,
                     "disable": quiet}
    )  # fmt: skip
    try:
        with bar, package.fs.open(f"{package.root.rstrip('/')}/{name}", callback=bar) as file:
            return Path(file.name)
    except FileNotFoundError as err:
        # huggingface_hub raises FileNotFoundError for a repository or revision the Hub
        # does not know too (hf_file_system._raise_file_not_found, chained from the Hub's
        # error): that is the address, not one missing file, and is said as such.
        problem = _address_problem(err)
        if problem is None:
            return None
        raise _error_class(spec, shown)(
            f"the model package {spec} cannot be fetched: {problem}; check the address "
            f"and its revision, or download the package's files into a folder and pass "
            f"{_way_out(spec, shown)}"
        ) from None
    except Exception as err:  # noqa: BLE001 - fsspec's clients raise many types offline
        from corrdiff_tools import network

        why = network.unreachable_reason(err) or network.summarise(err)
        raise RunError(
            f"could not download {name} of the model package {spec} ({why}): download the "
            f"package's files into a folder and pass {_way_out(spec, shown)}"
        ) from err


#: huggingface_hub errors behind a FileNotFoundError that mean the address is wrong.
_ADDRESS_ERRORS = {
    "RepositoryNotFoundError": "the Hub has no such repository (or it is private)",
    "RevisionNotFoundError": "the Hub has no such revision of it",
    "HFValidationError": "it is not a valid Hub repository name",
}


def _address_problem(err: FileNotFoundError) -> str | None:
    """What :data:`_ADDRESS_ERRORS` says of the error ``err`` is chained from, if any.

    By class name (subclasses too, such as a gated repository's): huggingface_hub is
    not imported for a package that does not need it.
    """
    cause = err.__cause__
    for cls in type(cause).__mro__ if cause is not None else ():
        if cls.__name__ in _ADDRESS_ERRORS:
            return _ADDRESS_ERRORS[cls.__name__]
    return None


def _way_out(spec: str, shown: str) -> str:
    """The offline option: ``--model FOLDER``, or a family's ``--model-package``."""
    words = shown.split()
    family = shown != f"--model {spec}" and len(words) > 1
    return f"--model {words[1]} --model-package FOLDER" if family else "--model FOLDER"


def _error_class(spec: str, shown: str) -> type[Exception]:
    """UsageError (exit 2) for an address the user typed, else RunError (exit 1).

    A default address (CorrDiffCMIP6's) is not the user's to correct.
    """
    return UsageError if spec in shown.split() else RunError


def _named(spec: str, shown: str) -> str:
    """``shown``, with the address where the user did not type it (a default package)."""
    return shown if spec in shown.split() else f"{shown} ({spec})"


def _fetched(spec: str, shown: str) -> Path:
    """A remote package's files, fetched once into a cache folder of their own."""
    from corrdiff_tools.model import exclusive

    folder = _address_folder(spec)
    fetched = folder / FETCHED
    with exclusive(folder.with_name(f".{folder.name}.lock")):
        if fetched.is_file() and missing_files(folder):
            fetched.unlink()  # a file lost from the cache since: fetch what is missing
        if not fetched.is_file():  # fetched whole by an earlier run: read offline
            package = _package(spec, folder)
            logger.info("fetching the model package %s into %s (once)", spec, folder)
            if "@" not in spec.rsplit("/", 1)[-1] and spec.startswith(("hf://", "ngc://")):
                logger.info(
                    "%s names no revision: later runs reuse these files; pin one "
                    "(name@revision) to be sure which weights run",
                    spec,
                )
            for name in (*REQUIRED_FILES, *CHECKPOINTS):
                if _resolve(package, name, spec, shown) is None:
                    raise _error_class(spec, shown)(
                        f"{_named(spec, shown)} is not a complete CorrDiff package: it has "
                        f"no {name} ({PACKAGING_HINT}); or download the package's files "
                        f"into a folder and pass {_way_out(spec, shown)}"
                    )
            for name in OPTIONAL_FILES:
                _resolve(package, name, spec, shown)
            fetched.write_text(f"{spec}\n")
    missing = missing_files(folder)
    if missing:  # input_latlon_grid.nc absent without latlon_res
        raise UsageError(
            f"{shown} is not a generic CorrDiff package: it lacks {', '.join(missing)} "
            f"({PACKAGING_HINT})"
        )
    return folder


def _download(spec: str, shown: str) -> Path:
    """A remote package zip, downloaded once into the cache folder of its address."""
    from corrdiff_tools.model import exclusive

    parent, _, name = spec.rpartition("/")
    folder = _address_folder(spec)
    with exclusive(folder.with_name(f".{folder.name}.lock")):
        logger.info("fetching the model package %s into %s (once)", spec, folder)
        package = _package(parent, folder)
        try:
            path = _resolve(package, name, spec, shown)
        except RunError:
            # A download cut short must not be read as the package next time (fsspec
            # records a file as cached before it has it: see model.forget_download).
            type(package.fs).clear_instance_cache()
            (folder / name).unlink(missing_ok=True)
            raise
    if path is None:
        raise UsageError(f"{shown} does not exist: check the address")
    return path
