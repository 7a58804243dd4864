"""Turn a store into image files: which figures, their names, their colour scales, workers.

The figures themselves come from :mod:`corrdiff_tools.plotting`; this module decides what
to draw for a selection of times, lead times and samples, fixes one colour scale per
quantity across the whole run, names files so that shell globs sort them (zero-padded
sample numbers), and renders serially or in worker processes with identical results.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from corrdiff_tools import checks, plotting, quantities, store
from corrdiff_tools import times as times_mod
from corrdiff_tools.models.declaration import stored_model_name, stored_outputs
from corrdiff_tools.plotting import TAIWAN_FRAME, ColourScale, Fields, MapFrame
from corrdiff_tools.quantities import KELVIN
from corrdiff_tools.times import time_label

if TYPE_CHECKING:
    import xarray as xr
    from matplotlib.figure import Figure


logger = logging.getLogger(__name__)

FORMATS = ("jpg", "png", "pdf")


@dataclass(frozen=True)
class Task:
    """One figure to draw: a sample, the low-resolution input, or ensemble statistics."""

    kind: str
    time_index: int
    lead_index: int | None
    sample: int | None
    path: Path


@dataclass(frozen=True)
class RenderContext:
    """Everything a worker needs besides the store: shared by all tasks of a run."""

    store_path: Path
    scales: Mapping[str, ColourScale]
    coastlines: Sequence[np.ndarray]
    thresholds: Mapping[str, float]
    fmt: str
    dpi: int
    frames: bool = False
    samples_total: int = 0
    lowres_panels: tuple[str, ...] = field(default=plotting.LOWRES_PANELS)
    #: What every map shows, the low-resolution input's included (so they compare).
    extent: tuple[float, float, float, float] = plotting.PAPER_EXTENT
    #: Arrays of the store not to draw (unphysical: see store.implausible_arrays).
    left_out: tuple[str, ...] = ()
    #: Another model's store (not Taiwan's): its panels, their variables' attributes,
    #: and the frame of its maps (see :func:`other_model`).
    taiwan: bool = True
    panels: tuple[str, ...] = plotting.SAMPLE_PANELS
    attrs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    frame: MapFrame = TAIWAN_FRAME


def is_taiwan(dataset: xr.Dataset) -> bool:
    """Whether a store holds CorrDiff Taiwan's outputs (its own, or the blog's)."""
    return stored_model_name(dataset.attrs) == "taiwan"


def lowres_panels_of(dataset: xr.Dataset, panels: Sequence[str]) -> tuple[str, ...]:
    """The panels of another model's store whose low-resolution inputs it holds."""
    return tuple(
        panel
        for panel in panels
        if all(store.lowres_name(name) in dataset for name in quantities.members(panel))
    )


def other_model(dataset: xr.Dataset) -> dict[str, Any]:
    """The :class:`RenderContext` fields of a store made by another model than Taiwan."""
    panels = quantities.panels_of(stored_outputs(dataset.attrs, store.OUTPUT_VARIABLES))
    return {
        "taiwan": False,
        "panels": panels,
        "lowres_panels": lowres_panels_of(dataset, panels),
        "attrs": {p: dict(dataset[p].attrs) for p in panels if p in dataset},
        "frame": plotting.frame_for(dataset["lon"].values, taiwan=False),
    }


def valid_time(
    dataset: xr.Dataset, time_index: int, lead_index: int | None
) -> tuple[datetime, int]:
    """(valid time, lead hours) of one entry of the store."""
    init = np.datetime64(dataset["time"].values[time_index], "s").astype(datetime)
    if lead_index is None:
        return init, 0
    lead = dataset["lead_time"].values[lead_index].astype("timedelta64[h]").astype(int)
    return init + np.timedelta64(int(lead), "h").astype(object), int(lead)


