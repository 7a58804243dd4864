"""``plot_corrdiff.py --spectra / --pdf / --truth``: read a store, compute, write the results.

For each selected (time, [lead]) with complete samples, four kinds of field are compared,
as in the CorrDiff paper: every sample, the ensemble mean, the regression mean (stored by
``run_corrdiff.py`` as ``<var>_regression``; absent from older and blog stores, then left
out with a note) and the low-resolution input interpolated to the output grid (the store's
``lr_<var>``; GFS composite reflectivity ``lr_refc`` stands in for mrr where stored).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from corrdiff_tools import diagnostics, quantities
from corrdiff_tools import times as times_mod
from corrdiff_tools.diagnostic_figures import Curves
from corrdiff_tools.models.declaration import stored_outputs
from corrdiff_tools.quantities import displayed
from corrdiff_tools.store import (
    FORMAT_ATTR,
    OUTPUT_VARIABLES,
    lead_hours,
    lowres_name,
    piece_index,
    regression_name,
)
from corrdiff_tools.truth import Truth, interpolate_lowres

if TYPE_CHECKING:
    import xarray as xr
    from matplotlib.figure import Figure


logger = logging.getLogger(__name__)

#: The low-resolution stand-in for an output variable, where it is not its namesake.
LOWRES_FOR = {"mrr": "refc"}
#: What the scores are in, for Taiwan's variables (``scores.json``).
TAIWAN_SCORE_UNITS = "t2m scores in K (differences), winds in m s-1, mrr in dBZ"


@dataclass(frozen=True)
class Variables:
    """A store's output variables, what is shown of them, and their axis labels.

    ``shown`` adds wind speed where both components are outputs; ``labels`` name each
    (Taiwan's wording, or another model's ``long_name`` and ``units``).
    """

    outputs: tuple[str, ...]
    shown: tuple[str, ...]
    labels: dict[str, str]

    @classmethod
    def of(cls, dataset: xr.Dataset) -> Variables:
        """The variables of a store (Taiwan's where it names no model)."""
        outputs = stored_outputs(dataset.attrs, OUTPUT_VARIABLES)
        shown = quantities.shown_quantities(outputs)
        labels = {
            name: quantities.label(name, dataset[name].attrs if name in dataset else None)
            for name in shown
        }
        return cls(outputs, shown, labels)

    def score_units(self) -> str:
        """What ``scores.json``'s scores are in, in words."""
        if self.outputs == OUTPUT_VARIABLES:
            return TAIWAN_SCORE_UNITS
        parts = []
        for name in self.outputs:
            unit = "K (differences)" if name == "t2m" else quantities.unit_of(self.labels[name])
            parts.append(f"{name} in {unit or 'its store units (none recorded)'}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Entry:
    """One (time, [lead]) to evaluate: where it is in the store and which samples are whole."""

    time_index: int
    lead_index: int | None
    samples: tuple[int, ...]
    stem: str
    valid_time: np.datetime64

    @property
    def index(self) -> tuple[int, ...]:
        """Store index before the sample axis."""
        return piece_index(self.time_index, self.lead_index)


@dataclass(frozen=True)
class Request:
    """What to produce, and where."""

    spectra: bool
    pdf: bool
    truth: Truth | None
    truth_path: Path | None
    outdir: Path
    fmt: str
    dpi: int


def planned_paths(entries: Sequence[Entry], request: Request) -> list[Path]:
    """Every file :func:`evaluate` will write, for the overwrite check."""
    paths = []
    for entry in entries:
        if request.spectra:
            paths.append(request.outdir / f"{entry.stem}-spectra.{request.fmt}")
        if request.pdf:
            paths.append(request.outdir / f"{entry.stem}-pdf.{request.fmt}")
    if request.truth is not None:
        paths += [
            request.outdir / name
            for name in (
                "scores.csv",
                "scores.json",
                f"scores.{request.fmt}",
                f"rank-histograms.{request.fmt}",
            )
        ]
    return paths


def _fields(dataset: xr.Dataset, entry: Entry, variables: Variables) -> dict[str, dict[str, Any]]:
    """Per variable: members (n, y, x), regression and interpolated input (y, x) or None."""
    lat = np.asarray(dataset["lat"].values, dtype="float64")
    lon = np.asarray(dataset["lon"].values, dtype="float64")
    out: dict[str, dict[str, Any]] = {}
    for name in variables.outputs:
        members = np.asarray(
            dataset[name][(*entry.index, list(entry.samples))].values, dtype="float64"
        )
        regression = None
        if regression_name(name) in dataset:
            regression = np.asarray(dataset[regression_name(name)][entry.index].values, "float64")
            if not np.isfinite(regression).any():
                regression = None
        lowres = None
        key = lowres_name(LOWRES_FOR.get(name, name))
        if key in dataset:
            values = np.asarray(dataset[key][entry.index].values, dtype="float64")
            if np.isfinite(values).any():
                lowres = interpolate_lowres(
                    values, dataset["lat_lr"].values, dataset["lon_lr"].values, lat, lon
                )
        out[name] = {"members": members, "regression": regression, "lowres": lowres}
    # deg C and wind speed, as the maps show them
    shown = {
        kind: displayed({name: out[name][kind] for name in variables.outputs})
        for kind in ("members", "regression", "lowres")
    }
    return {name: {kind: shown[kind][name] for kind in shown} for name in variables.shown}


def _truth_fields(request: Request, entry: Entry) -> dict[str, np.ndarray]:
    if request.truth is None or entry.valid_time not in request.truth.fields:
        return {}
    shown = displayed(request.truth.fields[entry.valid_time])
    return {name: values for name, values in shown.items() if values is not None}


def whole_samples(fields: dict[str, dict[str, Any]], outputs: Sequence[str]) -> np.ndarray:
    """Which members have a finite value at every pixel of every diagnostic variable.

    A spectrum needs the whole field: a member with missing pixels (a store from
    elsewhere, a patch of fill values) would give a NaN curve, which a figure silently
    drops while its title still counts the member.
    """
    whole = np.ones(fields[outputs[0]]["members"].shape[0], dtype=bool)
    for name in outputs:
        whole &= np.isfinite(fields[name]["members"]).all(axis=(-2, -1))
    return whole


def _spectra(
    fields: dict[str, dict[str, Any]],
    truth: dict[str, np.ndarray],
    spacing: float,
    when: str,
    whole: np.ndarray,
    outputs: Sequence[str],
) -> tuple[np.ndarray, dict[str, Curves]]:
    """Spectra of the ``whole`` members (see :func:`whole_samples`) and of each baseline.

    A baseline with missing pixels (an input box that does not cover the grid, a gap in
    the reference) is left out with a note; the caller says which members were.
    """
    curves: dict[str, Curves] = {}
    wavelength = np.empty(0)
    for name in outputs:
        members = fields[name]["members"][whole]
        wavelength, sample_power = diagnostics.power_spectrum(members, spacing)

        def power(values: np.ndarray | None, what: str, name: str = name) -> np.ndarray | None:
            if values is None:
                return None
            if not np.isfinite(values).all():
                logger.info(
                    "spectra at %s: the %s of %s has missing pixels, left out", when, what, name
                )
                return None
            return diagnostics.power_spectrum(values, spacing)[1]

        curves[name] = Curves(
            samples=sample_power,
            ensemble_mean=diagnostics.power_spectrum(members.mean(axis=0), spacing)[1],
            regression=power(fields[name]["regression"], "regression mean"),
            lowres=power(fields[name]["lowres"], "interpolated input"),
            truth=power(truth.get(name), "reference"),
        )
    return wavelength, curves


def _densities(
    fields: dict[str, dict[str, Any]], truth: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, Curves]]:
    bins: dict[str, np.ndarray] = {}
    curves: dict[str, Curves] = {}
    for name, entry in fields.items():
        members = entry["members"]
        candidates = [members, entry["regression"], entry["lowres"], truth.get(name)]
        edges = diagnostics.common_bins([c for c in candidates if c is not None])

        def pdf(values: np.ndarray | None, edges: np.ndarray = edges) -> np.ndarray | None:
            return None if values is None else diagnostics.density(values, edges)

        bins[name] = edges
        curves[name] = Curves(
            samples=diagnostics.density(members, edges)[None],
            ensemble_mean=diagnostics.density(members.mean(axis=0), edges),
            regression=pdf(entry["regression"]),
            lowres=pdf(entry["lowres"]),
            truth=pdf(truth.get(name)),
        )
    return bins, curves


def _save(fig: Figure, path: Path, dpi: int) -> None:
    fig.savefig(path, dpi=dpi)


def evaluate(dataset: xr.Dataset, entries: Sequence[Entry], request: Request) -> list[Path]:
    """Compute and write everything ``request`` asks for; return the files written."""
    from corrdiff_tools import diagnostic_figures as figures

    written: list[Path] = []
    variables = Variables.of(dataset)
    if not any(regression_name(name) in dataset for name in variables.outputs):
        made_by = (
            "left out as unphysical, or an earlier run_corrdiff.py did not store it"
            if FORMAT_ATTR in dataset.attrs
            else "the blog's run-corrdiff.py does not store it; run_corrdiff.py does"
        )
        logger.warning("this store has no regression mean (%s): that baseline is left out", made_by)
    spacing = diagnostics.grid_spacing_km(dataset["lat"].values, dataset["lon"].values)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    pooled: dict[str, np.ndarray] = {}
    leads = lead_hours(dataset)
    for entry in entries:
        fields = _fields(dataset, entry, variables)
        truth = _truth_fields(request, entry)
        when = np.datetime_as_string(entry.valid_time, "m")
        lead = None if entry.lead_index is None else leads[entry.lead_index]
        valid = times_mod.title_time(
            entry.valid_time.astype("datetime64[s]").astype(datetime),
            None if lead is None else int(lead),
        )
        if request.spectra:
            whole = whole_samples(fields, variables.outputs)
            count = f"{len(entry.samples)} samples"
            if not whole.all():
                left = [s for s, ok in zip(entry.samples, whole, strict=True) if not ok]
                logger.warning(
                    "spectra at %s: sample(s) %s have missing pixels and are left out",
                    when,
                    ", ".join(map(str, left)),
                )
                count = (
                    f"{int(whole.sum())} of {len(entry.samples)} samples ({len(left)} with "
                    "missing pixels left out)"
                )
            path = request.outdir / f"{entry.stem}-spectra.{request.fmt}"
            if whole.any():
                wavelength, curves = _spectra(
                    fields, truth, spacing, when, whole, variables.outputs
                )
                title = f"Power spectra · {valid} · {count}"
                figure = figures.spectra_figure(
                    wavelength, curves, title, names=variables.outputs, labels=variables.labels
                )
                _save(figure, path, request.dpi)
                written.append(path)
            else:
                logger.warning("spectra at %s: no sample without missing pixels, none drawn", when)
        if request.pdf:
            bins, curves = _densities(fields, truth)
            path = request.outdir / f"{entry.stem}-pdf.{request.fmt}"
            title = f"Distributions over the grid · {valid} · {len(entry.samples)} samples"
            figure = figures.pdf_figure(
                bins, curves, title, names=variables.shown, labels=variables.labels
            )
            _save(figure, path, request.dpi)
            written.append(path)
        if request.truth is not None and truth and len(entry.samples) >= 2:
            for name in request.truth.variables:
                members = fields[name]["members"]
                reference = truth.get(name)
                why = diagnostics.unscorable(reference, members, fields[name]["regression"])
                if why:
                    skipped.append(
                        {"valid_time": when, "lead_hours": lead, "variable": name, "why": why}
                    )
                    continue
                assert reference is not None  # noqa: S101 - unscorable says so
                result = diagnostics.score(
                    reference, members, fields[name]["regression"], fields[name]["lowres"]
                )
                rows.append(
                    {"valid_time": when, "lead_hours": lead, "variable": name, **result.as_row()}
                )
                previous = pooled.get(name)
                counts = np.asarray(result.rank_histogram)
                pooled[name] = counts if previous is None else previous + counts
    if skipped:
        logger.warning(
            "--truth: %d (time, variable) pair(s) not scored: %s",
            len(skipped),
            "; ".join(f"{s['variable']} at {s['valid_time']} ({s['why']})" for s in skipped[:4])
            + (" ..." if len(skipped) > 4 else ""),
        )
    if request.truth is not None:
        written += _write_scores(request, rows, pooled, skipped, variables)
    return written


def _write_scores(
    request: Request,
    rows: list[dict[str, Any]],
    pooled: dict[str, np.ndarray],
    skipped: list[dict[str, Any]],
    variables: Variables,
) -> list[Path]:
    """scores.csv/.json and their figures, from every (time, variable) row.

    ``scores.json`` also lists the (time, variable) pairs that could not be scored, and why.
    """
    from corrdiff_tools import diagnostic_figures as figures

    outdir = request.outdir
    (outdir / "scores.json").write_text(
        json.dumps(
            {
                "truth": str(request.truth_path),
                "units": variables.score_units(),
                "scores": rows,
                "not_scored": skipped,
            },
            indent=1,
        )
    )
    if not rows:
        logger.warning(
            "--truth: nothing could be scored (scores.json lists why): no selected time has a "
            "complete ensemble of 2 or more samples with reference values to score it against"
        )
        return [outdir / "scores.json"]
    (outdir / "scores.csv").write_text(diagnostics.score_table(rows))
    title = f"Scores against {request.truth_path.name if request.truth_path else 'truth'}"
    _save(
        figures.scores_figure(rows, title, names=variables.shown, labels=variables.labels),
        outdir / f"scores.{request.fmt}",
        request.dpi,
    )
    spread_skill = {
        name: float(np.mean([r["spread_skill_ratio"] for r in rows if r["variable"] == name]))
        for name in pooled
    }
    _save(
        figures.rank_histogram_figure(
            pooled, spread_skill, f"Rank histograms: {title}", labels=variables.labels
        ),
        outdir / f"rank-histograms.{request.fmt}",
        request.dpi,
    )
    return [outdir / name for name in ("scores.csv", "scores.json", f"scores.{request.fmt}")] + [
        outdir / f"rank-histograms.{request.fmt}"
    ]
