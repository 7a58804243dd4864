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


def label(quantity: str, attrs: Mapping[str, object] | None = None) -> str:
    """``'2 m temperature [°C]'``: the name and display unit of a quantity.

    A variable of another model that the tool does not know is named by its store
    attributes (``long_name``, ``units``), with no unit where the store gives none.
    """
    if quantity in TITLES:
        return f"{TITLES[quantity]} [{UNITS[quantity]}]"
    attrs = attrs or {}
    name = str(attrs.get("long_name", quantity))
    units = attrs.get("units")
    return f"{name} [{units}]" if units else name


def unit_of(label_text: str) -> str | None:
    """The unit in a :func:`label` (``'°C'``), or None for a label without one."""
    if not label_text.endswith("]") or " [" not in label_text:
        return None
    return label_text.rsplit(" [", 1)[1][:-1]


def threshold_quantities(outputs: Sequence[str]) -> tuple[str, ...]:
    """What ``--threshold`` may be set on for a model: the display quantities of its outputs.

    Taiwan's (mrr, t2m, u10m, v10m) give mrr, t2m and wind (:data:`THRESHOLD_VARIABLES`).
    """
    return panels_of(outputs)


def default_thresholds(outputs: Sequence[str]) -> dict[str, float]:
    """The :data:`DEFAULT_THRESHOLDS` of the quantities a model's outputs give."""
    available = set(threshold_quantities(outputs))
    return {key: value for key, value in DEFAULT_THRESHOLDS.items() if key in available}


def threshold_units(quantity: str, stored_units: str | None = None) -> str:
    """CF units of a threshold: ours (:data:`THRESHOLD_UNITS`), else the store's (or '')."""
    return THRESHOLD_UNITS.get(quantity, stored_units or "")


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


def shown_quantities(outputs: Sequence[str]) -> tuple[str, ...]:
    """A model's outputs and, where it writes both wind components, the wind speed."""
    return (*outputs, "wind") if set(MEMBERS["wind"]) <= set(outputs) else tuple(outputs)


def to_display_units(
    mrr_or_refc: np.ndarray | None, t2m_kelvin: np.ndarray, u: np.ndarray, v: np.ndarray
) -> dict[str, np.ndarray]:
    """Taiwan's map quantities: mrr in dBZ, t2m in deg C, wind speed (see :func:`displayed`)."""
    given = {"t2m": t2m_kelvin, "u10m": u, "v10m": v}
    shown = displayed(given if mrr_or_refc is None else {**given, "mrr": mrr_or_refc})
    return {key: np.asarray(shown[key]) for key in ("t2m", "wind", "mrr") if key in shown}


def displayed(fields: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray | None]:
    """Store-unit fields (any of mrr, t2m, u10m, v10m; None for missing) in display units.

    t2m becomes deg C; ``wind`` (speed) is added where both components are given; the
    rest keeps its units, as float64. Used for maps, statistics, evaluation fields and
    truth files alike, of any model's variables.
    """
    out: dict[str, np.ndarray | None] = {}
    for key, values in fields.items():
        # Float64 for the statistics; the wind components as given, so that the speed
        # (and whether it passes a threshold) is what it always was.
        keep = values is None or key in MEMBERS["wind"]
        out[key] = values if keep else np.asarray(values, dtype="float64")
    t2m = out.get("t2m")
    if t2m is not None:
        out["t2m"] = t2m - KELVIN
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
