import re
from dataclasses import replace
from datetime import datetime
from typing import Any

import numpy as np
import pytest
import torch

from corrdiff_tools.downscale import CorrDiffSampler, Job, downscale, grid_channels, sample_seed
from corrdiff_tools.errors import RunError
from corrdiff_tools.sampling import PRESETS, SampleNoise, run_sampler
from corrdiff_tools.store import INPUT_VARIABLES, LR_LAT, LR_LON, OUTPUT_VARIABLES
from corrdiff_tools.synthetic import synthetic_inputs

TIME = datetime(2024, 7, 24, 12)


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    array = synthetic_inputs([TIME], seed=3)
    return array.sel(variable=list(INPUT_VARIABLES), lat=LR_LAT, lon=LR_LON).values[0]


@pytest.fixture(scope="module")
def sampler(loaded_model: Any) -> CorrDiffSampler:
    return CorrDiffSampler(loaded_model, replace(PRESETS["blog"], steps=2))


class Capture:
    """Record the first positional argument every call of a module receives."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seen: list[torch.Tensor] = []
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, _module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        self.seen.append(args[0].detach().clone())

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def test_grid_is_the_trained_formula_not_earth2studios() -> None:
    # modulus v0.5.0 training/img_utils.py: sin/cos over the 450-pixel grid, then the
    # window at (0, 0); spelled out independently of downscale.grid_channels.
    x1 = np.sin(np.linspace(0, 2 * np.pi, 450))
    x2 = np.cos(np.linspace(0, 2 * np.pi, 450))
    grid_x1, grid_y1 = np.meshgrid(x1, x1)
    grid_x2, grid_y2 = np.meshgrid(x2, x2)
    expected = np.stack((grid_x1, grid_y1, grid_x2, grid_y2))[:, :448, :448].astype("float32")
    np.testing.assert_array_equal(grid_channels(), expected)
    # earth2studio's formula (linspace over 448) is a different field.
    e2s = np.sin(np.linspace(0, 2 * np.pi, 448)).astype("float32")
    assert np.abs(grid_channels()[0, 0] - e2s).max() > 0.02


def test_condition_is_normalised_inputs_on_the_trained_window_then_grid(
    sampler: CorrDiffSampler, inputs: np.ndarray
) -> None:
    from earth2studio.utils import interp

    model = sampler.model
    condition = sampler.condition(inputs)
    assert condition.shape == (1, 16, 448, 448)
    full = interp.latlon_interpolation_regular(
        torch.as_tensor(inputs),
        torch.as_tensor(LR_LAT, dtype=torch.float32),
        torch.as_tensor(LR_LON, dtype=torch.float32),
        model.out_lat_full,
        model.out_lon_full,
    )
    expected = (full[:, :448, :448] - model.in_center) / model.in_scale
    torch.testing.assert_close(condition[0, :12], expected, rtol=0, atol=0)
    np.testing.assert_array_equal(condition[0, 12:].numpy(), grid_channels())
    # Not earth2studio's centre window: that is one pixel (2 km) further north-east.
    centre = (model._interpolate(torch.as_tensor(inputs)) - model.in_center) / model.in_scale
    assert not torch.allclose(condition[0, :12], centre, atol=1e-3)
    # Normalisation really happened: inputs are O(1e4) for geopotential, condition is O(1).
    assert float(condition[0, :12].abs().max()) < 10
    # The stored grid is the same window, so labels match what the net saw.
    np.testing.assert_array_equal(sampler.lat, model.out_lat_full[:448, :448].numpy())
    np.testing.assert_array_equal(sampler.lon, model.out_lon_full[:448, :448].numpy())


def test_diffusion_backbone_receives_noise_inputs_and_grid_not_the_mean(
    sampler: CorrDiffSampler, inputs: np.ndarray
) -> None:
    """The published checkpoint was trained on [noisy x (4), ERA5n (12), grid (4)]."""
    condition = sampler.condition(inputs)
    mean = sampler.regression_mean(condition)
    with Capture(sampler.model.residual_model.model) as capture:
        sampler.residuals(condition, [sample_seed(0, TIME, 0, 0)])
    assert len(capture.seen) == 2  # 2 Euler steps, one network call each
    for seen in capture.seen:
        assert seen.shape == (1, 20, 448, 448)
        torch.testing.assert_close(seen[0, 4:16], condition[0, :12], rtol=0, atol=0)
        np.testing.assert_array_equal(seen[0, 16:20].numpy(), grid_channels())
        assert not torch.allclose(seen[0, 4:8], mean[0])


def test_regression_backbone_receives_zeros_inputs_and_grid(
    sampler: CorrDiffSampler, inputs: np.ndarray
) -> None:
    condition = sampler.condition(inputs)
    with Capture(sampler.model.regression_model.model) as capture:
        mean = sampler.regression_mean(condition)
    (seen,) = capture.seen
    assert seen.shape == (1, 20, 448, 448)
    assert float(seen[0, :4].abs().max()) == 0.0
    torch.testing.assert_close(seen[0, 4:], condition[0], rtol=0, atol=0)
    assert mean.shape == (1, 4, 448, 448)


def test_earth2studio_call_conditions_on_the_mean(loaded_model: Any) -> None:
    """Pins the upstream behaviour we work around: if this fails, earth2studio changed."""
    from collections import OrderedDict

    loaded_model.number_of_samples, loaded_model.number_of_steps, loaded_model.seed = 1, 2, 0
    x = torch.as_tensor(
        synthetic_inputs([TIME], seed=3)
        .sel(variable=list(INPUT_VARIABLES), lat=LR_LAT, lon=LR_LON)
        .values
    )
    coords = OrderedDict(
        batch=np.array([0]), variable=np.array(INPUT_VARIABLES), lat=LR_LAT, lon=LR_LON
    )
    with Capture(loaded_model.residual_model.model) as capture:
        loaded_model(x, coords)
    seen = capture.seen[0]
    # earth2studio's own geometry: centre window, grid over 448 pixels.
    model = loaded_model
    centre = (model._interpolate(x[0]) - model.in_center) / model.in_scale
    axis = np.linspace(0, 2 * np.pi, 448)
    e2s_grid = np.stack(
        (*np.meshgrid(np.sin(axis), np.sin(axis)), *np.meshgrid(np.cos(axis), np.cos(axis)))
    )
    condition = torch.cat((centre, torch.as_tensor(e2s_grid, dtype=torch.float32)))[None]
    with torch.inference_mode():
        mean = model.regression_model(x=torch.zeros(1, 4, 448, 448), img_lr=condition)
    # Channels 4..8 carry the regression mean, and the grid never reaches the net.
    torch.testing.assert_close(seen[0, 4:8], mean[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(seen[0, 16:20].numpy(), grid_channels())
    assert not np.allclose(seen[0, 16:20].numpy(), e2s_grid)


def test_sample_seed_depends_on_seed_time_lead_and_sample_only() -> None:
    base = sample_seed(0, TIME, 0, 3)
    assert base == sample_seed(0, TIME, 0, 3)
    others = {
        sample_seed(1, TIME, 0, 3),
        sample_seed(0, datetime(2024, 7, 24, 18), 0, 3),
        sample_seed(0, TIME, 6, 3),
        sample_seed(0, TIME, 0, 4),
    }
    assert base not in others and len(others) == 4
    assert 0 <= base < 2**64
    assert sample_seed(0, datetime(1940, 1, 1), 0, 0) >= 0


def test_batch_size_does_not_change_the_ensemble(
    sampler: CorrDiffSampler, inputs: np.ndarray
) -> None:
    condition = sampler.condition(inputs)
    seeds = [sample_seed(0, TIME, 0, i) for i in range(3)]
    together = sampler.residuals(condition, seeds)
    alone = torch.cat([sampler.residuals(condition, [s]) for s in seeds])
    torch.testing.assert_close(together, alone, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(together[0], together[1])


CHURN = replace(PRESETS["paper"], steps=3, sigma_max=80.0, s_churn=0.5)


@pytest.mark.slow
def test_churn_noise_does_not_depend_on_the_batch(loaded_model: Any, inputs: np.ndarray) -> None:
    churning = CorrDiffSampler(loaded_model, CHURN)
    condition = churning.condition(inputs)
    seeds = [sample_seed(0, TIME, 0, i) for i in range(3)]
    together = churning.residuals(condition, seeds)
    alone = torch.cat([churning.residuals(condition, [s]) for s in seeds])
    # Batched convolutions round differently; a noise mix-up would differ by O(1).
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-3)
    # Churn noise is really drawn: without it the ensemble is another one.
    calm = CorrDiffSampler(loaded_model, replace(CHURN, s_churn=0.0)).residuals(condition, seeds)
    assert float((together - calm).abs().max()) > 0.01


def test_no_churn_draws_nothing_and_changes_nothing(loaded_model: Any, inputs: np.ndarray) -> None:
    """S_churn = 0: our scalar zero gives bitwise what real draws times 0 give."""
    from physicsnemo.diffusion.samplers.legacy_stochastic_sampler import stochastic_sampler

    paper = replace(PRESETS["paper"], steps=2)
    sampler = CorrDiffSampler(loaded_model, paper)
    condition = sampler.condition(inputs).expand(2, -1, -1, -1)
    seeds = [sample_seed(0, TIME, 0, i) for i in range(2)]
    ours = SampleNoise(seeds)
    theirs = SampleNoise(seeds)
    latents = ours.latents((4, 448, 448), "cpu")
    with torch.inference_mode():
        got = run_sampler(loaded_model.residual_model, latents, condition, paper, ours)
        expected = stochastic_sampler(
            loaded_model.residual_model,
            theirs.latents((4, 448, 448), "cpu"),
            condition,
            randn_like=theirs.randn_like,
            num_steps=2,
        )
    assert torch.equal(got, expected)


class ListWriter:
    def __init__(self) -> None:
        self.inputs: list[tuple[tuple[int, ...], list[str]]] = []
        self.samples: dict[tuple[int, ...], np.ndarray] = {}
        self.means: dict[tuple[int, ...], np.ndarray] = {}

    def write_inputs(self, index: tuple[int, ...], fields: dict[str, np.ndarray]) -> None:
        self.inputs.append((index, sorted(fields)))

    def write_regression(self, index: tuple[int, ...], fields: dict[str, np.ndarray]) -> None:
        self.means[index] = np.stack([fields[v] for v in OUTPUT_VARIABLES])

    def write_samples(
        self, index: tuple[int, ...], samples: Any, fields: dict[str, np.ndarray]
    ) -> None:
        for position, sample in enumerate(samples):
            self.samples[(*index, sample)] = np.stack(
                [fields[v][position] for v in OUTPUT_VARIABLES]
            )


def test_downscale_loop_batches_and_opens_the_writer_once(
    sampler: CorrDiffSampler, inputs: np.ndarray
) -> None:
    fields = dict(zip(INPUT_VARIABLES, inputs, strict=True))
    jobs = [
        Job((0,), TIME, 0, (0, 1, 2)),
        Job((1,), datetime(2024, 7, 24, 18), 0, (1,), writes_mean=False),
    ]
    writer, opened, progressed = ListWriter(), [], []

    def open_writer() -> ListWriter:
        opened.append(1)
        return writer

    timings = downscale(
        jobs,
        lambda job: fields,
        sampler,
        open_writer,
        seed=0,
        batch_size=2,
        progress=progressed.append,
    )
    assert opened == [1]
    assert timings.samples == 4 and timings.batch_sizes == [2, 1, 1]
    assert progressed == [2, 1, 1]
    assert sorted(writer.samples) == [(0, 0), (0, 1), (0, 2), (1, 1)]
    assert [index for index, _ in writer.inputs] == [(0,), (1,)]
    t2m = writer.samples[(0, 0)][1]
    assert t2m.shape == (448, 448) and 250 < float(t2m.mean()) < 350  # kelvin, denormalised
    # The regression mean is stored once, in physical units, by the job that owns it.
    assert list(writer.means) == [(0,)]
    condition = sampler.condition(inputs)
    expected = sampler.denormalise(sampler.regression_mean(condition))[0]
    np.testing.assert_array_equal(writer.means[(0,)], expected)


def test_downscale_creates_no_store_when_the_first_fetch_fails(sampler: CorrDiffSampler) -> None:
    opened = []

    def failing_fetch(job: Job) -> dict[str, np.ndarray]:
        raise ConnectionError("no route to host")

    with pytest.raises(ConnectionError):
        downscale(
            [Job((0,), TIME, 0, (0,))], failing_fetch, sampler, lambda: opened.append(1), 0, 1
        )
    assert opened == []


def test_a_job_with_no_samples_here_writes_inputs_but_computes_nothing(
    sampler: CorrDiffSampler, inputs: np.ndarray
) -> None:
    fields = dict(zip(INPUT_VARIABLES, inputs, strict=True))
    writer = ListWriter()
    with Capture(sampler.model.regression_model.model) as regression:
        timings = downscale(
            [Job((0,), TIME, 0, ())],
            lambda job: fields,
            sampler,
            lambda: writer,
            seed=0,
            batch_size=2,
        )
    assert regression.seen == [] and timings.samples == 0
    assert [index for index, _ in writer.inputs] == [(0,)] and writer.samples == {}
    assert writer.means == {}


class SlowWriter(ListWriter):
    """Records which thread wrote and when; ``fail_on`` names a call to fail on."""

    def __init__(self, fail_on: str | None = None) -> None:
        super().__init__()
        self.events: list[tuple[str, str]] = []
        self.fail_on = fail_on

    def _record(self, what: str) -> None:
        import threading
        import time

        time.sleep(0.05)  # long enough that the loop would overtake an unordered writer
        self.events.append((what, threading.current_thread().name))
        if what == self.fail_on:
            raise OSError(f"disk full while writing {what}")

    def write_inputs(self, index: tuple[int, ...], fields: dict[str, np.ndarray]) -> None:
        self._record(f"inputs {index}")
        super().write_inputs(index, fields)

    def write_regression(self, index: tuple[int, ...], fields: dict[str, np.ndarray]) -> None:
        self._record(f"regression {index}")
        super().write_regression(index, fields)

    def write_samples(
        self, index: tuple[int, ...], samples: Any, fields: dict[str, np.ndarray]
    ) -> None:
        self._record(f"samples {index} {list(samples)}")
        super().write_samples(index, samples, fields)


def test_writes_run_in_the_background_in_order_and_all_land_before_the_loop_returns(
    sampler: CorrDiffSampler, inputs: np.ndarray
) -> None:
    fields = dict(zip(INPUT_VARIABLES, inputs, strict=True))
    writer = SlowWriter()
    jobs = [Job((0,), TIME, 0, (0, 1, 2)), Job((1,), datetime(2024, 7, 24, 18), 0, (0,))]
    downscale(jobs, lambda job: fields, sampler, lambda: writer, seed=0, batch_size=2)
    assert [what for what, _ in writer.events] == [
        "inputs (0,)", "regression (0,)", "samples (0,) [0, 1]", "samples (0,) [2]",
        "inputs (1,)", "regression (1,)", "samples (1,) [0]",
    ]  # fmt: skip
    assert {thread for _, thread in writer.events} == {"write_0"}  # not the loop's thread
    assert sorted(writer.samples) == [(0, 0), (0, 1), (0, 2), (1, 0)]  # the last one too


@pytest.mark.parametrize("fail_on", ["samples (0,) [0, 1]", "samples (0,) [2]"])
def test_a_failed_background_write_stops_the_loop_with_its_error(
    sampler: CorrDiffSampler, inputs: np.ndarray, fail_on: str
) -> None:
    """A failure in the middle surfaces at the next write; one in the last, at the end."""
    fields = dict(zip(INPUT_VARIABLES, inputs, strict=True))
    writer = SlowWriter(fail_on=fail_on)
    with pytest.raises(OSError, match=f"disk full while writing {re.escape(fail_on)}"):
        downscale(
            [Job((0,), TIME, 0, (0, 1, 2))], lambda job: fields, sampler, lambda: writer, 0, 2
        )
    written = [what for what, _ in writer.events]
    assert written[-1] == fail_on  # nothing was written after the failure
    assert (0, 2) not in writer.samples


class GatedWriter(SlowWriter):
    """Holds the first batch's write until ``gate`` opens, so the next one stays queued."""

    def __init__(self) -> None:
        import threading

        super().__init__()
        self.gate = threading.Event()

    def write_samples(
        self, index: tuple[int, ...], samples: Any, fields: dict[str, np.ndarray]
    ) -> None:
        if list(samples) == [0, 1]:
            assert self.gate.wait(timeout=30)
        super().write_samples(index, samples, fields)


