"""What the plot tool has already drawn: so re-running a plot command just works.

Each output directory keeps a small manifest (:data:`MANIFEST`) naming, for every file
the plot tool wrote there, a fingerprint of what it was drawn from (the store's identity
and content state, the selection and every setting that changes the picture) and the
file's size and modification time when written. On the next run a file whose entry still
matches is *up to date*: it is skipped with a note. A file drawn from other data or with
other settings, edited since, or not written by this tool is never replaced without
``--overwrite``.

The fingerprint covers the store's completion flags and creation record, so a store
replaced (``--overwrite``) or completed further (``--resume``) makes its images stale:
their colour scales, titles and statistics would differ. It does not cover which
coastline source was found (see :mod:`corrdiff_tools.coastlines`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from corrdiff_tools import evaluate
    from corrdiff_tools.render import Task
    from corrdiff_tools.requests import PlotRequest

logger = logging.getLogger("corrdiff_tools")

#: The manifest's file name in an output directory.
MANIFEST = ".corrdiff-plots.json"
#: Bumped whenever the figures change for the same inputs, so old images become stale.
DRAWING_VERSION = 2


def _digest(value: object) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _file_state(path: Path) -> dict[str, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class Fingerprints:
    """Fingerprints of everything one plot request can write."""

    def __init__(self, request: PlotRequest, samples_ok: np.ndarray) -> None:
        dataset = request.dataset
        flags = dataset["completed"].values if "completed" in dataset else samples_ok
        metadata = [
            _file_state(request.store / name) for name in ("zarr.json", ".zmetadata", ".zattrs")
        ]
        self._base = {
            "version": DRAWING_VERSION,
            "store": str(request.store.resolve()),
            "store_metadata": metadata,
            "history": str(dataset.attrs.get("history", "")),
            "content": hashlib.sha256(np.asarray(flags, dtype=bool).tobytes()).hexdigest(),
            "drawable": hashlib.sha256(np.asarray(samples_ok, dtype=bool).tobytes()).hexdigest(),
            "colormap": request.colormap,
            "fmt": request.fmt,
            "dpi": request.dpi,
        }
        self._request = request

    def figure(self, task: Task) -> str:
        """A map or statistics figure."""
        thresholds = self._request.thresholds if task.kind == "stats" else None
        return _digest(
            [self._base, task.kind, task.time_index, task.lead_index, task.sample, thresholds]
        )

    def gif(self, frames: Iterable[Task]) -> str:
        """An animation through ``frames`` (in order)."""
        return _digest([self._base, self._request.fps, [self.figure(task) for task in frames]])

    def evaluation(
        self, entries: Iterable[evaluate.Entry], science: evaluate.Request, path: Path
    ) -> str:
        """One file of the ``--spectra/--pdf/--truth`` evaluation."""
        truth = science.truth_path
        return _digest(
            [
                self._base,
                path.name,
                [(e.time_index, e.lead_index, e.samples) for e in entries],
                science.spectra,
                science.pdf,
                None if truth is None else [str(truth.resolve()), _file_state(truth)],
            ]
        )


def _key(path: Path) -> str:
    """Files are named by absolute path: a ``--gif PATH`` may lie outside the directory."""
    return str(path.resolve())


class Manifest:
    """The record of what the plot tool drew into one output directory."""

    def __init__(self, outdir: Path) -> None:
        self.path = outdir / MANIFEST
        self._entries: dict[str, dict[str, Any]] = {}
        try:
            loaded = json.loads(self.path.read_text())
        except (OSError, ValueError):
            loaded = {}  # none yet, or unreadable: nothing counts as up to date
        if isinstance(loaded, dict) and isinstance(loaded.get("files"), dict):
            self._entries = loaded["files"]

    def up_to_date(self, path: Path, fingerprint: str) -> bool:
        """Whether ``path`` is exactly what this tool wrote for ``fingerprint``."""
        entry = self._entries.get(_key(path))
        state = _file_state(path)
        return state is not None and entry == {"fingerprint": fingerprint, **state}

    def record(self, items: Iterable[tuple[Path, str]]) -> None:
        """Note files just written, and save the manifest (atomically)."""
        for path, fingerprint in items:
            state = _file_state(path)
            if state is not None:
                self._entries[_key(path)] = {"fingerprint": fingerprint, **state}
        temporary = self.path.with_name(f"{MANIFEST}.{os.getpid()}.partial")
        temporary.write_text(json.dumps({"files": self._entries}, indent=1, sort_keys=True))
        temporary.replace(self.path)
