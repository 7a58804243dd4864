"""CorrDiffCMIP6 through ``models.cmip6``: earth2studio's loader and preprocessing, our noise.

A tiny package in the layout earth2studio's ``CorrDiffCMIP6.load_model`` reads (global
1-D grids, invariants with the ``coslat`` slot last, ``sza``/``hod`` statistics, nets on
the padded grid), loaded through earth2studio's own loader. The reference is
earth2studio's own ``__call__``: with its seeds (``seed + j``) ours is equal bit for bit,
and each part of the conditioning (the valid time's features, the order of the input
lead times, the invariants) changes the result, so the comparison would see it wrong.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from corrdiff_tools import synthetic
from corrdiff_tools.errors import UsageError
from corrdiff_tools.models import cmip6, cmip6_net

INPUTS = ("tas", "uas", "siconc", "snc")
OUTPUTS = ("t2m", "u10m", "tp")
#: Global grids, south to north as earth2studio wants them; the output's longitudes must
#: outnumber the circular padding (48 points each side).
OUT_GRID = (np.linspace(-90.0, 90.0, 25), np.arange(64) * 5.625)
IN_GRID = (np.linspace(-90.0, 90.0, 9), np.arange(16) * 22.5)
INIT = datetime(2037, 9, 6, 12)
LEADS = (-12, 3)
SEED = 21


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    invariants = synthetic.cmip6_invariants(OUT_GRID[0], OUT_GRID[1].size)
    return synthetic.build_cmip6_package(
        tmp_path_factory.mktemp("cmip6") / "package",
        INPUTS,
        OUTPUTS,
        OUT_GRID,
        IN_GRID,
        invariants,
        metadata={"number_of_steps": 3, "sigma_max": 80.0},
    )


@pytest.fixture(scope="module")
def loaded(package: Path) -> object:
    return cmip6_net.load(package, output_leads=LEADS)


def _inputs(seed: int = 0) -> np.ndarray:
    """(lead, variable, lat, lon): temperatures, winds, cover percentages."""
    rng = np.random.default_rng(seed)
    shape = (len(cmip6.INPUT_LEADS), 1, IN_GRID[0].size, IN_GRID[1].size)
    return np.concatenate(
        [
            280.0 + 10.0 * rng.standard_normal(shape),
            4.0 * rng.standard_normal(shape),
            np.clip(50.0 + 40.0 * rng.standard_normal(shape), 0.0, 100.0),
            np.clip(30.0 + 40.0 * rng.standard_normal(shape), 0.0, 100.0),
        ],
        axis=1,
    ).astype("float32")


def _their_call(model: object, inputs: np.ndarray, times: int = 1) -> torch.Tensor:
    """earth2studio's ``CorrDiffCMIP6.__call__``: (batch, sample, time, lead, var, y, x)."""
    grid = model.input_coords()  # type: ignore[attr-defined]
    stamps = [np.datetime64(INIT + timedelta(days=day)) for day in range(times)]
    coords = OrderedDict(
        batch=np.arange(1),
        time=np.array(stamps),
        lead_time=grid["lead_time"],
        variable=grid["variable"],
        lat=grid["lat"],
        lon=grid["lon"],
    )
    x = torch.as_tensor(np.stack([inputs] * times)[None])
    out, out_coords = model(x, coords)  # type: ignore[operator]
    assert [int(h) for h in out_coords["lead_time"].astype("timedelta64[h]").astype(int)] == list(
        LEADS
    )
    return out


def _ours(model: object, inputs: np.ndarray, valid: datetime, seeds: list[int]) -> np.ndarray:
    sampler = cmip6_net.Cmip6Sampler(model)
    return np.concatenate([sampler.samples(inputs, [seed], valid_time=valid) for seed in seeds])


def _their_forward(model: object, inputs: np.ndarray, valid: datetime) -> np.ndarray:
    """earth2studio's ``_forward`` for one valid time, on a copy of the inputs."""
    x = torch.as_tensor(inputs.copy()[None])
    return model._forward(x, valid)[0].numpy()  # type: ignore[attr-defined]


def test_ours_is_earth2studios_forward_pass_with_its_seeds(loaded: object) -> None:
    """Sample ``j`` seeded ``seed + j``, one sample a call: bitwise earth2studio's."""
    loaded.seed, loaded.number_of_samples = SEED, 2  # type: ignore[attr-defined]
    inputs = _inputs()
    before = inputs.copy()
    for lead in LEADS:
        valid = INIT + timedelta(hours=lead)
        theirs = _their_forward(loaded, inputs, valid)
        assert theirs.shape == (2, len(OUTPUTS), 25, 64)
        np.testing.assert_array_equal(_ours(loaded, inputs, valid, [SEED, SEED + 1]), theirs)
        assert np.abs(theirs[0] - theirs[1]).max() > 0.1, "two samples must differ"
    np.testing.assert_array_equal(inputs, before)  # ours left the caller's inputs alone
    sampler = cmip6_net.Cmip6Sampler(loaded)
    assert sampler.declaration.name == "cmip6"
    assert sampler.declaration.inputs == INPUTS and sampler.declaration.output_shape == (25, 64)
    np.testing.assert_allclose(sampler.lat[:, 0], OUT_GRID[0])
    np.testing.assert_allclose(sampler.lon[0], OUT_GRID[1])
    assert sampler.settings.sigma_min == 1.0  # CorrDiffCMIP6's default, not the generic one