def stem(dataset: xr.Dataset, time_index: int, lead_index: int | None) -> str:
    """``corrdiff-<YYYY-MM-DDTHH>[-f<lead>]``, by initialisation time and lead.

    A lead is three digits (``-f006``), with its sign before a negative one (``-f-012``:
    CorrDiffCMIP6 writes the hours before its initialisation time too).
    """
    init = np.datetime64(dataset["time"].values[time_index], "s").astype(datetime)
    text = f"{store.NAME_PREFIX}{time_label(init)}"
    if lead_index is not None:
        _, lead = valid_time(dataset, time_index, lead_index)
        text += f"-f{'-' if lead < 0 else ''}{abs(lead):03d}"
    return text


def sample_label(sample: int, size: int) -> str:
    """Sample number zero-padded to the ensemble size (at least 2 digits)."""
    return f"{sample:0{max(2, len(str(size - 1)))}d}"


def plan(
    dataset: xr.Dataset,
    times: Sequence[int],
    leads: Sequence[int | None],
    samples: Sequence[int],
    outdir: Path,
    fmt: str,
    lowres: bool,
    stats: bool,
) -> list[Task]:
    """List the figures to draw, in order: per (time, lead) its samples, then extras."""
    size = dataset.sizes["sample"]
    tasks = []
    for ti in times:
        for li in leads:
            base = stem(dataset, ti, li)
            for sample in samples:
                name = f"{base}-sample-{sample_label(sample, size)}.{fmt}"
                tasks.append(Task("sample", ti, li, sample, outdir / name))
            if lowres:
                tasks.append(Task("lowres", ti, li, None, outdir / f"{base}-lowres.{fmt}"))
            if stats:
                tasks.append(Task("stats", ti, li, None, outdir / f"{base}-stats.{fmt}"))
    return tasks


def _select(dataset: xr.Dataset, name: str, task: Task, sample: int | None = None) -> np.ndarray:
    index: dict[str, int] = {"time": task.time_index}
    if task.lead_index is not None:
        index["lead_time"] = task.lead_index
    if sample is not None:
        index["sample"] = sample
    return np.asarray(dataset[name].isel(index).values)


def _finite_limits(lows: Sequence[float], highs: Sequence[float]) -> tuple[float, float]:
    lo = [v for v in lows if np.isfinite(v)]
    hi = [v for v in highs if np.isfinite(v)]
    if not lo or not hi:
        return 0.0, 1.0
    low, high = min(lo), max(hi)
    return (low - 1.0, high + 1.0) if low == high else (low, high)


def piece_problems(
    dataset: xr.Dataset, path: Path, marked: np.ndarray
) -> dict[tuple[int, ...], str]:
    """Pieces marked complete whose fields are missing, unreadable or unphysical, with why.

    A completion flag is a promise, not a proof: a chunk lost or cut short after the run
    would draw as a blank panel, or fail with a codec error naming no file, and a store
    from elsewhere may hold anything. Each marked piece's four fields are read once; an
    unreadable one is named by its chunk file, and one outside the limits of a computed
    field (:data:`~corrdiff_tools.checks.OUTPUT_LIMITS`) is not drawn.
    """
    import zarr

    group = zarr.open_group(str(path), mode="r")
    lead = ("lead_time",) if "lead_time" in dataset.dims else ()
    problems: dict[tuple[int, ...], str] = {}
    for piece in zip(*np.nonzero(marked), strict=True):
        index = tuple(int(i) for i in piece)
        selection = dict(zip(("time", *lead, "sample"), index, strict=True))
        for name in stored_outputs(dataset.attrs, store.OUTPUT_VARIABLES):
            try:
                values = np.asarray(dataset[name].isel(selection).values)
            except Exception as err:  # noqa: BLE001 - codecs raise many types on bad bytes
                key = _chunk_key(group[name], (*index, 0, 0))
                problems[index] = (
                    f"{path / name / key} cannot be read ({type(err).__name__}: {err})"
                )
                break
            if np.isnan(values).all():
                problems[index] = f"its {name} is missing (a lost chunk reads as NaN)"
                break
            wrong = checks.out_of_range(name, values, checks.OUTPUT_LIMITS)
            if wrong:
                problems[index] = f"its {name} {wrong}"
                break
    return problems


