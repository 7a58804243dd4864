"""The plot tool after validation: plan the figures, render them, animate, evaluate.

Takes a :class:`~corrdiff_tools.requests.PlotRequest` (the store already opened and every
selection checked) and a progress display. In order:

1. find which selected pieces can be drawn: marked complete *and* readable (a damaged
   chunk is skipped with a warning, never drawn blank);
2. plan the figures (:func:`corrdiff_tools.render.plan`), the GIFs and the evaluation
   files, and refuse to replace existing files without ``--overwrite``;
3. fix one colour scale per quantity over the store, render (in worker processes),
   write the GIFs, then the ``--spectra/--pdf/--truth`` evaluation.

Nothing here imports torch or earth2studio.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from corrdiff_tools import times as times_mod
from corrdiff_tools.checks import format_time64
from corrdiff_tools.errors import UsageError

if TYPE_CHECKING:
    import xarray as xr

    from corrdiff_tools import evaluate
    from corrdiff_tools.drawn import Fingerprints
    from corrdiff_tools.render import RenderContext, Task
    from corrdiff_tools.requests import PlotRequest, ProgressFactory
    from corrdiff_tools.truth import Truth

logger = logging.getLogger("corrdiff_tools")

#: A (time index, lead index or None) entry of the store.
Key = tuple[int, int | None]


def plot(request: PlotRequest, progress: ProgressFactory) -> int:
    """Draw and evaluate what ``request`` asks for; return the exit code."""
    from corrdiff_tools import drawn, evaluate, render

    dataset = request.dataset
    samples_ok, damaged = drawable_pieces(request)
    tasks = render.plan(
        dataset,
        request.times,
        request.leads,
        request.samples,
        request.outdir,
        request.fmt,
        request.plot_lowres,
        request.stats,
    )
    tasks = _complete_tasks(tasks, samples_ok)
    gifs = gif_paths(request)
    entries, science = evaluation_plan(request, samples_ok)
    if not tasks and not entries:
        raise UsageError(_nothing_to_draw(request, samples_ok))
    prints = drawn.Fingerprints(request, samples_ok)
    plan = _plan_writes(request, prints, tasks, gifs, entries, science)
    plan.refuse_stale(request.overwrite)
    tasks, gifs = plan.tasks, plan.gifs
    run_evaluation = science is not None and plan.evaluation_needed
    if plan.kept:
        logger.info(
            "%d file(s) already drawn from this store with these settings are up to date and "
            "kept (--overwrite draws them again)",
            len(plan.kept),
        )
    if not tasks and not run_evaluation:
        logger.info("nothing to draw: everything asked for is up to date in %s", request.outdir)
        return 0
    made = _make_directories(request.outdir)
    manifest = drawn.Manifest(request.outdir)
    written: list[Path] = []
    try:
        if tasks:
            healthy = samples_ok if damaged else None
            context, coastlines = _draw(request, tasks, gifs, healthy, progress)
            manifest.record((task.path, plan.fingerprints[task.path]) for task in tasks)
            manifest.record((path, plan.fingerprints[path]) for path in gifs.values())
        if run_evaluation:
            assert science is not None  # noqa: S101 - run_evaluation says so
            written = evaluate.evaluate(dataset, entries, science)
            manifest.record((path, plan.fingerprints[path]) for path in written)
    except BaseException:
        _remove_if_empty(made)  # a failed run leaves no empty --outdir behind
        raise
    if not tasks:
        logger.info("wrote %d file(s) to %s", len(written), request.outdir)
        return 0
    logger.info(
        "wrote %d figure(s)%s%s to %s (coastlines: %s)",
        len(tasks),
        f" and {len(written)} evaluation file(s)" if written else "",
        f" and {len(gifs)} animation(s)" if gifs else "",
        request.outdir,
        coastlines,
    )
    if request.show:
        _show(tasks, context)
    return 0


@dataclass
class WritePlan:
    """What a plot run writes, after leaving out what is already up to date."""

    tasks: list[Task]
    gifs: dict[Key, Path]
    evaluation_needed: bool
    #: Existing files this run would replace although they were drawn otherwise.
    stale: list[Path]
    #: Up-to-date files left alone.
    kept: list[Path]
    fingerprints: dict[Path, str]

    def refuse_stale(self, overwrite: bool) -> None:
        """Never replace a file this tool did not draw with these settings, unless asked."""
        if self.stale and not overwrite:
            raise UsageError(
                f"{len(self.stale)} output file(s) already exist and were drawn from other data "
                f"or with other settings (or not by this tool), e.g. {self.stale[0]}: pass "
                "--overwrite to replace them, or choose another --outdir"
            )


def _plan_writes(
    request: PlotRequest,
    fingerprints: Fingerprints,
    tasks: list[Task],
    gifs: dict[Key, Path],
    entries: list[evaluate.Entry],
    science: evaluate.Request | None,
) -> WritePlan:
    """Split the planned files into up to date (kept), new, and stale (--overwrite only).

    With ``--overwrite`` everything is drawn again. A GIF to be drawn needs its frames, so
    its sample figures are drawn again too (identical to the files they replace).
    """
    from corrdiff_tools import drawn, evaluate

    manifest = drawn.Manifest(request.outdir)
    prints = {task.path: fingerprints.figure(task) for task in tasks}
    for key, path in gifs.items():
        prints[path] = fingerprints.gif(t for t in tasks if _frame_of(t, key))
    evaluation = evaluate.planned_paths(entries, science) if science is not None else []
    for path in evaluation:
        assert science is not None  # noqa: S101 - no paths without a request
        prints[path] = fingerprints.evaluation(entries, science, path)
    current = {
        path
        for path, value in prints.items()
        if not request.overwrite and manifest.up_to_date(path, value)
    }
    stale = [path for path in prints if path.exists() and path not in current]
    gifs_left = {key: path for key, path in gifs.items() if path not in current}
    tasks_left = [
        task
        for task in tasks
        if task.path not in current or any(_frame_of(task, key) for key in gifs_left)
    ]
    return WritePlan(
        tasks=tasks_left,
        gifs=gifs_left,
        evaluation_needed=any(path not in current for path in evaluation),
        stale=stale,
        kept=[path for path in current if path not in {task.path for task in tasks_left}],
        fingerprints=prints,
    )


def _frame_of(task: Task, key: Key) -> bool:
    """Whether ``task`` is a frame of the animation of (time, lead) ``key``."""
    return task.kind == "sample" and (task.time_index, task.lead_index) == key


def drawable_pieces(request: PlotRequest) -> tuple[np.ndarray, bool]:
    """Which (time, [lead,] sample) pieces can be drawn, and whether any was damaged.

    A piece of one of our stores is drawable when it is marked complete and its chunks
    decode to physical values; only the selected times (and lead times) are read back.
    Stores from other tools have no completion record: a sample whose 2 m temperature is
    missing everywhere was never written (or was lost), and the others are read back too.
    """
    from corrdiff_tools import render, store

    dataset = request.dataset
    if "completed" in dataset:
        samples_ok = dataset["completed"].values.astype(bool)
    else:
        # Fill values already read as NaN (store.mask_fill_values).
        samples_ok = dataset["t2m"].notnull().any(dim=("y", "x")).values
    selected = np.zeros_like(samples_ok)
    for ti in request.times:
        for li in request.leads:
            selected[store.piece_index(ti, li)] = True
    problems = render.piece_problems(dataset, request.store, samples_ok & selected)
    ours = "completed" in dataset
    for piece, why in problems.items():
        logger.warning(
            "skipping sample %d of %s%s: %s%s",
            piece[-1],
            _format_time(dataset, piece[0]),
            f" (lead index {piece[1]})" if len(piece) == 3 else "",
            f"it is marked complete but {why}" if ours else why,
            "; run_corrdiff.py --resume recomputes it" if ours else "",
        )
        samples_ok[piece] = False
    return samples_ok, bool(problems)


def _make_directories(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; return those this call created."""
    missing = []
    parent = path
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    path.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_if_empty(directories: Sequence[Path]) -> None:
    """Remove directories this run created, innermost first, where they are still empty."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


def _nothing_to_draw(request: PlotRequest, samples_ok: np.ndarray) -> str:
    """Why a plot run has nothing to draw: what was asked for, and what the store lacks."""
    from corrdiff_tools import store

    asked = [
        option
        for option, given in (
            ("sample maps", bool(request.samples)),
            ("--stats", request.stats),
            ("--spectra", request.spectra),
            ("--pdf", request.pdf),
            ("--truth", request.truth is not None),
        )
        if given
    ]
    if not asked:
        return (
            "nothing to draw: --sample none with no --plot-lowres, --stats, --spectra, --pdf "
            "or --truth"
        )
    size = samples_ok.shape[-1]
    held = []
    for ti in request.times:
        for li in request.leads:
            done = samples_ok[store.piece_index(ti, li)]
            label = _format_time(request.dataset, ti) + ("" if li is None else f" (lead {li})")
            chosen = f", none of --sample {_ranges(request.samples)}" if request.samples else ""
            if done.any() and request.samples and not done[request.samples].any():
                held.append(f"{label}: {int(done.sum())} of {size} complete{chosen}")
            else:
                held.append(f"{label}: {int(done.sum())} of {size} complete")
    listed = "; ".join(held[:3]) + (" ..." if len(held) > 3 else "")
    needs = (
        "--stats needs every sample of a time, the rest at least one"
        if request.stats
        else "each needs at least one complete sample"
    )
    return (
        f"nothing to draw: {', '.join(asked)} asked for, and the store's selected samples are "
        f"not complete ({listed}; {needs}): run_corrdiff.py --resume completes the store"
    )


def _ranges(samples: Sequence[int]) -> str:
    """Sample indices as typed: ``0-3,7``."""
    parts: list[str] = []
    for sample in samples:
        if parts and parts[-1].split("-")[-1] == str(sample - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{sample}"
        else:
            parts.append(str(sample))
    return ",".join(parts)


def _format_time(dataset: xr.Dataset, time_index: int) -> str:
    value = np.datetime64(dataset["time"].values[time_index], "s").astype(datetime)
    return times_mod.format_time(value)


def _complete_tasks(tasks: list[Task], samples_ok: np.ndarray) -> list[Task]:
    """Leave out the samples that are not complete, and statistics of partial ensembles."""
    from corrdiff_tools import store

    kept = []
    for task in tasks:
        index = store.piece_index(task.time_index, task.lead_index)
        if task.kind == "sample" and not samples_ok[(*index, task.sample)]:
            logger.warning("skipping %s: that sample is not complete in the store", task.path.name)
            continue
        if task.kind == "stats" and not samples_ok[index].all():
            logger.warning("skipping %s: the ensemble is not complete", task.path.name)
            continue
        kept.append(task)
    return kept


def gif_paths(request: PlotRequest) -> dict[Key, Path]:
    """Where each (time, lead)'s animation goes (``--gif`` alone: named after the store)."""
    from corrdiff_tools.render import stem
    from corrdiff_tools.store import NAME_PREFIX

    if not request.gif:
        return {}
    dataset = request.dataset
    keys = [(t, lead) for t in request.times for lead in request.leads]
    if not isinstance(request.gif, Path):
        return {key: request.outdir / f"{stem(dataset, *key)}.gif" for key in keys}
    path = request.gif
    if len(keys) == 1:
        return {keys[0]: path}
    return {
        key: path.with_name(f"{path.stem}-{stem(dataset, *key).removeprefix(NAME_PREFIX)}.gif")
        for key in keys
    }


