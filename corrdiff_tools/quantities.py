"""What a field means to a reader: display units, names, thresholds, ensemble statistics.

The store holds the model's variables in its own units (mrr in dBZ, t2m in K, u10m and
v10m in m/s; see :mod:`corrdiff_tools.store`). People read temperature in deg C and wind
as a speed, so maps, evaluation figures, scores and exceedance thresholds all use the
*display quantities* defined here: ``mrr`` (or the input's ``refc``), ``t2m`` in deg C,
``wind`` speed, and ``u10m``/``v10m`` as stored. Every conversion and every ensemble
statistic is computed here, once; the store's ``--stats`` arrays and the plot tool's
statistics figure both come from :func:`moments` and :func:`exceedance`.

Imports only numpy, so the plot tool and the data contract can both use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: 0 deg C in kelvin.
KELVIN = 273.15

#: Display units of each quantity (what axis labels and titles print).
UNITS = {
    "mrr": "dBZ",
    "refc": "dBZ",
    "t2m": "°C",
    "wind": "m/s",
    "u10m": "m/s",
    "v10m": "m/s",
}
#: What each quantity is, in words (figure titles, axis labels).
TITLES = {
    "mrr": "Maximum radar reflectivity",
    "refc": "Composite reflectivity",
    "t2m": "2 m temperature",
    "wind": "10 m wind speed",
    "u10m": "10 m eastward wind",
    "v10m": "10 m northward wind",
}

#: Quantities an exceedance threshold can be set on (``--threshold VAR=VALUE``).
THRESHOLD_VARIABLES = ("mrr", "t2m", "wind")
#: Default exceedance thresholds (17.2 m/s is gale force, 35 dBZ heavy rain).
DEFAULT_THRESHOLDS = {"mrr": 35.0, "wind": 17.2}
#: Units of the thresholds as CF strings (the store's exceedance attributes).
THRESHOLD_UNITS = {"mrr": "dBZ", "t2m": "degC", "wind": "m s-1"}


def label(quantity: str) -> str:
    """``'2 m temperature [°C]'``: the name and display unit of a quantity."""
    return f"{TITLES[quantity]} [{UNITS[quantity]}]"


#: The store variables a display quantity is made of.
MEMBERS = {"wind": ("u10m", "v10m")}


def members(quantity: str) -> tuple[str, ...]:
    """The store variables a display quantity is computed from (``wind``: u10m, v10m)."""
    return MEMBERS.get(quantity, (quantity,))


def panels_of(outputs: Sequence[str]) -> tuple[str, ...]:
    """The display quantities of a model's outputs, in the model's order.

    A u10m/v10m pair becomes one ``wind`` panel (drawn with arrows) where the first of
    the two stands; Taiwan's (mrr, t2m, u10m, v10m) gives its (mrr, t2m, wind).
    """
    both = {"u10m", "v10m"} <= set(outputs)
    panels: list[str] = []
    for name in outputs:
        panel = "wind" if both and name in MEMBERS["wind"] else name
        if panel not in panels:
            panels.append(panel)
    return tuple(panels)


def to_display_units(
    mrr_or_refc: np.ndarray | None, t2m_kelvin: np.ndarray, u: np.ndarray, v: np.ndarray
) -> dict[str, np.ndarray]:
    """The map panels' quantities: mrr in dBZ, t2m in deg C, wind speed in m/s (float64)."""
    out = {"t2m": np.asarray(t2m_kelvin, dtype="float64") - KELVIN, "wind": np.hypot(u, v)}
    if mrr_or_refc is not None:
        out["mrr"] = np.asarray(mrr_or_refc, dtype="float64")
    return out


def displayed(fields: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray | None]:
    """Store-unit fields (any of mrr, t2m, u10m, v10m; None for missing) in display units.

    t2m becomes deg C; ``wind`` (speed) is added where both components are given; the
    rest is kept as it is. Used for evaluation fields and truth files alike.
    """
    out = dict(fields)
    t2m = out.get("t2m")
    if t2m is not None:
        out["t2m"] = np.asarray(t2m - KELVIN)
    if "u10m" in out and "v10m" in out:
        u, v = out["u10m"], out["v10m"]
        out["wind"] = None if u is None or v is None else np.hypot(u, v)
    return out


@dataclass(frozen=True)
class EnsembleStats:
    """Ensemble mean, standard deviation and exceedance probabilities, per quantity."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    probability: dict[str, np.ndarray]
    thresholds: Mapping[str, float]
    members: int


def moments(
    members: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Mean and standard deviation (ddof=0) over axis 0 (the ensemble) of each array."""
    mean = {key: np.mean(values, axis=0) for key, values in members.items()}
    std = {key: np.std(values, axis=0) for key, values in members.items()}
    return mean, std


def exceedance(
    members: Mapping[str, np.ndarray], thresholds: Mapping[str, float]
) -> dict[str, np.ndarray]:
    """P(x >= threshold) over axis 0, for each thresholded quantity (same units)."""
    return {key: np.mean(members[key] >= value, axis=0) for key, value in thresholds.items()}


def ensemble_stats(
    members: Mapping[str, np.ndarray], thresholds: Mapping[str, float]
) -> EnsembleStats:
    """Mean, std (ddof=0) and P(x >= threshold) over axis 0 of each quantity.

    Parameters
    ----------
    members : mapping
        Quantity -> array (sample, y, x), in display units.
    thresholds : mapping
        Quantity -> threshold, in display units.
    """
    mean, std = moments(members)
    size = next(iter(members.values())).shape[0]
    return EnsembleStats(mean, std, exceedance(members, thresholds), dict(thresholds), size)
