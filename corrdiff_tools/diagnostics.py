"""The paper's evaluation on the user's own cases: spectra, distributions and scores.

Mardani et al. (2024, arXiv:2309.15214) judge CorrDiff by CRPS (MAE for deterministic
baselines), radially averaged power spectra and probability distributions, against the
interpolated input and the regression mean alone. This module computes those from
numpy arrays; it never imports torch. Scores come from xskillscore (CRPS through
properscoring, rank histograms, MAE, RMSE) rather than being written by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Mean Earth radius used for grid spacing, km.
EARTH_RADIUS_KM = 6371.0


def grid_spacing_km(lat: np.ndarray, lon: np.ndarray) -> float:
    """Mean distance between neighbouring points of a 2-D grid (haversine), km."""
    lat_r, lon_r = np.radians(lat), np.radians(lon)

    def distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> Any:
        dlat, dlon = b[0] - a[0], b[1] - a[1]
        h = np.sin(dlat / 2) ** 2 + np.cos(a[0]) * np.cos(b[0]) * np.sin(dlon / 2) ** 2
        return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(h))

    along_x = distance((lat_r[:, :-1], lon_r[:, :-1]), (lat_r[:, 1:], lon_r[:, 1:]))
    along_y = distance((lat_r[:-1], lon_r[:-1]), (lat_r[1:], lon_r[1:]))
    return float((along_x.mean() + along_y.mean()) / 2)


def power_spectrum(field: np.ndarray, spacing_km: float) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of the last two axes.

    The field's mean is removed, the 2-D periodogram ``|FFT|^2 / (H W)`` is averaged over
    rings of integer wavenumber ``k = 1 .. min(H, W) // 2`` (in units of one cycle per
    domain, ``1 / (max(H, W) * spacing)``), and each ring is reported at its wavelength.

    Parameters
    ----------
    field : numpy.ndarray
        Shape ``(..., H, W)``; leading axes (samples) are kept.
    spacing_km : float
        Grid spacing.

    Returns
    -------
    wavelength_km : numpy.ndarray
        Shape ``(K,)``, decreasing.
    power : numpy.ndarray
        Shape ``(..., K)``.
    """
    field = np.asarray(field, dtype="float64")
    height, width = field.shape[-2:]
    anomaly = field - field.mean(axis=(-2, -1), keepdims=True)
    periodogram = np.abs(np.fft.fft2(anomaly)) ** 2 / (height * width)
    size = max(height, width)
    ky = np.fft.fftfreq(height) * size  # cycles per `size` points
    kx = np.fft.fftfreq(width) * size
    ring = np.rint(np.hypot(*np.meshgrid(ky, kx, indexing="ij"))).astype(int)
    rings = np.arange(1, min(height, width) // 2 + 1)
    flat = periodogram.reshape(*periodogram.shape[:-2], -1)
    index = ring.ravel()
    counts = np.bincount(index, minlength=rings[-1] + 1)[rings]
    power = (
        np.stack(
            [
                np.bincount(index, weights=row, minlength=rings[-1] + 1)[rings]
                for row in flat.reshape(-1, flat.shape[-1])
            ]
        ).reshape(*flat.shape[:-1], rings.size)
        / counts
    )
    wavelength = size * spacing_km / rings
    return wavelength, power


def density(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Probability density of the finite values over ``bins`` (zero where none fall)."""
    finite = np.asarray(values)[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(bins.size - 1)
    hist, _ = np.histogram(finite, bins=bins, density=True)
    return hist


def common_bins(arrays: Sequence[np.ndarray], count: int = 80) -> np.ndarray:
    """``count`` equal bins spanning every finite value of ``arrays``."""
    lows = [np.nanmin(a) for a in arrays if np.isfinite(a).any()]
    highs = [np.nanmax(a) for a in arrays if np.isfinite(a).any()]
    low, high = (min(lows), max(highs)) if lows else (0.0, 1.0)
    if high <= low:
        high = low + 1.0
    return np.linspace(low, high, count + 1)


@dataclass(frozen=True)
class Scores:
    """Scores of one variable at one time against the truth, over its finite points."""

    crps: float
    mae_ensemble_mean: float
    mae_regression: float | None
    mae_interpolated: float | None
    rmse_ensemble_mean: float
    spread: float
    spread_skill_ratio: float
    rank_histogram: list[int]
    points: int

    def as_row(self) -> dict[str, Any]:
        """A flat record for CSV/JSON."""
        return asdict(self)


def unscorable(
    truth: np.ndarray | None, members: np.ndarray, regression: np.ndarray | None = None
) -> str | None:
    """Why an ensemble cannot be scored against ``truth`` at all, or None.

    :func:`score` uses the points where the truth, every member (and the regression mean,
    if given) are finite; a radar outage can leave none.
    """
    if truth is None:
        return "no reference field"
    finite = np.isfinite(truth)
    if not finite.any():
        return "the reference has no finite value there"
    finite &= np.isfinite(members).all(axis=0)
    if regression is not None:
        finite &= np.isfinite(regression)
    if not finite.any():
        return "no point where the reference and every member are finite"
    return None


def score(
    truth: np.ndarray,
    members: np.ndarray,
    regression: np.ndarray | None = None,
    interpolated: np.ndarray | None = None,
) -> Scores:
    """CRPS, MAE, RMSE, spread-skill ratio and rank histogram of an ensemble.

    Parameters
    ----------
    truth : numpy.ndarray
        Shape ``(y, x)``.
    members : numpy.ndarray
        Shape ``(member, y, x)``, at least 2 members.
    regression : numpy.ndarray, optional
        The regression mean, ``(y, x)``: scored by MAE as the deterministic baseline.
    interpolated : numpy.ndarray, optional
        The low-resolution input interpolated to the grid, ``(y, x)``: the paper's other
        baseline, scored by MAE over the points where it is finite too.

    Notes
    -----
    Points where the truth or any member is not finite are left out. ``spread`` is the
    square root of the grid-mean unbiased ensemble variance; the spread-skill ratio is
    ``sqrt((n + 1) / n) * spread / RMSE`` (Fortin et al. 2014), 1 for a calibrated
    ensemble of ``n`` members.
    """
    import xarray as xr
    import xskillscore as xs

    members = np.asarray(members, dtype="float64")
    truth = np.asarray(truth, dtype="float64")
    ok = np.isfinite(truth) & np.isfinite(members).all(axis=0)
    if regression is not None:
        ok &= np.isfinite(regression)
    n = members.shape[0]
    obs = xr.DataArray(truth[ok], dims=("point",))
    ens = xr.DataArray(members[:, ok], dims=("member", "point"))
    mean = ens.mean("member")
    rmse = float(xs.rmse(obs, mean, dim="point"))
    spread = float(np.sqrt(ens.var("member", ddof=1).mean()))
    ranks = xs.rank_histogram(obs, ens, dim="point", member_dim="member")
    return Scores(
        crps=float(xs.crps_ensemble(obs, ens, member_dim="member", dim="point")),
        mae_ensemble_mean=float(xs.mae(obs, mean, dim="point")),
        mae_regression=(
            float(
                xs.mae(obs, xr.DataArray(np.asarray(regression)[ok], dims=("point",)), dim="point")
            )
            if regression is not None
            else None
        ),
        mae_interpolated=(
            float(np.mean(np.abs(truth - interpolated)[ok & np.isfinite(interpolated)]))
            if interpolated is not None and (ok & np.isfinite(interpolated)).any()
            else None
        ),
        rmse_ensemble_mean=rmse,
        spread=spread,
        spread_skill_ratio=float(np.sqrt((n + 1) / n) * spread / rmse) if rmse > 0 else np.inf,
        rank_histogram=[int(v) for v in ranks.values],
        points=int(ok.sum()),
    )


def score_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text of score records (rank histograms joined by spaces)."""
    import csv
    import io

    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                key: " ".join(map(str, value)) if isinstance(value, list) else value
                for key, value in row.items()
            }
        )
    return buffer.getvalue()
