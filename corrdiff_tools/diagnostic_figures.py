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


def layout(
    count: int, width: float, fixed: tuple[int, int] | None = None
) -> tuple[tuple[int, int], tuple[float, float]]:
    """(rows, columns) for ``count`` panels, and a figure size with ``width`` per column.

    Two columns up to four panels, three beyond; ``fixed`` is used where it holds them
    (Taiwan's figures keep their grids).
    """
    if fixed is not None and count <= fixed[0] * fixed[1]:
        grid = fixed
    else:
        columns = min(count, 2) if count <= 4 else 3
        grid = (-(-count // columns), columns)
    return grid, (width * grid[1], 4.25 * grid[0])


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


def _squared(label: str) -> str:
    """A periodogram's axis label for a variable of this label (power in (m/s)²)."""
    unit = quantities.unit_of(label)
    if unit is None:
        return "Power"
    return f"Power [({unit})²]" if "/" in unit or " " in unit else f"Power [{unit}²]"


def spectra_figure(
    wavelength_km: np.ndarray,
    curves: Mapping[str, Curves],
    title: str,
    fig: Figure | None = None,
    names: Sequence[str] = DIAGNOSTIC_VARIABLES,
    labels: Mapping[str, str] = VARIABLE_LABELS,
) -> Figure:
    """Radially averaged power spectra, one log-log panel per variable of ``names``.

    The x axis is wavelength in km, large scales on the left, so the small scales where
    diffusion adds variance (and interpolation and the regression mean lack it) are on
    the right.
    """
    grid, size = layout(len(names), 5.5)
    fig = _figure(size, fig)
    for index, ax, name, entry in _panels(fig, grid, names, curves):
        for row, values in enumerate(entry.samples):
            ax.loglog(
                wavelength_km, values, label="samples" if row == 0 else None, **STYLES["samples"]
            )
        for label, values in entry.singles():
            ax.loglog(wavelength_km, values, label=label, **STYLES[label])
        ax.set_xlim(wavelength_km.max(), wavelength_km.min())
        ax.set_xlabel("Wavelength [km]")
        ax.set_ylabel(_squared(labels[name]))
        ax.set_title(labels[name])
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
    names: Sequence[str] = PDF_VARIABLES,
    labels: Mapping[str, str] = VARIABLE_LABELS,
) -> Figure:
    """Probability densities on a log scale, one panel per variable (and wind speed).

    The last panel holds the legend.
    """
    grid, size = layout(len(names) + 1, 5.0)
    fig = _figure(size, fig)
    for _, ax, name, entry in _panels(fig, grid, names, curves):
        centres = 0.5 * (bins[name][:-1] + bins[name][1:])
        ax.semilogy(
            centres,
            entry.samples[0],
            label="samples (pooled)",
            **STYLES["samples"] | {"alpha": 1.0},
        )
        for label, values in entry.singles():
            ax.semilogy(centres, values, label=label, **STYLES[label])
        ax.set_xlabel(labels[name])
        ax.set_ylabel("Probability density")
        ax.grid(True, alpha=0.3)
    legend = fig.add_subplot(*grid, len(names) + 1)
    legend.set_axis_off()
    handles, entries = fig.axes[0].get_legend_handles_labels()
    legend.legend(handles, entries, loc="center")
    fig.suptitle(title)
    return fig


def scores_figure(
    rows: Sequence[Mapping[str, Any]],
    title: str,
    fig: Figure | None = None,
    names: Sequence[str] = DIAGNOSTIC_VARIABLES,
    labels: Mapping[str, str] = VARIABLE_LABELS,
) -> Figure:
    """CRPS and MAE/RMSE baselines per variable against valid time."""
    variables = [v for v in names if any(r["variable"] == v for r in rows)]
    grid, size = layout(len(variables), 5.5, fixed=(2, 2))
    fig = _figure(size, fig)
    for index, name in enumerate(variables, start=1):
        ax = fig.add_subplot(*grid, index)
        mine = [r for r in rows if r["variable"] == name]
        ticks = [r["valid_time"] for r in mine]
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
        ax.set_xticks(positions, ticks, rotation=30, ha="right", fontsize="small")
        ax.set_ylabel(quantities.unit_of(labels[name]) or "")
        ax.set_title(labels[name].split(" [")[0])
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
    labels: Mapping[str, str] = VARIABLE_LABELS,
) -> Figure:
    """Rank histograms (relative frequency), with the flat line of a calibrated ensemble."""
    grid, size = layout(len(histograms), 5.5, fixed=(2, 2))
    fig = _figure(size, fig)
    for index, (name, counts) in enumerate(histograms.items(), start=1):
        ax = fig.add_subplot(*grid, index)
        counts = np.asarray(counts, dtype="float64")
        frequency = counts / counts.sum() if counts.sum() > 0 else counts
        ax.bar(np.arange(counts.size), frequency, color="0.5")
        ax.axhline(1 / counts.size, color="black", linestyle="--", label="calibrated")
        ax.set_xlabel("Rank of the truth among the members")
        ax.set_ylabel("Relative frequency")
        ax.set_title(f"{labels[name].split(' [')[0]}: spread/skill {spread_skill[name]:.2f}")
        if index == 1:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig
