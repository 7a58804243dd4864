"""The core loop: inputs -> CorrDiff -> store. Everything is injected; nothing is invented here.

The forward pass, and why we own it
-----------------------------------
Since earth2studio 0.10 (PR #455), ``CorrDiffTaiwan`` conditions the published diffusion
checkpoint (``corrdiff_inference_package@1``) on ``[noisy x, regression mean, ERA5]``.
That checkpoint was trained (physicsnemo v0.5.0 CorrDiff with ``add_grid``, and
``hr_mean_conditioning: false`` in physicsnemo's ``config_generate_taiwan.yaml``) on
``[noisy x (4), ERA5 normalised (12), sin/cos grid (4)]``. The channel count is the same,
so nothing fails, but the 4 backbone channels trained on the positional grid receive
v850/t2m/u10m/v10m and the 4 trained on tcwv..v500 receive the regression mean.

Here the regression net gets ``[zeros(4), ERA5n(12), grid(4)]`` (as earth2studio does)
and the diffusion net ``[noisy(4), ERA5n(12), grid(4)]``, with no mean conditioning.
We reuse earth2studio's interpolation function and normalisation statistics, and
physicsnemo's networks and EDM samplers unchanged (``sampling.py`` picks the sampler).

The geometry the checkpoint was trained on
------------------------------------------
The package ships a 450 x 450 curvilinear grid (``XLAT``/``XLONG``); the networks are
448 x 448. earth2studio (``CorrDiffTaiwan._interpolate`` and ``__init__``) uses the centre
window ``[1:-1, 1:-1]`` and sin/cos positional channels over ``linspace(0, 2 pi, 448)``.
The code the checkpoint was trained and evaluated with, modulus v0.5.0
``examples/generative/corrdiff``, does otherwise:

* ``training/img_utils.py`` lines 56-57 take the grid size from the data (450 x 450, the
  CWB/ERA5 arrays of the training Zarr), lines 98-99 build the sin/cos channels over
  ``linspace(0, 2 pi, 450)``, and line 113 then crops inputs, channels and target
  together to ``[rnd_x : rnd_x + 448, rnd_y : rnd_y + 448]``.
* ``training/dataset.py`` lines 362-366: ``rnd_x = rnd_y = 0`` outside training, and in
  training ``random.randint(0, img_shape_x - crop_size_x)`` with ``img_shape_x: 448`` and
  ``crop_size_x: 448`` (``conf/config_train_diffusion.yaml`` lines 83 and 88, the same in
  the regression config) is also always 0. ``generate.py`` line 147 passes ``train=None``.
* So the networks always saw the window that starts at pixel (0, 0) of the 450 grid,
  with channels ``sin/cos(linspace(0, 2 pi, 450))[:448]``. v0.5.0's NetCDF writer labelled
  its output with ``lat[1:-1, 1:-1]`` (``generate.py`` line 757), the label earth2studio
  inherited; modulus fixed it in ec01e425 (2024-04-16): ``datasets/cwb.py`` returns
  ``lat[..., :448, :448]`` for generation, as physicsnemo still does
  (``examples/weather/corrdiff/datasets/cwb.py`` line 463 at 94b355108).

We use that trained geometry for the interpolation target, the positional channels and
the stored lat/lon (:data:`WINDOW`). Against earth2studio's, every pixel moves one grid
step (2 km) south-west in where the inputs are sampled and labelled, and the positional
channels differ by up to 0.028 at the far edge.


Other differences from ``CorrDiffTaiwan.__call__``: the initial noise of sample ``i`` at
time ``t`` (and its churn noise, if any) comes from a generator seeded by
``(seed, t, lead, i)`` alone (earth2studio draws one random seed per call), so an
ensemble does not depend on batch size, device count or which other times are in the
run; churn noise multiplied by exactly 0 (``S_churn = 0``) is not drawn; samples go through the
diffusion net in batches of at most ``batch_size`` (earth2studio sends all at once, so
memory grows with the ensemble); the regression mean is computed once per time and broadcast.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time as clock
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from corrdiff_tools import checks
from corrdiff_tools.errors import RunError
from corrdiff_tools.sampling import PRESETS, SamplerSettings, draw_residuals
from corrdiff_tools.store import HR_SHAPE, OUTPUT_VARIABLES, TAIWAN
from corrdiff_tools.times import format_time

if TYPE_CHECKING:
    import torch
    from earth2studio.models.dx import CorrDiffTaiwan

    from corrdiff_tools.models.declaration import Declaration

logger = logging.getLogger(__name__)

#: Side of the package's curvilinear grid (``XLAT``/``XLONG``), in pixels.
PACKAGE_GRID = 450
#: The 448 x 448 window of that grid the networks were trained on: it starts at pixel
#: (0, 0) (see the module docstring for the modulus v0.5.0 sources).
WINDOW = (slice(0, HR_SHAPE[0]), slice(0, HR_SHAPE[1]))

#: How the store records that geometry (part of the settings ``--resume`` must match).
GEOMETRY = "trained: 448x448 window at pixel (0, 0) of the package's 450x450 grid"

#: Minutes between this epoch and a valid time enter the noise seed (modulo 2**64).
SEED_EPOCH = datetime(1900, 1, 1)


def sample_seed(seed: int, time: datetime, lead_hours: int, sample: int) -> int:
    """The noise seed of one ensemble member: a function of (seed, time, lead, sample) alone.

    Parameters
    ----------
    seed : int
        The run's ``--seed``.
    time : datetime
        Valid (analysis or initialisation) time.
    lead_hours : int
        Forecast lead time, 0 for analyses (negative for CorrDiffCMIP6's first hours).
    sample : int
        Ensemble member index.

    Returns
    -------
    int
        A 64-bit seed for ``torch.Generator.manual_seed``.
    """
    minutes = int((time - SEED_EPOCH).total_seconds() // 60)
    # SeedSequence takes non-negative integers: a time before the epoch (a reanalysis of
    # the 1800s) and a negative lead time (CorrDiffCMIP6's run from -12 h) are taken
    # modulo 2**64, which leaves every other seed as it was.
    sequence = np.random.SeedSequence([seed, minutes % 2**64, int(lead_hours) % 2**64, sample])
    return int(sequence.generate_state(1, dtype=np.uint64)[0])


def grid_channels() -> np.ndarray:
    """The 4 sin/cos positional channels the checkpoint was trained with, shape (4, 448, 448).

    Built over the package's full 450-pixel grid and cut to :data:`WINDOW`, as modulus
    v0.5.0 ``training/img_utils.py`` lines 94-113 do; channel order (sin x, sin y, cos x,
    cos y), x along columns, as there and in earth2studio.
    """
    axis = np.linspace(0, 2 * np.pi, PACKAGE_GRID)
    grid_x1, grid_y1 = np.meshgrid(np.sin(axis), np.sin(axis))
    grid_x2, grid_y2 = np.meshgrid(np.cos(axis), np.cos(axis))
    full = np.stack((grid_x1, grid_y1, grid_x2, grid_y2))
    return full[(slice(None), *WINDOW)].astype("float32")


class Sampler(Protocol):
    """A model's forward pass, as the loop calls it.

    Taiwan's is :class:`CorrDiffSampler`; a generic package's is
    :class:`corrdiff_tools.models.generic.GenericSampler`.
    """

    #: The model's variables and grids.
    declaration: Declaration
    settings: SamplerSettings

    def condition(self, inputs: np.ndarray, valid_time: datetime | None = None) -> torch.Tensor:
        """The networks' conditioning from the inputs in ``declaration.inputs`` order."""

    def regression_mean(self, condition: torch.Tensor) -> torch.Tensor:
        """The regression net's mean, normalised."""

    def draw(
        self, condition: torch.Tensor, mean: torch.Tensor, seeds: Sequence[int]
    ) -> torch.Tensor:
        """One batch of normalised samples, a generator per seed."""

    def denormalise(self, x: torch.Tensor) -> np.ndarray:
        """Normalised -> physical units, float32 on the host."""

    @property
    def lat(self) -> np.ndarray:
        """Output latitudes, 2-D."""

    @property
    def lon(self) -> np.ndarray:
        """Output longitudes, 2-D."""


class CorrDiffSampler:
    """CorrDiff Taiwan's forward pass with the conditioning the checkpoint was trained on.

    Parameters
    ----------
    model : earth2studio.models.dx.CorrDiffTaiwan
        A loaded model (weights, normalisation and grids are read from it).
    settings : SamplerSettings
        The diffusion sampler and its settings (default: the ``blog`` preset).
    """

    def __init__(self, model: CorrDiffTaiwan, settings: SamplerSettings = PRESETS["blog"]) -> None:
        import torch

        self.model = model
        self.settings = settings
        self.device = model.in_center.device
        self._grid = torch.as_tensor(grid_channels(), device=self.device)[None]

    declaration = TAIWAN

    def condition(self, inputs: np.ndarray, valid_time: datetime | None = None) -> torch.Tensor:
        """Interpolate, normalise and add the grid: (12, 36, 40) -> (1, 16, 448, 448).

        ``valid_time`` is not read: the Taiwan checkpoint has no time features.

        The inputs are interpolated (earth2studio's bilinear function, as its
        ``_interpolate`` does) onto the package's full grid and cut to the trained
        :data:`WINDOW`, not earth2studio's centre window.
        """
        import torch
        from earth2studio.utils import interp

        box = self.model.input_coords()
        x = torch.as_tensor(np.asarray(inputs, dtype="float32"), device=self.device)
        x = interp.latlon_interpolation_regular(
            x,
            torch.as_tensor(box["lat"], device=self.device, dtype=torch.float32),
            torch.as_tensor(box["lon"], device=self.device, dtype=torch.float32),
            self.model.out_lat_full,
            self.model.out_lon_full,
        )[(..., *WINDOW)][None]
        x = (x - self.model.in_center) / self.model.in_scale
        return torch.cat((x, self._grid), dim=1)

    def regression_mean(self, condition: torch.Tensor) -> torch.Tensor:
        """The regression net's mean, normalised, shape (1, 4, 448, 448)."""
        import torch

        zeros = torch.zeros(
            (1, len(OUTPUT_VARIABLES), *HR_SHAPE), dtype=torch.float32, device=self.device
        )
        with torch.inference_mode():
            return self.model.regression_model(x=zeros, img_lr=condition)

    def residuals(self, condition: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """Diffusion residuals for one batch of samples, normalised, shape (B, 4, 448, 448).

        The initial noise (and any churn noise) is drawn on the CPU from one generator
        per sample, so it is the same on every device and for every batch size.
        """
        return draw_residuals(
            self.model.residual_model, condition, len(OUTPUT_VARIABLES), seeds, self.settings
        )

    def draw(
        self, condition: torch.Tensor, mean: torch.Tensor, seeds: Sequence[int]
    ) -> torch.Tensor:
        """One batch of normalised samples: the mean plus a residual per seed."""
        return mean + self.residuals(condition, seeds)

    def denormalise(self, x: torch.Tensor) -> np.ndarray:
        """Normalised model output -> physical units on the host, float32."""
        out = x.float() * self.model.out_scale + self.model.out_center
        return out.cpu().numpy().astype("float32")

    @property
    def lat(self) -> np.ndarray:
        """Output latitudes (448, 448): the trained window of the package's grid."""
        return np.asarray(self.model.out_lat_full[WINDOW].cpu().numpy())

    @property
    def lon(self) -> np.ndarray:
        """Output longitudes (448, 448): the trained window of the package's grid."""
        return np.asarray(self.model.out_lon_full[WINDOW].cpu().numpy())


@dataclass(frozen=True)
class Job:
    """One (time, lead) of the run and the samples still to compute there."""

    index: tuple[int, ...]
    time: datetime
    lead_hours: int
    samples: tuple[int, ...]
    #: Store the regression mean of this job (one rank per job does, when distributed).
    writes_mean: bool = True


class Writer(Protocol):
    """What the loop needs from a store (see :class:`corrdiff_tools.store.StoreWriter`)."""

    def write_inputs(self, index: tuple[int, ...], fields: Mapping[str, np.ndarray]) -> None:
        """Store one time's low-resolution fields."""

    def write_regression(self, index: tuple[int, ...], fields: Mapping[str, np.ndarray]) -> None:
        """Store one time's regression mean in physical units."""

    def write_samples(
        self, index: tuple[int, ...], samples: Sequence[int], fields: Mapping[str, np.ndarray]
    ) -> None:
        """Store a batch of samples and mark them complete."""


class BackgroundWriter:
    """A :class:`Writer` whose writes run on one background thread while the loop computes.

    Calls run one at a time, in the order they were made, so a batch's completion flags
    are still written only after its fields. At most two calls are queued (the host holds
    at most two finished pieces besides the one being computed): a call beyond that first
    waits for the oldest, and that wait is the write time the run could not hide. A failed
    call is raised in the loop when it is waited for, at the latest by :meth:`finish`, which
    the loop calls before it reports the run complete; nothing queued after it is written.

    A context manager: leaving it stops the thread. When the loop stops on an error
    (inputs that cannot be fetched, a failed batch), the queued calls are still made
    first (:meth:`settle`): what was computed before the error is on disk, and a
    ``--resume`` does not redo it. When it is asked to stop (SIGTERM, Ctrl-C), the call in
    flight is finished (a fraction of a second: one batch, or the store's creation, which
    is atomic; its flags are set only once its fields are on disk) and the queued ones are
    dropped.

    With ``open_here=False`` the store itself is created on the background thread too
    (its first call), so creating it overlaps the first regression; ranks of a torchrun
    job open it on the loop's thread, as opening is collective there.
    """

    #: Calls queued at most, the one running included.
    DEPTH = 2

    def __init__(self, open_writer: Callable[[], Writer], open_here: bool) -> None:
        self._queued: collections.deque[Future[None]] = collections.deque()
        self._failed = False
        self._writer: Writer | None = open_writer() if open_here else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="write")
        if self._writer is None:
            self._queued.append(self._pool.submit(self._run, self._open, open_writer))

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        if isinstance(error, Exception):
            self.settle()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _open(self, open_writer: Callable[[], Writer]) -> None:
        self._writer = open_writer()

    def _run(self, call: Callable[..., None], *args: Any) -> None:
        if self._failed:
            return  # an earlier call failed: its error is what the loop will see
        try:
            call(*args)
        except BaseException:
            self._failed = True
            raise

    def _wait(self, keep: int) -> None:
        while len(self._queued) > keep:
            self._queued.popleft().result()

    def finish(self) -> None:
        """Wait for every queued call, raising the first error."""
        self._wait(0)

    def settle(self) -> None:
        """Wait for every queued call while another error unwinds the loop.

        That error is the one the user sees; a write that fails here too is logged, and
        the batches queued after it are not written (their flags stay unset).
        """
        try:
            self._wait(0)
        except Exception as err:  # noqa: BLE001 - reported, the loop's own error goes on
            logger.warning("a queued write failed while stopping: %s", err)
            self._queued.clear()

    def _submit(self, name: str, *args: Any) -> None:
        self._wait(self.DEPTH - 1)
        self._queued.append(self._pool.submit(self._run, self._call, name, *args))

    def _call(self, name: str, *args: Any) -> None:
        assert self._writer is not None  # noqa: S101 - opened by the first call, in order
        getattr(self._writer, name)(*args)

    def write_inputs(self, index: tuple[int, ...], fields: Mapping[str, np.ndarray]) -> None:
        """Store one time's low-resolution fields (in the background)."""
        self._submit("write_inputs", index, fields)

    def write_regression(self, index: tuple[int, ...], fields: Mapping[str, np.ndarray]) -> None:
        """Store one time's regression mean (in the background)."""
        self._submit("write_regression", index, fields)

    def write_samples(
        self, index: tuple[int, ...], samples: Sequence[int], fields: Mapping[str, np.ndarray]
    ) -> None:
        """Store a batch of samples and mark them complete (in the background)."""
        self._submit("write_samples", index, samples, fields)


@dataclass
class Timings:
    """Where the wall time of a run went, in seconds."""

    fetch: float = 0.0
    inference: float = 0.0
    write: float = 0.0
    samples: int = 0
    batch_sizes: list[int] = field(default_factory=list)


def _compute(
    job: Job,
    fields: Mapping[str, np.ndarray],
    sampler: Sampler,
    writer: Writer,
    seed: int,
    batch_size: int,
    adaptive_batch: bool,
    timings: Timings,
    progress: Callable[[int], Any] | None,
) -> int:
    """One job: its regression mean, then its samples batch by batch, each written at once.

    Returns the batch size that worked (halved on out-of-memory with ``adaptive_batch``),
    which the following jobs keep.
    """
    import torch

    start = clock.perf_counter()
    declared = sampler.declaration
    inputs = declared.model_inputs(fields)
    try:
        condition = sampler.condition(inputs, job.time + timedelta(hours=job.lead_hours))
        mean = sampler.regression_mean(condition)
    except (RuntimeError, MemoryError) as err:  # torch.OutOfMemoryError is a RuntimeError
        where = out_of_memory(err)
        if where is None:
            raise
        raise RunError(
            f"out of {where} memory computing the regression mean at {format_time(job.time)} "
            "(one sample's worth): this machine cannot run the model; use a larger one, or a "
            "GPU (run_corrdiff.py --benchmark sizes it)"
        ) from err
    timings.inference += clock.perf_counter() - start
    regression = sampler.denormalise(mean)[0]
    _check_computed(job, "the regression mean", regression[None], sampler, "the model package")
    if job.writes_mean:
        start = clock.perf_counter()
        writer.write_regression(
            job.index, {name: regression[i] for i, name in enumerate(declared.outputs)}
        )
        timings.write += clock.perf_counter() - start

    remaining = list(job.samples)
    while remaining:
        batch = tuple(remaining[:batch_size])
        seeds = [sample_seed(seed, job.time, job.lead_hours, s) for s in batch]
        start = clock.perf_counter()
        try:
            fields_hr = sampler.denormalise(sampler.draw(condition, mean, seeds))
        except (RuntimeError, MemoryError) as err:
            where = out_of_memory(err)
            if where is None:
                raise
            if not adaptive_batch or len(batch) == 1:
                raise RunError(
                    f"out of {where} memory with a batch of {len(batch)} sample(s): "
                    "rerun with --resume and a smaller --batch-size (e.g. --batch-size "
                    f"{max(1, len(batch) // 2)}); completed samples are kept"
                ) from err
            batch_size = max(1, len(batch) // 2)
            logger.warning("out of memory: retrying with --batch-size %d", batch_size)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        timings.inference += clock.perf_counter() - start
        timings.batch_sizes.append(len(batch))
        _check_computed(
            job,
            f"sample(s) {', '.join(map(str, batch))}",
            fields_hr,
            sampler,
            f"the sampler settings ({sampler.settings.describe()}) or the model package",
        )

        start = clock.perf_counter()
        writer.write_samples(
            job.index,
            batch,
            {name: fields_hr[:, i] for i, name in enumerate(declared.outputs)},
        )
        timings.write += clock.perf_counter() - start
        timings.samples += len(batch)
        remaining = remaining[len(batch) :]
        if progress is not None:
            progress(len(batch))
    return batch_size


def out_of_memory(err: BaseException) -> str | None:
    """``"device"`` or ``"host"`` when ``err`` is running out of that memory, else None.

    On a GPU torch raises ``torch.OutOfMemoryError``; on a CPU its allocator raises a plain
    ``RuntimeError`` ("DefaultCPUAllocator: can't allocate memory"), and Python's own
    allocations raise ``MemoryError``: all three get the same ``--batch-size`` advice.
    """
    import torch

    if isinstance(err, MemoryError):
        return "host"
    if isinstance(err, torch.OutOfMemoryError):
        return "device"
    text = str(err)
    if "DefaultCPUAllocator" in text or "can't allocate memory" in text:
        return "host"
    return None


def _check_computed(
    job: Job, what: str, fields: np.ndarray, sampler: Sampler, suspects: str
) -> None:
    """Refuse a computed batch (sample, variable, y, x) that is not finite and physical.

    Checked before the batch is handed to the writer, so it is never marked complete (and
    a ``--resume`` does not trust it): NaN or 1e15 K are a failure, not an ensemble member.
    """
    problem = checks.field_problem(
        {name: fields[:, i] for i, name in enumerate(sampler.declaration.outputs)},
        checks.OUTPUT_LIMITS,
    )
    if problem is None:
        return
    when = format_time(job.time) + (f" {job.lead_hours:+d} h" if job.lead_hours else "")
    raise RunError(
        f"{what} at {when}: {problem}, so nothing of it was stored: {suspects} give(s) no "
        "physical result here"
    )


def downscale(
    jobs: Sequence[Job],
    fetch: Callable[[Job], dict[str, np.ndarray]],
    sampler: Sampler,
    open_writer: Callable[[], Writer],
    seed: int,
    batch_size: int,
    adaptive_batch: bool = False,
    progress: Callable[[int], Any] | None = None,
    overlap_fetch: bool = True,
    background_open: bool = False,
) -> Timings:
    """Downscale every job and write it, fetching the next job's inputs during compute.

    Parameters
    ----------
    jobs : sequence of Job
        What to compute.
    fetch : callable
        Job -> low-resolution fields (the model's inputs, plus extras such as ``refc``).
    sampler : Sampler
        The model's forward pass (:class:`CorrDiffSampler` for Taiwan).
    open_writer : callable
        Returns the store writer; called once, after the first inputs have arrived, so a
        run that cannot fetch anything creates no store.
    seed : int
        Base seed (see :func:`sample_seed`).
    batch_size : int
        Most samples per diffusion batch.
    adaptive_batch : bool
        On running out of device memory, halve the batch and retry instead of failing.
    progress : callable, optional
        Called with the number of samples finished after each batch.
    overlap_fetch : bool
        Fetch the next job's inputs in a background thread while this one computes. Off
        for local files: ``sources.build_source`` has already read them into memory, so
        there is nothing to overlap.
    background_open : bool
        Create the store on the writing thread, overlapped with the first regression (see
        :class:`BackgroundWriter`); not for torchrun ranks, whose opening is collective.

    Returns
    -------
    Timings
        Time spent waiting for inputs and for writes (what compute could not hide), and
        computing.
    """
    timings = Timings()
    writer: BackgroundWriter | None = None
    if not jobs:
        return timings

    with contextlib.ExitStack() as stack:
        pool = (
            stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="fetch"))
            if overlap_fetch
            else None
        )
        pending: Future[dict[str, np.ndarray]] | None = (
            pool.submit(fetch, jobs[0]) if pool is not None else None
        )
        for position, job in enumerate(jobs):
            wait_start = clock.perf_counter()
            fields = pending.result() if pending is not None else fetch(job)
            timings.fetch += clock.perf_counter() - wait_start
            if pool is not None and position + 1 < len(jobs):
                pending = pool.submit(fetch, jobs[position + 1])
            if writer is None:
                # Leaving the stack on an error writes what is queued; on SIGTERM or
                # Ctrl-C it drops it (see BackgroundWriter).
                writer = stack.enter_context(
                    BackgroundWriter(open_writer, open_here=not background_open)
                )

            start = clock.perf_counter()
            writer.write_inputs(job.index, sampler.declaration.stored_inputs(fields))
            timings.write += clock.perf_counter() - start

            if job.samples:  # else another rank computes this time: no regression here
                batch_size = _compute(
                    job,
                    fields,
                    sampler,
                    writer,
                    seed,
                    batch_size,
                    adaptive_batch,
                    timings,
                    progress,
                )
        if writer is not None:
            start = clock.perf_counter()
            writer.finish()  # the last batch is on disk before the run says it is done
            timings.write += clock.perf_counter() - start
    return timings