def test_earth2studio_smooths_the_sea_ice_into_its_input_again_for_each_lead_time(
    loaded: object,
) -> None:
    """Pinned: its ``__call__`` gives each output lead time a view of one input, and its
    preprocessing writes the smoothed cover into it, so the second lead time reads it
    smoothed (and summed with snc) twice. Ours reads the inputs as given at every lead."""
    loaded.seed, loaded.number_of_samples = SEED, 1  # type: ignore[attr-defined]
    inputs = _inputs(seed=1)
    theirs = _their_call(loaded, inputs)[0, 0, 0]  # (lead, var, y, x)
    for index, lead in enumerate(LEADS):
        ours = _ours(loaded, inputs, INIT + timedelta(hours=lead), [SEED])[0]
        difference = np.abs(ours - theirs[index].numpy()).max()
        assert difference == 0.0 if index == 0 else difference > 0.01, (lead, difference)
    x = torch.as_tensor(inputs.copy()[None])
    loaded._forward(x, INIT)  # type: ignore[attr-defined]
    siconc, snc = INPUTS.index("siconc"), INPUTS.index("snc")
    changed = x[0, :, siconc].numpy()
    assert np.abs(changed - inputs[:, siconc]).max() > 1.0  # the caller's tensor, changed
    np.testing.assert_array_equal(x[0, :, snc].numpy(), inputs[:, snc])


def test_earth2studio_gives_every_time_of_a_call_the_same_noise(loaded: object) -> None:
    """Pinned: two days with the same inputs come out identical from earth2studio's call
    (sample ``j`` is seeded ``seed + j`` whatever its time), and different from ours,
    whose seeds depend on the time."""
    from corrdiff_tools.downscale import sample_seed

    loaded.seed, loaded.number_of_samples = SEED, 1  # type: ignore[attr-defined]
    inputs = _inputs(seed=4)
    theirs = _their_call(loaded, inputs, times=2)[0, 0]  # (time, lead, var, y, x)
    # The next day's solar zenith angle differs a little: the outputs differ by the
    # features alone, far less than two noise draws differ (see the test above).
    assert np.abs(theirs[0] - theirs[1]).max() < 0.05 * np.abs(theirs[0]).max()
    valid = [INIT + timedelta(days=day, hours=LEADS[0]) for day in (0, 1)]
    ours = [
        _ours(
            loaded, inputs, when, [sample_seed(SEED, when - timedelta(hours=LEADS[0]), LEADS[0], 0)]
        )
        for when in valid
    ]
    assert np.abs(ours[0] - ours[1]).max() > 10 * np.abs(theirs[0] - theirs[1]).max()


def test_the_reference_sees_each_part_of_the_conditioning(loaded: object) -> None:
    """The valid time's features, the order of the input lead times and the invariants
    each change the samples: a wiring that got one wrong would not match."""
    inputs = _inputs(seed=2)
    valid = INIT + timedelta(hours=LEADS[0])
    right = _ours(loaded, inputs, valid, [SEED])
    later = _ours(loaded, inputs, valid + timedelta(hours=1), [SEED])
    swapped = _ours(loaded, inputs[::-1].copy(), valid, [SEED])
    invariants = loaded.invariants.clone()  # type: ignore[attr-defined]
    try:
        loaded.invariants[0] = 1.0 - loaded.invariants[0]  # type: ignore[attr-defined,index]
        flipped = _ours(loaded, inputs, valid, [SEED])
    finally:
        loaded.invariants.copy_(invariants)  # type: ignore[attr-defined]
    # Ours is bitwise repeatable (below), so any difference is the conditioning's; the
    # tiny random nets respond to some channels weakly, hence no larger bound.
    for other in (later, swapped, flipped):
        assert np.abs(other - right).max() > 0.01
    np.testing.assert_array_equal(_ours(loaded, inputs, valid, [SEED]), right)


