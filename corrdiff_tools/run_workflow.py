"""The run: a validated request and its parts in, a complete store out.

Like earth2studio's ``run.deterministic(time, nsteps, model, data, io)``, the workflow
constructs none of its outside parts: the data source factory, the model loader, the
heavy-library import and the progress display come in a :class:`RunParts` (the CLI passes
the real ones, tests pass fakes). It owns the order of things: device, store lock,
ranks, inputs, model, resume plan, the loop (:func:`corrdiff_tools.downscale.downscale`),
statistics, summary. It never reads argparse.

A run, step by step (rank 0 alone where only one may act):

1. resolve the device (one GPU per rank under torchrun) and take the store's lock;
2. finish what a killed run left (:func:`corrdiff_tools.store.clean_leftovers`);
3. import the model stack, build the data source, load the model;
4. on ``--resume``, verify every completed piece and plan only what is missing;
5. downscale: fetch, compute and write each (time, [lead]) piece by piece, the store
   created (atomically) once the first inputs have arrived;
6. fill the ``--stats`` arrays of complete ensembles, and log a summary.
"""

from __future__ import annotations

import logging
import os
import time as clock
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from corrdiff_tools import times as times_mod
from corrdiff_tools.errors import RunError, UsageError

if TYPE_CHECKING:
    from corrdiff_tools.benchmark import BenchmarkResult
    from corrdiff_tools.distributed import Context
    from corrdiff_tools.downscale import Job, Sampler, Timings, Writer
    from corrdiff_tools.model import DeviceInfo
    from corrdiff_tools.models.declaration import Declaration
    from corrdiff_tools.network import Endpoint, Probe
    from corrdiff_tools.requests import BenchmarkRequest, ProgressFactory, RunRequest
    from corrdiff_tools.sampling import SamplerSettings
    from corrdiff_tools.sources import InputSource, SourceSpec
    from corrdiff_tools.store import Replacement, StoreLayout, StoreWriter

logger = logging.getLogger("corrdiff_tools")

#: Builds the data source for a ``--source`` and the run's times.
SourceFactory = Callable[["SourceSpec", Sequence[datetime]], "InputSource"]
#: Loads CorrDiff from a ``--model-package`` (or a generic ``--model`` folder) onto a device
#: in a ``--precision``: the model and the dtype name of that precision.
ModelLoader = Callable[[str, "DeviceInfo", str], tuple[Any, str]]
#: The hosts a request will download from (see :mod:`corrdiff_tools.network`).
EndpointFinder = Callable[["RunRequest"], Sequence["Endpoint"]]


def no_endpoints(request: RunRequest) -> Sequence[Endpoint]:
    """For runs whose source and model are local (or fakes, in tests)."""
    return ()


@dataclass(frozen=True)
class RunParts:
    """The outside parts a run is built from (see the module docstring)."""

    build_source: SourceFactory
    load_model: ModelLoader
    #: Imports earth2studio's model stack (slow), quietly, and tames its logging.
    import_libraries: Callable[[], None]
    progress: ProgressFactory
    #: What to check is reachable before anything waits on the network.
    endpoints: EndpointFinder = no_endpoints
    #: ``time.monotonic()`` when the run started: the process start for the command line
    #: (see :func:`process_age`), the call for a run started from Python.
    started: float = field(default_factory=clock.monotonic)


def run(request: RunRequest, parts: RunParts) -> int:
    """Downscale (or prefetch) what ``request`` asks for; return the exit code."""
    from corrdiff_tools import distributed, model, network, store
    from corrdiff_tools.lock import StoreLock

    rank, world, local_rank = distributed.launched_ranks()
    # Started first, so the connections overlap with importing torch and earth2studio.
    probe = network.Probe(parts.endpoints(request)) if rank == 0 else None
    device_spec = request.device
    if world > 1 and device_spec in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            device_spec = f"cuda:{local_rank}"  # one GPU per rank, pinned by LOCAL_RANK
    device = model.resolve_device(device_spec)
    _check_precision(request, device)  # before the lock: a refused run writes nothing
    if rank != 0:
        logger.setLevel(max(logger.level, logging.WARNING))  # one report, from rank 0
    # Every rank has validated before any joins, so none can see another's store as
    # "already existing"; joining the group is the first synchronisation point.
    lock = StoreLock(request.output) if rank == 0 and request.prefetch is None else None
    if lock is not None:
        try:
            lock.acquire()  # after validation: a refused run has written nothing
        except ValueError as err:
            raise UsageError(str(err)) from None
    try:
        if lock is not None:
            store.clean_leftovers(request.output)  # of a run killed mid-creation
        ranks = distributed.start(device.is_gpu)
        try:
            return _run_ranked(request, parts, device, ranks, probe)
        finally:
            ranks.close()
    finally:
        if lock is not None:
            lock.release()


def _run_ranked(
    request: RunRequest, parts: RunParts, device: DeviceInfo, ranks: Context, probe: Probe | None
) -> int:
    from corrdiff_tools import sources, speed, store

    logger.info(
        "device: %s%s",
        device.description,
        f" (rank {ranks.rank} of {ranks.world})" if ranks.enabled else "",
    )
    if probe is not None:
        _check_reachable(probe)
    clocks = StartUp(parts.started)
    logger.info("importing earth2studio and physicsnemo ...")
    parts.import_libraries()
    clocks.imported()
    logger.info("imported in %.1f s", clocks.imports)
    opened = clock.perf_counter()
    # Every time the inputs are read at (CorrDiffCMIP6: the days around each time).
    read_times = request.model.input_times(request.times)
    source = parts.build_source(request.source, read_times) if ranks.is_root else None
    clocks.opened_source(clock.perf_counter() - opened)
    extras = [v for v in request.lowres_variables if v not in request.model.inputs]
    if request.prefetch is not None:
        code = prefetch(request, source, extras) if source is not None else 0
        ranks.barrier()
        return code

    speed.tune_host_allocator()  # before the first large allocation (see speed.py)
    corrdiff, precision, load_time = _load(request, parts, device, ranks)
    sampler = make_sampler(request, corrdiff)
    logger.info("%s", request.sampler.describe())
    resuming = request.resume and request.output.exists()
    layout = _layout(request, sampler)
    attrs = _attributes(request, device.description, precision)
    if resuming and ranks.is_root:
        _restore_missing(request, layout, attrs)
        _recompute_damaged(store.StoreWriter(request.output))
    ranks.barrier()  # every rank plans from the verified flags
    done = store.StoreWriter(request.output).completed() if resuming else None
    jobs = plan_jobs(request, done, ranks)
    if resuming:
        left = sum(ranks.gather(sum(len(job.samples) for job in jobs)))
        logger.info("resuming %s: %d sample(s) left to compute", request.output, left)
        if left == 0:
            logger.info("nothing to do: %s is complete", request.output)
            _store_statistics(request.output, request.statistics, ranks)
            return 0

    # A model that reads the days around its time (CorrDiffCMIP6) reads the same days
    # for every lead time of that time: fetched once, for the jobs of one time in a row.
    last: dict[datetime, dict[str, np.ndarray]] = {}

    def fetch(job: Job) -> dict[str, np.ndarray]:
        assert source is not None  # noqa: S101 - only rank 0 fetches (broadcast_fetch)
        if job.time in last:
            return last[job.time]
        fields = sources.fetch_inputs(
            source, request.source, job.time, job.lead_hours, extras, request.model
        )
        if request.model.multi_lead:
            last.clear()
            last[job.time] = fields
        return fields

    if ranks.is_root and request.source.kind != "file":
        logger.info(
            "inputs come from %s, fetched time by time as the run goes (the next one while "
            "the current one computes)",
            request.source.label,
        )
    replacements: list[Replacement] = []
    open_writer = _writer_opener(request, layout, attrs, ranks, resuming, replacements)
    try:
        timings = _downscale(request, parts, device, jobs, fetch, sampler, open_writer, ranks)
    finally:
        for replacement in replacements:
            replacement.discard()
    _store_statistics(request.output, request.statistics, ranks)
    _summary(request, device, ranks, timings, load_time, clocks)
    return 0


def _check_precision(request: RunRequest, device: DeviceInfo) -> None:
    """Refuse fp16 on a CPU, and a ``--resume`` that would mix precisions in one store.

    Samples of one ensemble must come from one arithmetic: a store begun in float16 on a
    GPU and finished in float32 on a CPU would hold members that differ by more than the
    sampling noise of the last bits, under a ``precision`` attribute naming only one.
    """
    from corrdiff_tools import model, store

    chosen = model.resolve_precision(request.precision, device, request.model.gpu_precision)
    dtype = model.PRECISIONS[chosen]
    if not (request.resume and store.is_store(request.output)):
        return
    stored = store.read_attrs(request.output).get("precision")
    if stored is not None and stored != dtype:
        flag = {v: k for k, v in model.PRECISIONS.items()}.get(str(stored), str(stored))
        where = " on a GPU" if flag == "fp16" else ""
        raise UsageError(
            f"--resume {request.output}: its samples were computed in {stored}, this run "
            f"would compute in {dtype} ({device.description}): finish it with --precision "
            f"{flag}{where}, or start a new store"
        )