def _chunk_key(array: Any, coords: tuple[int, ...]) -> str:
    """The file name, relative to the array, of the chunk at ``coords`` (Zarr v3 or v2)."""
    encoding = getattr(array.metadata, "chunk_key_encoding", None)
    if encoding is not None:
        return str(encoding.encode_chunk_key(coords))
    separator = getattr(array.metadata, "dimension_separator", None) or "."
    return separator.join(str(c) for c in coords)


def colour_scales(
    dataset: xr.Dataset,
    colormap: str | None = None,
    healthy: np.ndarray | None = None,
) -> dict[str, ColourScale]:
    """One colour scale per quantity, from its extremes over every time and sample.

    The scales depend on the store's content only, never on what a plot run draws: where
    the store holds the low-resolution inputs they count too (so input and samples share
    scales), with or without ``--plot-lowres``, and images from different plot runs of one
    store compare. With ``healthy`` (a boolean mask over (time, [lead,] sample)), only
    those pieces are read, one by one: the way round chunks that cannot be decoded.
    """
    import dask

    if not is_taiwan(dataset):
        return _other_scales(dataset, colormap, healthy)
    include_lowres = store.has_lowres(dataset)
    if healthy is not None:
        return _scales_from_pieces(dataset, include_lowres, colormap, healthy)
    wind = np.hypot(dataset["u10m"], dataset["v10m"])
    reductions = {
        "mrr": [dataset["mrr"].min(), dataset["mrr"].max()],
        "t2m": [dataset["t2m"].min() - KELVIN, dataset["t2m"].max() - KELVIN],
        "wind": [wind.min(), wind.max()],
    }
    if include_lowres:
        lr_wind = np.hypot(dataset[store.lowres_name("u10m")], dataset[store.lowres_name("v10m")])
        reductions["t2m"] += [dataset["lr_t2m"].min() - KELVIN, dataset["lr_t2m"].max() - KELVIN]
        reductions["wind"] += [lr_wind.min(), lr_wind.max()]
        if "lr_refc" in dataset:
            reductions["mrr"] += [dataset["lr_refc"].min(), dataset["lr_refc"].max()]
    computed = dask.compute({k: [r.data for r in v] for k, v in reductions.items()})[0]
    values = {key: [float(v) for v in found] for key, found in computed.items()}
    return _to_scales(
        {key: v[0::2] for key, v in values.items()},
        {key: v[1::2] for key, v in values.items()},
        colormap,
    )


def _to_scales(
    lows: Mapping[str, Sequence[float]], highs: Mapping[str, Sequence[float]], colormap: str | None
) -> dict[str, ColourScale]:
    """Colour scales from each quantity's extremes; wind speed always starts at 0."""
    scales = {}
    for key in lows:
        low, high = _finite_limits(lows[key], highs[key])
        scales[key] = ColourScale(
            0.0 if key == "wind" else low, high, colormap or plotting.COLORMAPS[key]
        )
    return scales


def _scales_from_pieces(
    dataset: xr.Dataset, include_lowres: bool, colormap: str | None, healthy: np.ndarray
) -> dict[str, ColourScale]:
    lead = ("lead_time",) if "lead_time" in dataset.dims else ()
    lows: dict[str, list[float]] = {"mrr": [], "t2m": [], "wind": []}
    highs: dict[str, list[float]] = {"mrr": [], "t2m": [], "wind": []}
    for piece in zip(*np.nonzero(healthy), strict=True):
        selection = dict(zip(("time", *lead, "sample"), (int(i) for i in piece), strict=True))
        values = {n: np.asarray(dataset[n].isel(selection).values) for n in store.OUTPUT_VARIABLES}
        quantities = {
            "mrr": values["mrr"],
            "t2m": values["t2m"] - KELVIN,
            "wind": np.hypot(values["u10m"], values["v10m"]),
        }
        for key, field_values in quantities.items():
            lows[key].append(float(np.nanmin(field_values)))
            highs[key].append(float(np.nanmax(field_values)))
    if include_lowres:
        lr = {n: np.asarray(dataset[store.lowres_name(n)].values) for n in ("t2m", "u10m", "v10m")}
        lows["t2m"].append(float(np.nanmin(lr["t2m"])) - KELVIN)
        highs["t2m"].append(float(np.nanmax(lr["t2m"])) - KELVIN)
        lows["wind"].append(float(np.nanmin(np.hypot(lr["u10m"], lr["v10m"]))))
        highs["wind"].append(float(np.nanmax(np.hypot(lr["u10m"], lr["v10m"]))))
        if "lr_refc" in dataset:
            lows["mrr"].append(float(np.nanmin(dataset["lr_refc"].values)))
            highs["mrr"].append(float(np.nanmax(dataset["lr_refc"].values)))
    return _to_scales(lows, highs, colormap)