def test_inputs_are_taken_by_lead_time_and_name(loaded: object) -> None:
    inputs = _inputs(seed=3)
    names = [*INPUTS[::-1], "pr"]
    extra = np.zeros((len(cmip6.INPUT_LEADS), 1, *inputs.shape[-2:]), dtype="float32")
    # Leads 24, 0, -24; variables reversed with one more; rows north to south.
    shuffled = np.concatenate([inputs[:, ::-1], extra], axis=1)[::-1, :, ::-1]
    array = xr.DataArray(
        shuffled,
        dims=("lead_time", "variable", "lat", "lon"),
        coords={
            "lead_time": np.array([24, 0, -24], dtype="timedelta64[h]"),
            "variable": names,
            "lat": IN_GRID[0][::-1],  # north to south
            "lon": IN_GRID[1],
        },
    )
    sampler = cmip6_net.Cmip6Sampler(loaded)
    np.testing.assert_array_equal(sampler.align(array.isel(lat=slice(None, None, -1))), inputs)
    np.testing.assert_array_equal(sampler.align(array), inputs)
    with pytest.raises(ValueError, match="lack lead time\\(s\\) -24 h"):
        sampler.align(array.isel(lead_time=[0, 1]))
    with pytest.raises(ValueError, match="inputs lack snc"):
        sampler.align(array.drop_sel(variable="snc"))
    with pytest.raises(ValueError, match="needs the valid time"):
        sampler.samples(inputs, [SEED])
    with pytest.raises(ValueError, match="CorrDiffCMIP6 reads \\(3, 4, 9, 16\\)"):
        sampler.samples(inputs[1:], [SEED], valid_time=INIT)


def test_a_package_that_is_not_cmip6_is_refused_in_one_line(tmp_path: Path) -> None:
    """A generic package lacks the time features' statistics (and its nets' channels)."""
    folder = synthetic.build_generic_package(
        tmp_path / "generic", INPUTS, OUTPUTS, OUT_GRID, IN_GRID,
        invariants={"lsm": np.zeros((25, 64), "float32"), "coslat": np.ones((25, 64), "float32")},
    )  # fmt: skip
    with pytest.raises(UsageError, match="stats.json lacks an entry: sza \\(it needs"):
        cmip6_net.load(folder)
    stats = (
        (folder / "stats.json")
        .read_text()
        .replace(
            '"input": {',
            '"input": {"sza": {"mean": 0, "std": 1}, "hod": {"mean": 0, "std": 1}, ',
            1,
        )
    )
    (folder / "stats.json").write_text(stats)
    with pytest.raises(UsageError, match="4 input variable\\(s\\) at 3 lead times \\+ 2 time"):
        cmip6_net.load(folder)


def test_negative_lead_times_have_seeds_of_their_own() -> None:
    """CorrDiffCMIP6's hours before the initialisation time: each its own seed, numpy
    integers or not, and the seeds of other lead times as they always were."""
    from corrdiff_tools.downscale import sample_seed

    seeds = {lead: sample_seed(SEED, INIT, lead, 0) for lead in cmip6.OUTPUT_LEADS}
    assert len(set(seeds.values())) == len(cmip6.OUTPUT_LEADS)
    assert sample_seed(SEED, INIT, np.int64(-12), 0) == seeds[-12]
    assert sample_seed(SEED, INIT, -12, 0) != sample_seed(SEED, INIT, 12, 0)
    expected = np.random.SeedSequence([SEED, 0, 3, 1]).generate_state(1, dtype=np.uint64)[0]
    from corrdiff_tools.downscale import SEED_EPOCH

    assert sample_seed(SEED, SEED_EPOCH, 3, 1) == int(expected)  # unchanged for leads >= 0


def test_blank_sea_ice_and_snow_cover_are_no_cover(loaded: object) -> None:
    """CMIP6 leaves sea-ice cover blank over land and snow cover over sea. earth2studio
    reads the blanks as 0 for its smoothed cover but hands snc's NaN on to the nets
    (every output NaN: pinned); ours fills both with 0, and equals earth2studio given
    the zeros."""
    inputs = _inputs(3)
    land = np.zeros(inputs.shape[-2:], dtype=bool)
    land[2:5, 3:9] = True
    blank = inputs.copy()
    blank[:, INPUTS.index("siconc"), land] = np.nan
    blank[:, INPUTS.index("snc"), ~land] = np.nan
    zeros = np.nan_to_num(blank, nan=0.0)
    valid = INIT + timedelta(hours=-12)
    loaded.seed, loaded.number_of_samples = SEED, 1  # type: ignore[attr-defined]
    assert np.isnan(_their_forward(loaded, blank, valid)).all()
    ours = _ours(loaded, blank, valid, [SEED])
    assert np.isfinite(ours).all()
    np.testing.assert_array_equal(ours, _their_forward(loaded, zeros, valid))
    assert np.isnan(blank).sum() == 3 * inputs.shape[-2] * inputs.shape[-1]  # left as given
    # Only these two: a blank temperature is a gap, refused by name.
    sampler = cmip6_net.Cmip6Sampler(loaded)
    gappy = xr.DataArray(
        np.where(land, np.nan, inputs[:, 0])[:, None].repeat(4, axis=1),
        dims=("lead_time", "variable", "lat", "lon"),
        coords={"lead_time": list(cmip6.INPUT_LEADS), "variable": list(INPUTS),
                "lat": IN_GRID[0], "lon": IN_GRID[1]},
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"inputs: tas has 18 NaN/inf value\(s\)"):
        sampler.align(gappy)