@pytest.mark.parametrize(
    ("error", "kept"),
    [
        # Inputs unreachable: every batch computed before the error is written.
        (OSError("Network is unreachable"), [(0, 0), (0, 1), (0, 2)]),
        # Asked to stop: the batch in flight lands, the queued one is dropped.
        (KeyboardInterrupt(), [(0, 0), (0, 1)]),
    ],
    ids=["error", "stop"],
)
def test_an_error_writes_the_queued_batches_first_but_a_stop_drops_them(
    sampler: CorrDiffSampler, inputs: np.ndarray, error: BaseException, kept: list[tuple[int, int]]
) -> None:
    import threading

    fields = dict(zip(INPUT_VARIABLES, inputs, strict=True))
    writer = GatedWriter()
    jobs = [Job((0,), TIME, 0, (0, 1, 2)), Job((1,), datetime(2024, 7, 24, 18), 0, (0,))]

    def fetch(job: Job) -> dict[str, np.ndarray]:
        if job.index == (1,):
            # Batch [0, 1] is being written and [2] is queued behind it. The write goes
            # on a second later: long after the loop has begun to unwind (a stop drops
            # the queued write microseconds after this raise).
            threading.Timer(1.0, writer.gate.set).start()
            raise error
        return fields

    with pytest.raises(type(error)):
        downscale(jobs, fetch, sampler, lambda: writer, 0, 2, overlap_fetch=False)
    assert sorted(writer.samples) == kept
    assert (1,) not in {index for index, _ in writer.inputs}


