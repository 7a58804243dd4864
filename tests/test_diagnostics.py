"""Spectra, distributions and scores on fields whose answers are known."""

import numpy as np
import properscoring
import pytest

from corrdiff_tools import diagnostics, truth
from corrdiff_tools.synthetic import curvilinear_grid

SPACING = 2.0


@pytest.mark.parametrize(("kx", "ky"), [(28, 0), (0, 56), (3, 4), (6, 8)])
def test_a_sinusoid_peaks_at_its_wavelength(kx: int, ky: int) -> None:
    """A wave of (kx, ky) cycles across the 896 km domain has wavelength 896 / |k| km."""
    y, x = np.mgrid[0:448, 0:448] / 448
    field = 3 * np.sin(2 * np.pi * (kx * x + ky * y) + 0.4)
    wavelengths, power = diagnostics.power_spectrum(field, SPACING)
    expected = 448 * SPACING / np.hypot(kx, ky)
    assert wavelengths[np.argmax(power)] == pytest.approx(expected, rel=0.02)
    # All the variance sits in that one ring.
    assert power.max() > 0.99 * power.sum()


def test_white_noise_is_flat_and_carries_its_variance() -> None:
    rng = np.random.default_rng(0)
    wavelengths, power = diagnostics.power_spectrum(rng.normal(0, 2, (4, 448, 448)), SPACING)
    assert power.shape == (4, 224)
    assert wavelengths[0] == pytest.approx(896.0) and wavelengths[-1] == pytest.approx(4.0)
    slope = np.polyfit(np.log(1 / wavelengths), np.log(power.mean(axis=0)), 1)[0]
    assert abs(slope) < 0.05
    assert power.mean() == pytest.approx(4.0, rel=0.02)  # periodogram of variance-4 noise


def test_a_smooth_field_has_a_steep_spectrum() -> None:
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((448, 448))
    smooth = np.cumsum(np.cumsum(noise, axis=0), axis=1)  # red: power falls with k
    wavelengths, power = diagnostics.power_spectrum(smooth, SPACING)
    slope = np.polyfit(np.log(1 / wavelengths), np.log(power), 1)[0]
    assert slope < -2


def test_grid_spacing_of_the_taiwan_grid_is_2_km() -> None:
    lat, lon = curvilinear_grid((448, 448))
    assert diagnostics.grid_spacing_km(lat, lon) == pytest.approx(2.0, rel=0.01)


def test_density_integrates_to_one_and_shows_tails() -> None:
    rng = np.random.default_rng(2)
    values = rng.standard_normal(100_000)
    bins = diagnostics.common_bins([values], count=60)
    pdf = diagnostics.density(values, bins)
    assert np.sum(pdf * np.diff(bins)) == pytest.approx(1.0)
    centres = (bins[:-1] + bins[1:]) / 2
    peak = centres[np.argmax(pdf)]
    assert abs(peak) < 0.3
    assert pdf[0] > 0 and pdf[-1] > 0  # the extremes are in the outer bins


def test_density_of_nothing_finite_is_zero() -> None:
    bins = np.linspace(0, 1, 5)
    assert diagnostics.density(np.full(10, np.nan), bins).tolist() == [0.0] * 4


def test_interpolating_a_linear_field_is_exact() -> None:
    lat_lr = np.linspace(28.0, 19.25, 36)  # descending, as GFS stores it
    lon_lr = np.linspace(116, 126, 40, endpoint=False)
    values = 2 * lat_lr[:, None] + 0.5 * lon_lr[None, :]
    lat, lon = curvilinear_grid((448, 448))
    out = truth.interpolate_lowres(values, lat_lr, lon_lr, lat, lon)
    np.testing.assert_allclose(out, 2 * lat + 0.5 * lon, rtol=1e-5)


def test_crps_equals_properscoring_on_known_data() -> None:
    rng = np.random.default_rng(3)
    truth = rng.normal(1.0, 1.0, (60, 70))
    members = rng.normal(0.0, 2.0, (6, 60, 70))
    interpolated = np.full((60, 70), 0.5)
    interpolated[0] = np.nan  # outside the input box: left out of this baseline only
    scores = diagnostics.score(
        truth, members, regression=np.zeros((60, 70)), interpolated=interpolated
    )
    expected = properscoring.crps_ensemble(truth, np.moveaxis(members, 0, -1)).mean()
    assert scores.crps == pytest.approx(expected, rel=1e-12)
    assert scores.mae_ensemble_mean == pytest.approx(np.abs(truth - members.mean(0)).mean())
    assert scores.mae_regression == pytest.approx(np.abs(truth).mean())
    assert scores.mae_interpolated == pytest.approx(np.abs(truth[1:] - 0.5).mean())
    rmse = np.sqrt(((truth - members.mean(0)) ** 2).mean())
    assert scores.rmse_ensemble_mean == pytest.approx(rmse)
    assert scores.points == 60 * 70
    assert sum(scores.rank_histogram) == 60 * 70 and len(scores.rank_histogram) == 7


def test_a_perfect_ensemble_is_calibrated_with_a_flat_rank_histogram() -> None:
    rng = np.random.default_rng(4)
    members = rng.standard_normal((9, 300, 300))
    truth = rng.standard_normal((300, 300))  # one more draw from the same distribution
    scores = diagnostics.score(truth, members)
    counts = np.array(scores.rank_histogram)
    expected = truth.size / counts.size
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 30  # 9 degrees of freedom: p ~ 0.0004
    assert scores.spread_skill_ratio == pytest.approx(1.0, abs=0.02)
    assert scores.mae_regression is None and scores.mae_interpolated is None


def test_an_underdispersed_ensemble_has_a_u_shaped_histogram() -> None:
    rng = np.random.default_rng(5)
    members = 0.3 * rng.standard_normal((9, 200, 200))
    truth = rng.standard_normal((200, 200))
    scores = diagnostics.score(truth, members)
    counts = np.array(scores.rank_histogram)
    assert counts[0] > 3 * counts[5] and counts[-1] > 3 * counts[5]
    assert scores.spread_skill_ratio < 0.5


def test_non_finite_points_are_left_out() -> None:
    rng = np.random.default_rng(6)
    truth = rng.standard_normal((20, 20))
    truth[0, :] = np.nan
    members = rng.standard_normal((4, 20, 20))
    members[1, 5, 5] = np.inf
    scores = diagnostics.score(truth, members)
    assert scores.points == 20 * 20 - 20 - 1
    assert np.isfinite(scores.crps)


def test_score_table_is_csv_with_one_row_per_record() -> None:
    rng = np.random.default_rng(7)
    record = diagnostics.score(rng.standard_normal((5, 5)), rng.standard_normal((3, 5, 5)))
    text = diagnostics.score_table([{"variable": "t2m", **record.as_row()}])
    header, row = text.strip().splitlines()
    assert header.split(",")[:3] == ["variable", "crps", "mae_ensemble_mean"]
    assert row.split(",")[-2] == " ".join(map(str, record.rank_histogram))