def evaluation_plan(
    request: PlotRequest, samples_ok: np.ndarray
) -> tuple[list[evaluate.Entry], evaluate.Request | None]:
    """The (time, lead) entries and request for --spectra/--pdf/--truth, validated."""
    from corrdiff_tools import evaluate, render, store

    if not (request.spectra or request.pdf or request.truth is not None):
        return [], None
    dataset = request.dataset
    entries = []
    for ti in request.times:
        for li in request.leads:
            whole = tuple(int(s) for s in np.flatnonzero(samples_ok[store.piece_index(ti, li)]))
            valid, _ = render.valid_time(dataset, ti, li)
            if not whole:
                logger.warning(
                    "no complete sample at %s: left out of the evaluation",
                    times_mod.format_time(valid),
                )
                continue
            entries.append(
                evaluate.Entry(
                    ti, li, whole, render.stem(dataset, ti, li), np.datetime64(valid, "ns")
                )
            )
    return entries, evaluate.Request(
        spectra=request.spectra,
        pdf=request.pdf,
        truth=_truth(request, entries),
        truth_path=request.truth,
        outdir=request.outdir,
        fmt=request.fmt,
        dpi=request.dpi,
    )


def _truth(request: PlotRequest, entries: Sequence[evaluate.Entry]) -> Truth | None:
    """The ``--truth`` file on the store's grid at the entries' times, or refuse it.

    With nothing to score it against (no complete sample at the selected times) it is not
    read: the file is not to blame, and "nothing to draw" says what the store lacks.
    """
    from corrdiff_tools.truth import load_truth, units_of

    if request.truth is None:
        return None
    if not request.truth.exists():
        raise UsageError(f"--truth {request.truth} does not exist: give a NetCDF or Zarr path")
    if not entries:
        return None
    if all(len(entry.samples) < 2 for entry in entries):
        most = max(len(entry.samples) for entry in entries)
        raise UsageError(
            f"--truth scores an ensemble, and the selected times have {most} complete "
            "sample(s): CRPS, spread and rank histograms need 2 or more (--samples)"
        )
    try:
        truth = load_truth(
            request.truth,
            np.asarray(request.dataset["lat"].values, dtype="float64"),
            np.asarray(request.dataset["lon"].values, dtype="float64"),
            [entry.valid_time for entry in entries],
            units_of(request.dataset),
        )
    except ValueError as err:
        raise UsageError(f"--truth {request.truth}: {err}") from None
    finite = any(
        np.isfinite(values).any() for fields in truth.fields.values() for values in fields.values()
    )
    if not finite:
        raise UsageError(
            f"--truth {request.truth} has no finite value at the selected times "
            f"({', '.join(format_time64(e.valid_time) for e in entries[:3])}): "
            "nothing to score against"
        )
    return truth


