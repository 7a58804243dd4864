"""Is this data what it says it is? Coordinates, times, labels and physical ranges.

Files and stores from elsewhere are messier than ours: a NaN in a latitude axis (which
makes a nearest-point selection copy one row into every row), times stored as strings,
in a model calendar or a few seconds off the hour, variable labels stored as bytes,
temperatures in deg C under ``units: K``. Everything a run reads (its inputs, GFS's
``refc``), computes (every batch of samples, the regression mean), and everything the
plot tool draws or scores against (stores, ``--truth`` files) passes through here.

Each function returns a one-clause description of the problem (or raises ``ValueError``
with one): the caller adds which file or option it was and turns it into its own error,
so the message names the file, the value and the fix. numpy only: the plot tool uses it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from corrdiff_tools import times as times_mod

#: Plausible range and units of every field the tools read, store or draw. A field in
#: other units (t2m in deg C, geopotential height in metres instead of geopotential,
#: linear reflectivity instead of dBZ) gives plausible-looking but wrong maps and scores,
#: so values outside these are refused. The model's outputs share the inputs' names
#: (t2m, u10m, v10m) and ranges; mrr and refc are reflectivities in dBZ (a radar's
#: range is about -30 to 80 dBZ; 100 dBZ would be 1e10 mm6 m-3).
PHYSICAL_RANGES: dict[str, tuple[float, float, str]] = {
    "tcwv": (0.0, 120.0, "kg m-2"),
    "z500": (40000.0, 62000.0, "m2 s-2 (geopotential, not height)"),
    "z850": (7000.0, 18000.0, "m2 s-2 (geopotential, not height)"),
    "t500": (200.0, 300.0, "K"),
    "t850": (220.0, 330.0, "K"),
    # 180 K: daily means on the Antarctic plateau (CorrDiffCMIP6's global inputs) go
    # below 200 K; deg C (-90 to 60) is still far outside.
    "t2m": (180.0, 340.0, "K"),
    **{name: (-150.0, 150.0, "m s-1") for name in ("u500", "v500", "u850", "v850")},
    **{name: (-100.0, 100.0, "m s-1") for name in ("u10m", "v10m")},
    "mrr": (-100.0, 100.0, "dBZ"),
    "refc": (-100.0, 100.0, "dBZ"),
}

#: Beyond these limits a field the model computed is not weather but a numerical failure
#: (the sampler's settings, a damaged checkpoint): far outside anything measured near the
#: surface (184 to 330 K, 113 m s-1 gusts, 80 dBZ hail), wide enough for any real
#: ensemble member. Samples outside are never stored as complete.
OUTPUT_LIMITS: dict[str, tuple[float, float, str]] = {
    "mrr": (-200.0, 200.0, "dBZ"),
    "t2m": (100.0, 450.0, "K"),
    "u10m": (-200.0, 200.0, "m s-1"),
    "v10m": (-200.0, 200.0, "m s-1"),
}

#: A time this close to a whole minute is that minute (float seconds since an epoch,
#: written and read back, land a few seconds off); further off, it is kept as it is.
TIME_TOLERANCE = np.timedelta64(10, "s")

#: What a datetime64[ns] can hold (nanoseconds since 1970 in 64 bits), whole years: outside,
#: numpy wraps a time around without an error (2300 becomes 1715).
TIME_RANGE = (
    np.datetime64(f"{times_mod.FIRST_YEAR}-01-01", "s"),
    np.datetime64(f"{times_mod.LAST_YEAR + 1}-01-01", "s"),
)

#: Calendars whose dates are read by their labels (a model's 2024-07-24T12:00 is
#: 2024-07-24T12:00), where the label exists in the proleptic Gregorian calendar.
LABEL_CALENDARS = frozenset(
    {
        "standard", "gregorian", "proleptic_gregorian", "noleap", "365_day",
        "all_leap", "366_day", "360_day",
    }
)  # fmt: skip


def out_of_range(
    name: str,
    values: np.ndarray,
    ranges: Mapping[str, tuple[float, float, str]] = PHYSICAL_RANGES,
) -> str | None:
    """``'spans a to b, outside its physical range lo to hi units'``, or None.

    Only the finite values are compared (non-finite ones are another problem, see
    :func:`not_finite`); a variable without a range in ``ranges`` is not checked.
    """
    if name not in ranges:
        return None
    low, high, units = ranges[name]
    finite = np.asarray(values)[np.isfinite(values)]
    if finite.size == 0 or (finite.min() >= low and finite.max() <= high):
        return None
    return (
        f"spans {finite.min():.6g} to {finite.max():.6g}, outside its physical range "
        f"{low:g} to {high:g} {units}"
    )


def not_finite(values: np.ndarray, blanks: bool = False) -> str | None:
    """``'has 3 NaN/inf values of 1440'``, or None when every value is finite.

    With ``blanks``, NaN is allowed (a field whose blanks the model reads as 0, such as
    CorrDiffCMIP6's sea-ice cover over land): only infinities are counted.
    """
    values = np.asarray(values)
    wrong = ~np.isfinite(values)
    if blanks:
        wrong &= ~np.isnan(values)
    bad = int(np.count_nonzero(wrong))
    return f"has {bad} NaN/inf value(s) of {values.size}" if bad else None


def field_problem(
    fields: Mapping[str, np.ndarray],
    ranges: Mapping[str, tuple[float, float, str]] = PHYSICAL_RANGES,
    finite: bool = True,
) -> str | None:
    """The first of ``fields`` that is not finite (with ``finite``) or out of ``ranges``.

    Returns ``'<name> <what is wrong>'`` or None.
    """
    for name in fields:
        why = (not_finite(fields[name]) if finite else None) or out_of_range(
            name, fields[name], ranges
        )
        if why:
            return f"{name} {why}"
    return None


# --------------------------------------------------------------------------- coordinates


def axis_problem(name: str, values: np.ndarray, kind: str | None = None) -> str | None:
    """What is wrong with a 1-D lat or lon axis called ``name``, or None.

    An axis must be finite, strictly monotonic (either way; longitudes may wrap across
    0/360) and unambiguous: latitudes within -90..90, and no two longitudes naming the
    same meridian (-10 and 350).
    ``kind`` ("lat" or "lon") defaults to the start of ``name``.
    """
    kind = kind or name[:3].lower()
    values = np.asarray(values)
    if values.ndim != 1:
        return f"{name} has {values.ndim} dimensions; expected a 1-D axis"
    if not np.issubdtype(values.dtype, np.number):
        return f"{name} is not numeric ({values.dtype})"
    values = values.astype("float64")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        return f"{name} has {bad.size} non-finite value(s) ({values[bad[0]]} at position {bad[0]})"
    if kind == "lon":
        wrapped = np.round(values % 360.0, 6)
        unique, counts = np.unique(wrapped, return_counts=True)
        if (counts > 1).any():
            twice = unique[counts > 1][0]
            same = values[wrapped == twice][:2]
            return f"{name} names the same meridian twice ({same[0]:g} and {same[1]:g})"
    if values.size > 1:
        # Longitudes may wrap (350, 355, 0, 5 is one axis across the meridian).
        steps = np.diff(np.unwrap(values, period=360.0) if kind == "lon" else values)
        if not (np.all(steps > 0) or np.all(steps < 0)):
            where = int(np.flatnonzero(np.sign(steps) != np.sign(steps[0]))[0]) + 1
            return (
                f"{name} is not strictly increasing or decreasing (at position {where}: "
                f"{values[where - 1]:g} then {values[where]:g})"
            )
    if kind == "lat" and (values.min() < -90 or values.max() > 90):
        return f"{name} runs outside -90..90 ({values.min():g} to {values.max():g})"
    return None


def grid_problem(lat: np.ndarray, lon: np.ndarray) -> str | None:
    """What is wrong with a 2-D lat/lon grid, or None: every point finite, lat in range."""
    for name, values in (("lat", np.asarray(lat)), ("lon", np.asarray(lon))):
        if not np.issubdtype(values.dtype, np.number):
            return f"{name} is not numeric ({values.dtype})"
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            return f"{name} has {bad} non-finite value(s)"
    lat = np.asarray(lat, dtype="float64")
    if lat.min() < -90 or lat.max() > 90:
        return f"lat runs outside -90..90 ({lat.min():g} to {lat.max():g})"
    return None


# --------------------------------------------------------------------------- labels, times


def decode_labels(values: Iterable[Any]) -> list[str]:
    """Variable labels as plain strings: bytes decoded (UTF-8), padding stripped.

    NetCDF character arrays and some Zarr writers store labels as bytes, and fixed-width
    strings come padded; ``str(b"t2m")`` is ``"b't2m'"``, which matches nothing.
    """
    labels = []
    for value in np.asarray(values).ravel().tolist():
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"the label {value!r} is not UTF-8 text") from None
        labels.append(str(value).strip())
    return labels


def normalise_times(values: Any) -> np.ndarray:
    """Times as ``datetime64[ns]`` on the whole minute, whatever form they came in.

    Accepted: numpy datetimes; ISO 8601 UTC strings or bytes; ``datetime`` objects;
    cftime dates of the calendars in :data:`LABEL_CALENDARS`, read by their labels. A
    time within :data:`TIME_TOLERANCE` of a whole minute becomes that minute.

    Raises
    ------
    ValueError
        Naming the times that cannot be read unambiguously (missing times, unparseable
        strings, a Julian calendar, a model date the Gregorian calendar lacks, plain
        numbers without units), or two that land on the same minute.
    """
    raw = np.atleast_1d(np.asarray(values))
    if np.issubdtype(raw.dtype, np.datetime64):
        _check_range(raw)
        converted = raw.astype("datetime64[ns]")
    elif np.issubdtype(raw.dtype, np.number):
        raise ValueError(
            f"time is stored as plain numbers ({raw.ravel()[0]!r}, ...) without CF units: add "
            "a units attribute such as 'hours since 1970-01-01'"
        )
    else:
        converted = np.array(
            [_one_time(value) for value in raw.ravel().tolist()], dtype="datetime64[ns]"
        )
    missing = np.isnat(converted)
    if missing.any():
        raise ValueError(f"time has {int(missing.sum())} missing value(s) (NaT)")
    rounded = converted.astype("datetime64[m]").astype("datetime64[ns]")
    up = rounded + np.timedelta64(1, "m")
    nearest = np.where(converted - rounded <= up - converted, rounded, up)
    snapped = np.where(np.abs(converted - nearest) <= TIME_TOLERANCE, nearest, converted)
    unique, counts = np.unique(snapped, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"time holds {format_time64(unique[counts > 1][0])} more than once: keep one field "
            "per time (e.g. xarray's drop_duplicates('time'))"
        )
    return snapped.reshape(raw.shape)


def _check_range(stamps: np.ndarray) -> None:
    """Refuse times a datetime64[ns] cannot hold (see :data:`TIME_RANGE`)."""
    coarse = stamps.astype("datetime64[s]")
    valid = coarse[~np.isnat(coarse)]
    outside = valid[(valid < TIME_RANGE[0]) | (valid >= TIME_RANGE[1])]
    if outside.size:
        raise ValueError(
            f"time {str(outside[0])[:16]} is outside {times_mod.FIRST_YEAR} to "
            f"{times_mod.LAST_YEAR}, the years a datetime "
            "in nanoseconds can hold: the tools cannot store it"
        )


def _one_time(value: Any) -> np.datetime64:
    """One time of an object or string array (see :func:`normalise_times`)."""
    from corrdiff_tools.errors import UsageError

    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            # An explicit offset is unambiguous in a file's labels: it is converted.
            when = times_mod.parse_time(value, allow_seconds=True, allow_offset=True)
        except UsageError as err:
            raise ValueError(f"the time label {err}") from None
        _check_range(np.array([when], dtype="datetime64[s]"))
        return np.datetime64(when, "ns")
    if isinstance(value, np.datetime64 | dt.datetime) and not hasattr(value, "calendar"):
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            offset = value.utcoffset()
            value = value.replace(tzinfo=None) - (offset or dt.timedelta())
        _check_range(np.array([value], dtype="datetime64[s]"))
        return np.datetime64(value, "ns")
    calendar = getattr(value, "calendar", None)
    if calendar is not None:
        label = (
            f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:"
            f"{value.minute:02d}"
        )
        if calendar not in LABEL_CALENDARS:
            raise ValueError(
                f"time {label} is in the {calendar} calendar, whose dates are not the "
                "Gregorian calendar's: convert it (xarray's convert_calendar('standard'))"
            )
        try:
            when = dt.datetime(
                value.year, value.month, value.day, value.hour, value.minute, value.second
            )
        except ValueError:
            raise ValueError(
                f"time {label} ({calendar} calendar) does not exist in the Gregorian calendar"
            ) from None
        _check_range(np.array([when], dtype="datetime64[s]"))
        return np.datetime64(when, "ns") + np.timedelta64(int(value.microsecond), "us")
    if value is None:
        return np.datetime64("NaT", "ns")
    raise ValueError(f"time {value!r} ({type(value).__name__}) is not a date and time")


def format_time64(value: np.datetime64) -> str:
    """A time as users type it, with seconds only where it has them: ``2024-07-24T12:00``."""
    text = str(np.asarray(value).astype("datetime64[s]"))
    return text[:-3] if text.endswith(":00") else text