def _other_scales(
    dataset: xr.Dataset, colormap: str | None, healthy: np.ndarray | None
) -> dict[str, ColourScale]:
    """Colour scales of another model's store, one per panel.

    Each panel's extremes over the complete pieces (and the low-resolution inputs, as for
    Taiwan); a wind component's centred on 0, wind speed's from 0.
    """
    fields = other_model(dataset)
    panels, lowres = fields["panels"], fields["lowres_panels"]
    if healthy is None:
        healthy = np.asarray(dataset[store.COMPLETED].values).astype(bool)
    lead = ("lead_time",) if "lead_time" in dataset.dims else ()
    lows: dict[str, list[float]] = {panel: [] for panel in panels}
    highs: dict[str, list[float]] = {panel: [] for panel in panels}

    def extremes(values: Mapping[str, np.ndarray], wanted: Sequence[str]) -> None:
        shown = quantities.displayed(values)
        for panel in wanted:
            found = np.asarray(shown[panel], dtype="float64")
            if np.isfinite(found).any():
                lows[panel].append(float(np.nanmin(found)))
                highs[panel].append(float(np.nanmax(found)))

    names = sorted({name for panel in panels for name in quantities.members(panel)})
    for piece in zip(*np.nonzero(healthy), strict=True):
        selection = dict(zip(("time", *lead, "sample"), (int(i) for i in piece), strict=True))
        extremes(
            {n: np.asarray(dataset[n].isel(selection).values, "float64") for n in names}, panels
        )
    lowres_names = sorted({n for panel in lowres for n in quantities.members(panel)})
    arrays = {n: np.asarray(dataset[store.lowres_name(n)].values, "float64") for n in lowres_names}
    if arrays:
        extremes(arrays, lowres)
    scales = {}
    for panel in panels:
        low, high = _finite_limits(lows[panel], highs[panel])
        if panel in quantities.MEMBERS["wind"]:
            low, high = -max(abs(low), abs(high)), max(abs(low), abs(high))
        elif panel == "wind":
            low = 0.0
        scales[panel] = ColourScale(low, high, colormap or plotting.colormap_for(panel))
    return scales


@functools.lru_cache(maxsize=4)
def _open(path: Path) -> xr.Dataset:
    return store.open_store(path)


#: Fitted figure heights (inches) per layout, measured once per process (fit_height).
_FITTED_HEIGHTS: dict[tuple[object, ...], float] = {}


def build_figure(task: Task, context: RenderContext, fig: Figure | None = None) -> Figure:
    """Draw one task's figure (not saved), its height fitted to its content.

    Every figure of one layout (kind, panels, extent, dpi) gets the same height, measured
    once per process on a throwaway copy of the first: no figure that is saved has been
    drawn before, so the files do not depend on which process drew what (``--jobs``),
    GIF frames match in size, and the measuring is paid once.
    """
    figure = _draw_figure(task, context, fig)
    layout = (task.kind, len(figure.axes), context.extent, context.dpi)
    height = _FITTED_HEIGHTS.get(layout)
    if height is None:
        throwaway = _draw_figure(task, context, None)
        throwaway.set_dpi(context.dpi)
        height = float(plotting.fit_height(throwaway).get_size_inches()[1])
        _FITTED_HEIGHTS[layout] = height
    figure.set_size_inches(figure.get_size_inches()[0], height)
    return figure


def _draw_figure(task: Task, context: RenderContext, fig: Figure | None) -> Figure:
    dataset = _open(context.store_path).drop_vars(list(context.left_out), errors="ignore")
    when, lead = valid_time(dataset, task.time_index, task.lead_index)
    title = times_mod.title_time(when, None if task.lead_index is None else lead)
    if not context.taiwan:
        return _draw_other(dataset, task, context, fig, title)
    if task.kind == "sample":
        assert task.sample is not None  # noqa: S101 - by construction in plan()
        values = quantities.to_display_units(
            _select(dataset, "mrr", task, task.sample),
            _select(dataset, "t2m", task, task.sample),
            u := _select(dataset, "u10m", task, task.sample),
            v := _select(dataset, "v10m", task, task.sample),
        )
        fields = Fields(values, u, v, dataset["lat"].values, dataset["lon"].values)
        size = dataset.sizes["sample"]
        return plotting.map_figure(
            fields,
            plotting.SAMPLE_PANELS,
            context.scales,
            context.coastlines,
            f"CorrDiff sample {task.sample} of {size} · {title}",
            fig,
            context.extent,
        )
    if task.kind == "lowres":
        has_refc = "lr_refc" in dataset
        values = quantities.to_display_units(
            None,
            _select(dataset, "lr_t2m", task),
            u := _select(dataset, "lr_u10m", task),
            v := _select(dataset, "lr_v10m", task),
        )
        if has_refc:
            values["refc"] = _select(dataset, "lr_refc", task)
        panels = plotting.LOWRES_PANELS if has_refc else plotting.LOWRES_PANELS[1:]
        fields = Fields(values, u, v, dataset["lat_lr"].values, dataset["lon_lr"].values)
        return plotting.map_figure(
            fields,
            panels,
            context.scales,
            context.coastlines,
            f"Low-resolution input · {title}",
            fig,
            context.extent,
        )
    return _stats_figure(dataset, task, context, fig, title)


def _stats_figure(
    dataset: xr.Dataset, task: Task, context: RenderContext, fig: Figure | None, title: str
) -> Figure:
    """Ensemble mean, spread and exceedance, a column per panel (Taiwan's: mrr, t2m, wind)."""
    names = [name for panel in context.panels for name in quantities.members(panel)]
    shown = quantities.displayed({name: _select(dataset, name, task) for name in names})
    members = {panel: np.asarray(shown[panel]) for panel in context.panels}
    return plotting.stats_figure(
        quantities.ensemble_stats(members, context.thresholds),
        dataset["lat"].values,
        dataset["lon"].values,
        context.scales,
        context.coastlines,
        f"CorrDiff ensemble statistics · {title}",
        fig,
        context.extent,
        panels=context.panels,
        frame=context.frame,
        attrs=context.attrs,
    )


def _draw_other(
    dataset: xr.Dataset, task: Task, context: RenderContext, fig: Figure | None, title: str
) -> Figure:
    """A figure of another model's store: one panel (or column) a quantity."""
    if task.kind == "stats":
        return _stats_figure(dataset, task, context, fig, title)
    lowres = task.kind == "lowres"
    panels = tuple(context.lowres_panels) if lowres else context.panels
    names = [name for panel in panels for name in quantities.members(panel)]
    stored = {
        name: np.asarray(
            _select(dataset, store.lowres_name(name) if lowres else name, task, task.sample),
            dtype="float64",
        )
        for name in names
    }
    wind = "wind" in panels
    grid = ("lat_lr", "lon_lr") if lowres else ("lat", "lon")
    fields = Fields(
        {panel: np.asarray(values) for panel, values in quantities.displayed(stored).items()},
        stored["u10m"] if wind else None,
        stored["v10m"] if wind else None,
        dataset[grid[0]].values,
        dataset[grid[1]].values,
    )
    heading = (
        f"Low-resolution input · {_input_title(dataset, task, title)}"
        if lowres
        else f"CorrDiff sample {task.sample} of {dataset.sizes['sample']} · {title}"
    )
    return plotting.map_figure(
        fields, panels, context.scales, context.coastlines, heading, fig, context.extent,
        frame=context.frame, attrs=context.attrs,
    )  # fmt: skip