def test_the_store_can_be_created_on_the_writing_thread_before_anything_is_written(
    sampler: CorrDiffSampler, inputs: np.ndarray
) -> None:
    import threading

    fields = dict(zip(INPUT_VARIABLES, inputs, strict=True))
    writer, opened = SlowWriter(), []

    def open_writer() -> SlowWriter:
        opened.append(threading.current_thread().name)
        writer.events.append(("opened", threading.current_thread().name))
        return writer

    downscale(
        [Job((0,), TIME, 0, (0, 1))], lambda job: fields, sampler, open_writer, 0, 2,
        background_open=True,
    )  # fmt: skip
    assert opened == ["write_0"]
    assert [what for what, _ in writer.events] == [
        "opened", "inputs (0,)", "regression (0,)", "samples (0,) [0, 1]",
    ]  # fmt: skip


def test_a_store_that_cannot_be_created_in_the_background_stops_the_loop(
    sampler: CorrDiffSampler, inputs: np.ndarray
) -> None:
    fields = dict(zip(INPUT_VARIABLES, inputs, strict=True))
    writer = SlowWriter()

    def open_writer() -> SlowWriter:
        raise RunError("cannot create out.zarr: read-only file system")

    with pytest.raises(RunError, match="read-only file system"):
        downscale(
            [Job((0,), TIME, 0, (0, 1, 2))], lambda job: fields, sampler, open_writer, 0, 1,
            background_open=True,
        )  # fmt: skip
    assert writer.events == []  # nothing queued after the failure was written