def _draw(
    request: PlotRequest,
    tasks: list[Task],
    gifs: dict[Key, Path],
    healthy: np.ndarray | None,
    progress: ProgressFactory,
) -> tuple[RenderContext, str]:
    """Render every task (in worker processes), then the GIFs; where coastlines came from."""
    from corrdiff_tools import plotting, render
    from corrdiff_tools.animation import write_gif
    from corrdiff_tools.coastlines import COAST_MARGIN, load_coastlines

    extent = plotting.grid_extent(request.dataset["lat"].values, request.dataset["lon"].values)
    if render.is_taiwan(request.dataset):
        coastlines, other = load_coastlines(), {}
    else:  # another model's store: its grid, panels and frame
        lon0, lon1, lat0, lat1 = extent
        margin = COAST_MARGIN
        coastlines = load_coastlines((lon0 - margin, lon1 + margin, lat0 - margin, lat1 + margin))
        other = render.other_model(request.dataset)
    context = render.RenderContext(
        store_path=request.store.absolute(),
        scales=render.colour_scales(request.dataset, request.colormap, healthy),
        coastlines=coastlines.segments,
        thresholds=request.thresholds,
        fmt=request.fmt,
        dpi=request.dpi,
        frames=bool(gifs),
        extent=extent,
        left_out=request.left_out,
        **other,
    )
    jobs = min(request.jobs or _available_cores(), len(tasks))
    with progress(len(tasks)) as update:
        frames = render.render_all(tasks, context, jobs, progress=update)
    for key, path in gifs.items():
        sequence = [
            frame
            for task, frame in zip(tasks, frames, strict=True)
            if frame is not None and (task.time_index, task.lead_index) == key
        ]
        if sequence:
            write_gif(sequence, path, request.fps)
    return context, coastlines.origin


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _show(tasks: Sequence[Task], context: RenderContext) -> None:
    import matplotlib.pyplot as plt

    from corrdiff_tools.render import build_figure

    for task in tasks:
        build_figure(task, context, fig=plt.figure())
    plt.show()