def process_age() -> float:
    """Seconds since this process started (the interpreter's own start-up included).

    Read from ``/proc`` (Linux); elsewhere, from when this module was imported.
    """
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start, in ticks
        return max(0.0, clock.clock_gettime(clock.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):  # pragma: no cover - not Linux
        return clock.perf_counter() - _IMPORTED


_IMPORTED = clock.perf_counter()


class StartUp:
    """When the run's start-up ended, and how much of it was earth2studio's import."""

    def __init__(self, started: float) -> None:
        self.started = started
        self._before_imports = self.elapsed()
        self.imports = 0.0
        self.startup = self._before_imports
        self.source = 0.0

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return clock.monotonic() - self.started

    def imported(self) -> None:
        """Mark the end of the heavy imports: the end of start-up."""
        self.startup = self.elapsed()
        self.imports = self.startup - self._before_imports

    def opened_source(self, seconds: float) -> None:
        """Time spent building the data source (a file is read there, whole)."""
        self.source = seconds


def _check_reachable(probe: Probe) -> None:
    """Stop now, listing every host the run cannot do without, if any is unreachable.

    A host whose earth2studio cache already holds downloads only earns a warning: the
    cache may hold what the run needs (then it works offline), and if not, the fetch
    fails at once with the same kind of one-line message.
    """
    from corrdiff_tools import network, sources

    failures = probe.unreachable()
    fatal = [(e, why) for e, why in failures if not e.cached]
    if fatal:
        raise RunError(network.unreachable_message(fatal, sources.OFFLINE_HINT))
    for endpoint, why in failures:
        logger.warning(
            "cannot reach %s for the %s (%s): trying earth2studio's cache in %s",
            endpoint.address,
            endpoint.what,
            why,
            endpoint.cache,
        )


def _load(
    request: RunRequest, parts: RunParts, device: DeviceInfo, ranks: Context
) -> tuple[Any, str, float]:
    """Load the model on every rank (extracted once, by rank 0); the load time."""
    from corrdiff_tools import model, speed

    start = clock.perf_counter()
    if ranks.enabled and ranks.is_root and request.is_taiwan:
        model.prepare_package(request.model_package)  # extract once, before the others load
    ranks.barrier()
    corrdiff, precision = parts.load_model(request.model_package, device, request.precision)
    seconds = clock.perf_counter() - start
    logger.info("model loaded in %.1f s (%s)", seconds, precision)
    if request.compile:
        speed.compile_networks(corrdiff)
        logger.info("networks will be compiled on their first call (slow once)")
    return corrdiff, precision, seconds


def make_sampler(request: RunRequest, loaded: Any) -> Sampler:
    """The forward pass of the loaded model: Taiwan's, or a generic package's.

    A generic package's is checked against what its files declared when the request was
    validated (variables, grids, and the sampler its ``metadata.json`` asks for): the
    store is laid out from that declaration.
    """
    # What the user gave (a zip, an address), not the cache folder it was made into.
    shown = f"--model {request.package_identity.get('path', request.model_package)}"
    return sampler_for(loaded, request.model, request.sampler, shown, request.package_sampler)


def sampler_for(
    loaded: Any,
    declared: Declaration,
    settings: SamplerSettings,
    shown: str,
    read: SamplerSettings | None,
) -> Sampler:
    """:func:`make_sampler` from its parts (``--benchmark`` has no store request).

    ``read`` is the sampler the run tool read from a package's ``metadata.json``.
    """
    from corrdiff_tools import downscale

    if declared.is_taiwan:
        return downscale.CorrDiffSampler(loaded, settings)
    from corrdiff_tools.models import cmip6, declaration, generic

    if declared.name == cmip6.NAME:
        from corrdiff_tools.models.cmip6_net import Cmip6Sampler

        sampler: generic.GenericSampler = Cmip6Sampler(loaded, settings)
    else:
        sampler = generic.GenericSampler(loaded, settings)
    declaration.check_loaded(declared, sampler.declaration, shown)
    if read is not None and generic.package_settings(loaded) != read:
        raise RunError(
            f"{shown}: earth2studio read the sampler settings "
            f"{generic.package_settings(loaded).describe()} from metadata.json, the run tool "
            f"{read.describe()}: name the sampler you want with --preset and its options"
        )
    return sampler


def plan_jobs(request: RunRequest, done: np.ndarray | None, ranks: Context) -> list[Job]:
    """The (time, [lead]) jobs of this rank, each with the samples not ``done`` yet.

    Samples are dealt round-robin across ranks, continuing from one job to the next so
    ranks stay balanced. Every rank keeps every job (rank 0 fetches and broadcasts its
    inputs), even one whose share of samples here is empty.
    """
    from corrdiff_tools import distributed, downscale, store

    jobs = []
    dealt = 0
    for ti, time in enumerate(request.times):
        leads = [None] if request.lead_times is None else range(len(request.lead_times))
        for li in leads:
            index = store.piece_index(ti, li)
            todo = tuple(
                s for s in range(request.samples) if done is None or not bool(done[(*index, s)])
            )
            if todo:
                mine = distributed.share(todo, ranks, dealt)
                lead = 0 if li is None or request.lead_times is None else request.lead_times[li]
                # The rank holding the first sample stores the regression mean.
                jobs.append(downscale.Job(index, time, lead, mine, todo[0] in mine))
                dealt += len(todo)
    return jobs


def _layout(request: RunRequest, sampler: Sampler) -> StoreLayout:
    return request.layout(sampler.lat, sampler.lon)


def _attributes(request: RunRequest, device: str, precision: str) -> dict[str, object]:
    from corrdiff_tools import sampling, store

    source = request.source
    return store.provenance(
        command=request.command,
        model_package=request.package_identity.get("path", request.model_package),
        input_source=str(source.path.resolve()) if source.path is not None else source.label,
        seed=request.seed,
        sampler=sampling.store_attrs(request.sampler),
        geometry=request.geometry,
        device=device,
        precision=precision,
        **PROVENANCE.get(request.model.name, {}),
    )


#: What a store of another model than Taiwan says of its model and conditioning.
PROVENANCE = {
    "package": {
        "model": "CorrDiff (a generic package)",
        "title": "CorrDiff (a generic package) downscaled ensemble",
        "maker": "",  # the user's own training, not NVIDIA's
        "conditioning": "as the package's metadata.json says (invariants, positional "
        "channels, hr_mean_conditioning), through earth2studio's CorrDiff.preprocess_input",
    },
    "cmip6": {
        "model": "CorrDiffCMIP6",
        "title": "CorrDiffCMIP6 downscaled ensemble (daily CMIP6 to hourly ERA5-like fields)",
        "conditioning": "earth2studio's CorrDiffCMIP6.preprocess_input on a copy of the "
        "inputs: each input at -24, 0, +24 h around the initialisation time, sea-ice and "
        "snow cover smoothed, invariants, solar zenith angle and hour of day at the valid "
        "time; the store's lr_ fields are the inputs at the initialisation time",
    },
}


def _writer_opener(
    request: RunRequest,
    layout: StoreLayout,
    attrs: dict[str, object],
    ranks: Context,
    resuming: bool,
    replacements: list[Replacement],
) -> Callable[[], Writer]:
    """What the loop calls once its first inputs have arrived: create (rank 0), then open.

    An ``--overwrite`` of a single process writes a new store beside the old one, which it
    replaces only once a batch is complete (:class:`corrdiff_tools.store.Replacement`,
    appended to ``replacements`` so the caller can drop it if the run fails first).
    """
    from corrdiff_tools import store

    output = request.output

    def open_writer() -> Writer:
        if ranks.is_root and not resuming:
            output.parent.mkdir(parents=True, exist_ok=True)
            if output.exists() and request.overwrite and not ranks.enabled:
                logger.info("replacing %s (--overwrite) once its first batch is complete", output)
                replacement = store.Replacement(output, layout, attrs, request.resume_settings())
                replacements.append(replacement)
                return replacement
            if output.exists() and request.overwrite:
                logger.info("replacing %s (--overwrite)", output)
            store.create_store(
                output, layout, attrs, request.resume_settings(), replace=request.overwrite
            )
        ranks.barrier()  # every array exists before any rank writes
        writer = store.StoreWriter(output)
        return writer if ranks.is_root else _SamplesOnly(writer)

    return open_writer


def _downscale(
    request: RunRequest,
    parts: RunParts,
    device: DeviceInfo,
    jobs: list[Job],
    fetch: Callable[[Job], dict[str, np.ndarray]],
    sampler: Sampler,
    open_writer: Callable[[], Writer],
    ranks: Context,
) -> Timings:
    from corrdiff_tools import distributed, downscale, model

    batch_size, adaptive = model.default_batch_size(request.samples, request.batch_size, device)
    if device.is_gpu:
        import torch

        torch.cuda.reset_peak_memory_stats(device.device)
    with parts.progress(sum(len(job.samples) for job in jobs)) as update:
        return downscale.downscale(
            jobs,
            distributed.broadcast_fetch(fetch, ranks),
            sampler,
            open_writer,
            seed=request.seed,
            batch_size=batch_size,
            adaptive_batch=adaptive,
            progress=update,
            overlap_fetch=request.source.kind != "file",
            background_open=not ranks.enabled,
        )


def _summary(
    request: RunRequest,
    device: DeviceInfo,
    ranks: Context,
    timings: Timings,
    load_time: float,
    clocks: StartUp,
) -> None:
    """The closing line: where every second since the process started went."""
    from corrdiff_tools import model

    peak = model.peak_memory_bytes(device)
    per_rank = ranks.gather((timings.samples, timings.inference, peak))
    wall = clocks.elapsed()
    parts = {
        "start-up": clocks.startup,
        "model load": load_time,
        "waiting for inputs": clocks.source + timings.fetch,
        "inference": timings.inference,
        "write": timings.write,
    }
    other = max(0.0, wall - sum(parts.values()))
    # Each job is one (time, lead time): say how many of each, not "6 times" for 2 x 3.
    leads = len(request.lead_times or ())
    pieces = f"{len(request.times)} time(s)" + (f" x {leads} lead time(s)" if leads else "")
    logger.info(
        "done: %d sample(s) for %s in %.1f s since start: start-up %.1f s "
        "(of which importing earth2studio %.1f s), %s, other %.1f s; peak %s memory "
        "%.2f GiB; wrote %s",
        sum(samples for samples, _, _ in per_rank),
        pieces,
        wall,
        clocks.startup,
        clocks.imports,
        ", ".join(f"{name} {seconds:.1f} s" for name, seconds in list(parts.items())[1:]),
        other,
        "device" if device.is_gpu else "host",
        peak / 2**30,
        request.output,
    )
    if ranks.enabled:
        for rank, (samples, seconds, rank_peak) in enumerate(per_rank):
            rate = samples / seconds if seconds > 0 else 0.0
            logger.info(
                "  rank %d: %d sample(s), %.1f s inference, %.3f samples/s, peak %.2f GiB",
                rank,
                samples,
                seconds,
                rate,
                rank_peak / 2**30,
            )


def _restore_missing(request: RunRequest, layout: StoreLayout, attrs: dict[str, object]) -> None:
    """``--resume`` recreates arrays whose metadata was lost (see store.restore_missing)."""
    from corrdiff_tools import store

    restored, rewritten = store.restore_missing(
        request.output, layout, attrs, request.resume_settings()
    )
    if restored:
        logger.warning(
            "%s lacked the metadata of %s: recreated empty, and what they held is computed again",
            request.output,
            ", ".join(restored),
        )
    if rewritten:
        logger.warning(
            "%s had damaged coordinates (%s): rewritten from the run's settings and grid",
            request.output,
            ", ".join(rewritten),
        )


def _recompute_damaged(writer: StoreWriter) -> None:
    """``--resume`` trusts no completion flag it has not read back (see StoreWriter.damaged)."""
    damaged = writer.damaged()
    if not damaged:
        return
    logger.warning(
        "%d piece(s) marked complete in %s are missing or unreadable (first: %s); "
        "computing them again",
        len(damaged),
        writer.path,
        damaged[0][1],
    )
    writer.unmark([piece for piece, _ in damaged])


def _store_statistics(output: Path, thresholds: dict[str, float] | None, ranks: Context) -> None:
    """``--stats``: once every rank's samples are on disk, rank 0 fills the statistics."""
    from corrdiff_tools import store

    if thresholds is None:
        return
    ranks.barrier()
    if ranks.is_root:
        written, waiting = store.write_statistics(output, thresholds)
        logger.info(
            "ensemble statistics stored for %d time(s)%s",
            written,
            f"; {waiting} incomplete, filled by a later --resume" if waiting else "",
        )


class _SamplesOnly:
    """A store writer for ranks other than 0: inputs are written by rank 0 alone."""

    def __init__(self, writer: StoreWriter) -> None:
        self._writer = writer

    def write_inputs(self, index: tuple[int, ...], fields: Mapping[str, np.ndarray]) -> None:
        """Leave the inputs to rank 0."""

    def write_regression(self, index: tuple[int, ...], fields: Mapping[str, np.ndarray]) -> None:
        """Write the regression mean of a job whose first sample is this rank's."""
        self._writer.write_regression(index, fields)

    def write_samples(
        self, index: tuple[int, ...], samples: Sequence[int], fields: Mapping[str, np.ndarray]
    ) -> None:
        """Write this rank's samples."""
        self._writer.write_samples(index, samples, fields)


def prefetch(request: RunRequest, source: InputSource, extras: list[str]) -> int:
    """``--prefetch FILE``: the inputs of every time into FILE, the model into the cache.

    FILE holds every time the model reads (CorrDiffCMIP6: the days around each time, each
    once) on the model's input grid, each checked as a run checks it, so that
    ``--source FILE`` later runs offline what the source would have given.
    """
    from dataclasses import replace

    from corrdiff_tools import model, sources
    from corrdiff_tools.models import cmip6

    assert request.prefetch is not None  # noqa: S101 - the caller checks
    declared = request.model
    read_times = declared.input_times(request.times)
    # One time per read: a model that reads several days per time has them fetched once.
    single = replace(declared, input_leads=(0,)) if declared.multi_lead else declared
    fields = []
    for time in read_times:
        logger.info("fetching %s", times_mod.format_time(time))
        fields.append(sources.fetch_inputs(source, request.source, time, 0, extras, single))
    request.prefetch.parent.mkdir(parents=True, exist_ok=True)
    sources.write_input_file(request.prefetch, read_times, fields, declared)
    logger.info("inputs for %d time(s) written to %s", len(read_times), request.prefetch)
    if request.is_taiwan:
        directory = model.prepare_package(request.model_package)
        offline = f"--model-package {directory}"
    else:  # fetched or extracted when the request was validated
        directory = Path(request.model_package)
        named = f"{cmip6.NAME} --model-package " if declared.name == cmip6.NAME else ""
        offline = f"--model {named}{directory}"
    logger.info("model package ready in %s: offline, pass %s", directory, offline)
    return 0


def benchmark(request: BenchmarkRequest, import_libraries: Callable[[], None]) -> BenchmarkResult:
    """``--benchmark``: time a model on synthetic inputs, write nothing.

    CorrDiff Taiwan: a random-weight model of the published shape. A package model: the
    package itself (fetched or extracted when the request was validated), loaded, given
    the run's forward pass and timed on random inputs of its variables and grid.
    """
    from corrdiff_tools import benchmark as bench
    from corrdiff_tools import model, speed
    from corrdiff_tools.models import cmip6

    device = model.resolve_device(request.device)
    # Refuse fp16 on a CPU at once.
    model.resolve_precision(request.precision, device, request.model.gpu_precision)
    speed.tune_host_allocator()
    logger.info("device: %s", device.description)
    import_libraries()
    batch_size, _ = model.default_batch_size(request.samples, request.batch_size, device)
    if request.model.is_taiwan:
        return bench.run_benchmark(
            device,
            request.size,
            samples=request.samples,
            batch_size=batch_size,
            sampler_settings=request.sampler,
            compile_nets=request.compile,
            seed=request.seed,
            precision=request.precision,
        )
    import torch

    declared = request.model

    def sync() -> None:
        if device.is_gpu:
            torch.cuda.synchronize(device.device)

    def load() -> tuple[Any, str]:
        return model.load_generic(request.model_package, device, request.precision, declared)

    (loaded, dtype), seconds = bench.timed(load, sync)
    if request.compile:
        speed.compile_networks(loaded)
    sampler = sampler_for(loaded, declared, request.sampler, request.shown, request.package_sampler)
    rows, columns = declared.output_shape
    kind = "CorrDiffCMIP6" if declared.name == cmip6.NAME else "a generic CorrDiff package"
    # CorrDiffCMIP6 is timed at its first output lead time: each lead costs the same.
    first = declared.output_leads[0] if declared.output_leads else 0
    return bench.time_ensemble(
        loaded,
        device,
        samples=request.samples,
        batch_size=batch_size,
        sampler_settings=request.sampler,
        compiled=request.compile,
        seed=request.seed,
        precision=dtype,
        load=seconds,
        sampler=sampler,
        inputs=bench.package_inputs(declared, request.seed),
        valid_time=datetime(2024, 7, 24, 12) + timedelta(hours=first),
        network=f"{kind} ({request.shown}), {rows}x{columns} out, its own weights",
    )
