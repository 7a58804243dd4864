"""Pure figure builders for ``plot_corrdiff.py --spectra / --pdf / --truth``.

Same rules as :mod:`corrdiff_tools.plotting`: data in, ``Figure`` out, no pyplot state.
Colours are fixed per kind of curve so every figure reads the same way: samples thin grey,
ensemble mean black, regression mean blue, interpolated input orange (dashed), truth green.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from corrdiff_tools import quantities
from corrdiff_tools.plotting import new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Physical variables, in store units except t2m in deg C (as the maps show it).
DIAGNOSTIC_VARIABLES = ("mrr", "t2m", "u10m", "v10m")
PDF_VARIABLES = (*DIAGNOSTIC_VARIABLES, "wind")
VARIABLE_LABELS = {name: quantities.label(name) for name in PDF_VARIABLES}
STYLES: dict[str, dict[str, Any]] = {
    "samples": {"color": "0.6", "linewidth": 0.6, "alpha": 0.5},
    "ensemble mean": {"color": "black", "linewidth": 1.6},
    "regression mean": {"color": "tab:blue", "linewidth": 1.4},
    "interpolated input": {"color": "tab:orange", "linewidth": 1.4, "linestyle": "--"},
    "truth": {"color": "tab:green", "linewidth": 1.6},
}
SCORE_STYLES = {
    "crps": ("CRPS (ensemble)", STYLES["ensemble mean"]),
    "mae_ensemble_mean": ("MAE (ensemble mean)", {"color": "0.4", "linestyle": "--"}),
    "mae_regression": ("MAE (regression mean)", STYLES["regression mean"]),
    "mae_interpolated": ("MAE (interpolated input)", STYLES["interpolated input"]),
    "rmse_ensemble_mean": ("RMSE (ensemble mean)", {"color": "tab:red", "linestyle": ":"}),
}


@dataclass(frozen=True)
class Curves:
    """One variable's lines: per-sample rows and the single reference curves (or None)."""

    samples: np.ndarray
    ensemble_mean: np.ndarray
    regression: np.ndarray | None = None
    lowres: np.ndarray | None = None
    truth: np.ndarray | None = None

    def singles(self) -> list[tuple[str, np.ndarray]]:
        """The named single curves that exist, in drawing order."""
        named = (
            ("ensemble mean", self.ensemble_mean),
            ("regression mean", self.regression),
            ("interpolated input", self.lowres),
            ("truth", self.truth),
        )
        return [(name, values) for name, values in named if values is not None]


def _figure(figsize: tuple[float, float], fig: Figure | None) -> Figure:
    return new_figure(figsize, fig, layout="constrained")  # room for log-axis labels


def _panels(
    fig: Figure, grid: tuple[int, int], names: Sequence[str], curves: Mapping[str, Curves]
) -> Iterator[tuple[int, Axes, str, Curves]]:
    """One subplot per name, in order; a name without curves leaves a blank panel."""
    for index, name in enumerate(names, start=1):
        ax = fig.add_subplot(*grid, index)
        if name not in curves:
            ax.set_axis_off()
            continue
        yield index, ax, name, curves[name]


def _squared(name: str) -> str:
    """The unit of a periodogram of ``name``: its display unit squared (e.g. (m/s)²)."""
    unit = VARIABLE_LABELS[name].split("[")[-1].rstrip("]")
    return f"({unit})²" if "/" in unit or " " in unit else f"{unit}²"


