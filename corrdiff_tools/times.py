"""Parse and validate the times, ranges and lead times a user asks for.

Everything here is pure Python (no torch, no earth2studio) so that bad input is rejected
before anything heavy is imported, fetched or loaded. Every failure is a
:class:`UsageError` whose message names the rule, the value received and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from corrdiff_tools.errors import UsageError

#: GFS analyses exist at these UTC hours only.
GFS_HOURS = (0, 6, 12, 18)
#: First analysis time in the public GFS archive that earth2studio reads.
GFS_START = datetime(2021, 1, 1)
#: ERA5 (ARCO) starts here.
ERA5_START = datetime(1940, 1, 1)
#: GFS forecast lead times: hourly to 120 h, then every 3 h to 384 h.
GFS_MAX_LEAD = 384
GFS_HOURLY_LEAD_LIMIT = 120
#: Most times one range may expand to (ten years of hourly times), checked before expanding.
MAX_TIMES = 87_660

#: The years a datetime64[ns] holds whole (see corrdiff_tools.checks.TIME_RANGE).
FIRST_YEAR, LAST_YEAR = 1678, 2261

#: Default step of a ``START/END`` range.
DEFAULT_RANGE_STEP = timedelta(hours=6)

_TIME_RE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<hour>\d{2})(?::(?P<minute>\d{2})"
    r"(?::(?P<second>\d{2})(?P<fraction>\.\d{1,9})?)?)?"
    r"(?P<zone>Z|[+-]\d{2}:?\d{2})?$",
    re.IGNORECASE,
)
_STEP_RE = re.compile(r"^(?P<hours>\d+)h$", re.IGNORECASE)


def parse_time(text: str, allow_seconds: bool = False, allow_offset: bool = False) -> datetime:
    """Parse one ISO 8601 UTC time.

    Accepted forms: ``2024-07-24T12:00``, ``2024-07-24T12``, ``2024-07-24 12:00Z``,
    ``2024-07-24T12:00:00+00:00``. Offsets other than UTC are refused rather than
    converted, so a typo in the zone cannot silently shift the run. Seconds other than
    ``:00`` are refused too (every source is hourly at most, and a time printed to the
    minute would hide them), unless ``allow_seconds`` (time labels read from a file).

    Parameters
    ----------
    text : str
        The time as typed.
    allow_seconds : bool
        Keep seconds (and fractions of them) instead of refusing them.
    allow_offset : bool
        Convert a time with a UTC offset to UTC instead of refusing it (time labels read
        from a file, where an offset was written on purpose).

    Returns
    -------
    datetime
        A naive datetime in UTC.

    Raises
    ------
    UsageError
        If the text is not such a time.
    """
    stripped = text.strip()
    match = _TIME_RE.match(stripped)
    if match is None:
        raise UsageError(
            f"{text!r} is not an ISO 8601 UTC time: write it like 2024-07-24T12:00 or 2024-07-24T12"
        )
    zone = match["zone"]
    shift = timedelta()
    if zone and zone.upper() != "Z" and zone.replace(":", "")[1:] != "0000":
        if not allow_offset:
            raise UsageError(
                f"{text!r} has a non-UTC offset ({zone}): give the time in UTC, e.g. "
                "2024-07-24T12:00Z"
            )
        digits = zone.replace(":", "")
        shift = (1 if digits[0] == "+" else -1) * timedelta(
            hours=int(digits[1:3]), minutes=int(digits[3:5])
        )
    try:
        parsed = datetime.strptime(
            f"{match['date']}T{match['hour']}:{match['minute'] or '00'}:{match['second'] or '00'}",
            "%Y-%m-%dT%H:%M:%S",
        )
    except ValueError as err:
        raise UsageError(f"{text!r} is not a valid date and time ({err})") from None
    fraction = float(match["fraction"] or 0)
    if not allow_seconds and (parsed.second or fraction):
        raise UsageError(
            f"{text!r} has seconds: times are whole minutes (every source is hourly at "
            f"most), e.g. {parsed:%Y-%m-%dT%H:%M}"
        )
    if not FIRST_YEAR <= parsed.year <= LAST_YEAR:
        raise UsageError(
            f"{text!r} is outside {FIRST_YEAR} to {LAST_YEAR}, the years a datetime in "
            "nanoseconds (as the stores hold times) can represent"
        )
    return parsed + timedelta(seconds=fraction) - shift


def parse_step(text: str) -> timedelta:
    """Parse a range step such as ``6h`` or ``12h`` (whole hours, at least 1)."""
    match = _STEP_RE.match(text.strip())
    if match is None or int(match["hours"]) < 1:
        raise UsageError(f"{text!r} is not a range step: use whole hours, e.g. 6h or 12h")
    return timedelta(hours=int(match["hours"]))


def parse_time_spec(text: str) -> list[datetime]:
    """Parse ``TIME``, ``START/END`` (every 6 h, inclusive) or ``START/END/STEP``.

    Parameters
    ----------
    text : str
        One positional TIME argument.

    Returns
    -------
    list of datetime
        The times it denotes, in order.
    """
    parts = text.split("/")
    if len(parts) == 1:
        return [parse_time(parts[0])]
    if len(parts) not in (2, 3):
        raise UsageError(
            f"{text!r} is not a time range: use START/END or START/END/STEP, "
            "e.g. 2024-07-24T00/2024-07-25T00/6h"
        )
    try:
        start, end = parse_time(parts[0]), parse_time(parts[1])
    except UsageError as err:  # quote what was typed, not just the piece that failed
        raise UsageError(f"{text!r} is not a time range (START/END[/STEP]): {err}") from None
    step = parse_step(parts[2]) if len(parts) == 3 else DEFAULT_RANGE_STEP
    if end < start:
        raise UsageError(f"range {text!r} ends before it starts: put the earlier time first")
    times = []
    current = start
    count = (end - start) // step + 1
    if count > MAX_TIMES:
        raise UsageError(
            f"range {text!r} holds {count:,} times, more than {MAX_TIMES:,}: split it into "
            "several runs (each can --resume), or use a longer step"
        )
    while current <= end:
        times.append(current)
        current += step
    return times


def parse_times(texts: Sequence[str]) -> list[datetime]:
    """Parse every positional TIME argument; return sorted, de-duplicated times."""
    if not texts:
        raise UsageError("no time given: pass at least one TIME, e.g. 2024-07-24T12:00")
    times: set[datetime] = set()
    for text in texts:
        times.update(parse_time_spec(text))
    return sorted(times)


def parse_hours(text: str) -> int | None:
    """Whole hours as typed (``"6"``, ``"6h"``), or None if it is not that."""
    raw = text.strip()
    raw = raw[:-1] if raw.lower().endswith("h") else raw
    return int(raw) if raw.isascii() and raw.isdigit() else None


def parse_lead_times(values: Iterable[str]) -> list[int]:
    """Parse GFS forecast lead times in whole hours and check that GFS has them.

    Parameters
    ----------
    values : iterable of str
        Lead times as typed, e.g. ``["0", "6", "123"]`` (a trailing ``h`` is allowed).

    Returns
    -------
    list of int
        Sorted, unique lead times in hours.
    """
    leads: set[int] = set()
    for text in values:
        hours = parse_hours(text)
        if hours is None and text.strip().startswith(("-", "+")):
            raise UsageError(
                f"lead time {text!r}: give hours after the initialisation time without a "
                f"sign, 0 to {GFS_MAX_LEAD} (e.g. --lead-time 0 6 12)"
            )
        if hours is None:
            raise UsageError(
                f"lead time {text!r} is not a whole number of hours: use e.g. --lead-time 0 6 12"
            )
        if hours > GFS_MAX_LEAD:
            raise UsageError(
                f"lead time {hours} h is beyond the GFS forecast range: use 0 to {GFS_MAX_LEAD} h"
            )
        if hours > GFS_HOURLY_LEAD_LIMIT and hours % 3:
            raise UsageError(
                f"lead time {hours} h does not exist in GFS: past {GFS_HOURLY_LEAD_LIMIT} h "
                f"the forecast is 3-hourly (e.g. {hours - hours % 3} or {hours - hours % 3 + 3})"
            )
        leads.add(hours)
    return sorted(leads)


def parse_window_leads(values: Iterable[str], window: Sequence[int], model: str) -> list[int]:
    """Parse lead times in whole hours, signed, each one of ``window`` (a model's range).

    For a model that writes hours around its initialisation time (CorrDiffCMIP6: -12 to
    +11), named ``model`` in the errors. Returns them sorted, each once.
    """
    leads: set[int] = set()
    for text in values:
        raw = text.strip()
        raw = raw[:-1] if raw.lower().endswith("h") else raw
        if not re.fullmatch(r"[+-]?[0-9]+", raw):
            raise UsageError(
                f"lead time {text!r} is not a whole number of hours: use e.g. --lead-time "
                f"{window[0]} 0 {window[-1]}"
            )
        hours = int(raw)
        if hours not in window:
            raise UsageError(
                f"lead time {hours} h: {model} writes {window[0]} to {window[-1]:+d} h around "
                f"its initialisation time, hourly; give lead times in that range"
            )
        leads.add(hours)
    return sorted(leads)


def check_gfs_time(time: datetime, now: datetime | None = None) -> None:
    """Check that ``time`` is a GFS analysis/initialisation time that can exist.

    Raises
    ------
    UsageError
        If the hour is not 00/06/12/18 UTC, the time is before the archive starts, or it
        is in the future.
    """
    label = format_time(time)
    if time.minute or time.second or time.hour not in GFS_HOURS:
        raise UsageError(f"{label} is not a GFS analysis time: use 00, 06, 12 or 18 UTC")
    if time < GFS_START:
        raise UsageError(
            f"{label} is before the GFS archive starts ({GFS_START:%Y-%m-%d}): "
            "use a later time or --source era5"
        )
    check_not_future(time, now)


def check_era5_time(time: datetime, now: datetime | None = None) -> None:
    """Check that ``time`` is a whole hour inside the ERA5 record."""
    label = format_time(time)
    if time.minute or time.second:
        raise UsageError(f"{label} is not a whole hour: ERA5 is hourly, e.g. {time:%Y-%m-%dT%H}:00")
    if time < ERA5_START:
        raise UsageError(f"{label} is before ERA5 starts ({ERA5_START:%Y-%m-%d}): use a later time")
    check_not_future(time, now)


def check_not_future(time: datetime, now: datetime | None = None) -> None:
    """Refuse a time that has not happened yet."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    if time > now:
        raise UsageError(
            f"{format_time(time)} is in the future (now is {now:%Y-%m-%dT%H:%M} UTC): "
            "for forecasts use --source gfs-forecast with --lead-time"
        )


def format_time(time: datetime) -> str:
    """Format a time the way users type it: ``2024-07-24T12:00``."""
    return f"{time:%Y-%m-%dT%H:%M}"


def title_time(time: datetime, lead_hours: int | None = None) -> str:
    """Format a valid time for figure titles, the one way every figure writes it.

    ``valid 2024-07-24 12:00 UTC``, with ``(+6 h)`` for a forecast's lead time (``(-12 h)``
    for one of CorrDiffCMIP6's hours before its initialisation time).
    """
    lead = f" ({lead_hours:+d} h)" if lead_hours is not None else ""
    return f"valid {time:%Y-%m-%d %H:%M} UTC{lead}"


def time_label(time: datetime) -> str:
    """Format a time for file names: ``2024-07-24T12``."""
    return f"{time:%Y-%m-%dT%H}"