def _input_title(dataset: xr.Dataset, task: Task, title: str) -> str:
    """When the stored inputs are valid: the figure's time, except for CorrDiffCMIP6.

    Its store keeps the daily inputs of the initialisation time at every lead time.
    """
    from corrdiff_tools.models import cmip6

    if stored_model_name(dataset.attrs) != cmip6.NAME:
        return title
    init = np.datetime64(dataset["time"].values[task.time_index], "s").astype(datetime)
    return f"daily fields of {init:%Y-%m-%d %H:%M} UTC, for the hour {title}"


def render_task(task: Task, context: RenderContext) -> np.ndarray | None:
    """Draw and save one figure; return its RGB pixels if GIF frames are wanted."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = build_figure(task, context)
    canvas = FigureCanvasAgg(fig)
    metadata = {"CreationDate": None} if context.fmt == "pdf" else None
    fig.savefig(task.path, dpi=context.dpi, format=context.fmt, metadata=metadata)
    if not (context.frames and task.kind == "sample"):
        return None
    if context.fmt in ("png", "jpg"):
        # The frame is the image just written, pixel for pixel: a second draw into the
        # canvas lays a fitted figure out slightly differently.
        from PIL import Image

        with Image.open(task.path) as image:
            return np.asarray(image.convert("RGB")).copy()
    fig.set_dpi(context.dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def render_all(
    tasks: Sequence[Task],
    context: RenderContext,
    jobs: int,
    progress: Callable[[int], Any] | None = None,
) -> list[np.ndarray | None]:
    """Render every task, in ``jobs`` worker processes (1: in this process), in order."""
    # Workers open the store once per process (``_open`` is cached); in this process a
    # store replaced since an earlier call (--overwrite) must be read again, not reused.
    _open.cache_clear()
    if jobs <= 1 or len(tasks) <= 1:
        results = []
        for task in tasks:
            results.append(render_task(task, context))
            if progress is not None:
                progress(1)
        return results
    pool = ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=get_context("spawn"),
        initializer=_start_worker,
        initargs=(list(warnings.filters),),
    )
    try:
        futures = [pool.submit(render_task, task, context) for task in tasks]
        results = []
        for future in futures:
            results.append(future.result())
            if progress is not None:
                progress(1)
    except BaseException:
        # Ctrl-C, SIGTERM or a failed figure: stop now. The executor's own exit would wait
        # for every queued figure, and the workers would outlive a terminated parent.
        _stop_workers(pool)
        raise
    pool.shutdown(wait=True)
    return results


def _start_worker(filters: list[Any]) -> None:
    """Set a worker up like its parent, but deaf to Ctrl-C.

    Workers leave Ctrl-C to the parent, which stops them (no tracebacks from each). A
    spawned process starts with Python's default warning filters, so library warnings
    the parent hides (without ``--debug``) would be printed once per worker: it gets
    the parent's filters instead.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.resetwarnings()
    for action, message, category, module, lineno in reversed(filters):
        warnings.filterwarnings(
            action,
            getattr(message, "pattern", message) or "",  # a compiled regex, a str or None
            category,
            getattr(module, "pattern", module) or "",
            lineno,
        )


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel queued figures and end the worker processes, without waiting for them."""
    processes = list(getattr(pool, "_processes", {}).values())  # no public handle
    # Workers first: one still starting up (reading its spawn data from the parent) would
    # print an EOFError traceback if the pool's pipes closed under it.
    for process in processes:
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