def spectra_figure(
    wavelength_km: np.ndarray, curves: Mapping[str, Curves], title: str, fig: Figure | None = None
) -> Figure:
    """Radially averaged power spectra, one log-log panel per variable.

    The x axis is wavelength in km, large scales on the left, so the small scales where
    diffusion adds variance (and interpolation and the regression mean lack it) are on
    the right.
    """
    fig = _figure((11.0, 8.5), fig)
    for index, ax, name, entry in _panels(fig, (2, 2), DIAGNOSTIC_VARIABLES, curves):
        for row, values in enumerate(entry.samples):
            ax.loglog(
                wavelength_km, values, label="samples" if row == 0 else None, **STYLES["samples"]
            )
        for label, values in entry.singles():
            ax.loglog(wavelength_km, values, label=label, **STYLES[label])
        ax.set_xlim(wavelength_km.max(), wavelength_km.min())
        ax.set_xlabel("Wavelength [km]")
        ax.set_ylabel(f"Power [{_squared(name)}]")
        ax.set_title(VARIABLE_LABELS[name])
        ax.grid(True, which="major", alpha=0.3)
        if index == 1:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig


def pdf_figure(
    bins: Mapping[str, np.ndarray],
    curves: Mapping[str, Curves],
    title: str,
    fig: Figure | None = None,
) -> Figure:
    """Probability densities on a log scale, one panel per variable and wind speed."""
    fig = _figure((15.0, 8.5), fig)
    for _, ax, name, entry in _panels(fig, (2, 3), PDF_VARIABLES, curves):
        centres = 0.5 * (bins[name][:-1] + bins[name][1:])
        ax.semilogy(
            centres,
            entry.samples[0],
            label="samples (pooled)",
            **STYLES["samples"] | {"alpha": 1.0},
        )
        for label, values in entry.singles():
            ax.semilogy(centres, values, label=label, **STYLES[label])
        ax.set_xlabel(VARIABLE_LABELS[name])
        ax.set_ylabel("Probability density")
        ax.grid(True, alpha=0.3)
    legend = fig.add_subplot(2, 3, 6)
    legend.set_axis_off()
    handles, labels = fig.axes[0].get_legend_handles_labels()
    legend.legend(handles, labels, loc="center")
    fig.suptitle(title)
    return fig


def scores_figure(
    rows: Sequence[Mapping[str, Any]], title: str, fig: Figure | None = None
) -> Figure:
    """CRPS and MAE/RMSE baselines per variable against valid time."""
    fig = _figure((11.0, 8.5), fig)
    variables = [v for v in DIAGNOSTIC_VARIABLES if any(r["variable"] == v for r in rows)]
    for index, name in enumerate(variables, start=1):
        ax = fig.add_subplot(2, 2, index)
        mine = [r for r in rows if r["variable"] == name]
        labels = [r["valid_time"] for r in mine]
        positions = np.arange(len(mine))
        for key, (label, style) in SCORE_STYLES.items():
            values = [r[key] for r in mine]
            if all(value is None for value in values):
                continue
            ax.plot(
                positions,
                [np.nan if v is None else v for v in values],
                marker="o",
                label=label,
                **style,
            )
        ax.set_xticks(positions, labels, rotation=30, ha="right", fontsize="small")
        ax.set_ylabel(VARIABLE_LABELS[name].split("[")[-1].rstrip("]"))
        ax.set_title(VARIABLE_LABELS[name].split(" [")[0])
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        if index == 1:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig


def rank_histogram_figure(
    histograms: Mapping[str, np.ndarray],
    spread_skill: Mapping[str, float],
    title: str,
    fig: Figure | None = None,
) -> Figure:
    """Rank histograms (relative frequency), with the flat line of a calibrated ensemble."""
    fig = _figure((11.0, 8.5), fig)
    for index, (name, counts) in enumerate(histograms.items(), start=1):
        ax = fig.add_subplot(2, 2, index)
        counts = np.asarray(counts, dtype="float64")
        frequency = counts / counts.sum() if counts.sum() > 0 else counts
        ax.bar(np.arange(counts.size), frequency, color="0.5")
        ax.axhline(1 / counts.size, color="black", linestyle="--", label="calibrated")
        ax.set_xlabel("Rank of the truth among the members")
        ax.set_ylabel("Relative frequency")
        ax.set_title(
            f"{VARIABLE_LABELS[name].split(' [')[0]}: spread/skill {spread_skill[name]:.2f}"
        )
        if index == 1:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig
