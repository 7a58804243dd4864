from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corrdiff_tools import times
from corrdiff_tools.errors import UsageError

NOON = datetime(2024, 7, 24, 12)


@pytest.mark.parametrize(
    "text",
    [
        "2024-07-24T12:00",
        "2024-07-24T12",
        "2024-07-24 12:00Z",
        "2024-07-24T12:00:00",
        "2024-07-24T12:00:00+00:00",
        "2024-07-24t12:00z",
        " 2024-07-24T12:00 ",
    ],
)
def test_parse_time_accepts_iso_utc_forms(text: str) -> None:
    assert times.parse_time(text) == NOON


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("2024-07-24", "not an ISO 8601 UTC time"),
        ("24/07/2024 12:00", "not an ISO 8601 UTC time"),
        ("2024-07-24T12:00+02:00", "non-UTC offset"),
        ("2024-02-30T12:00", "not a valid date"),
        ("2024-07-24T25:00", "not a valid date"),
        ("", "not an ISO 8601 UTC time"),
    ],
)
def test_parse_time_rejects_with_the_value_and_the_fix(text: str, fragment: str) -> None:
    with pytest.raises(UsageError) as err:
        times.parse_time(text)
    assert fragment in str(err.value)
    assert repr(text) in str(err.value)


def test_range_is_inclusive_every_six_hours_by_default() -> None:
    got = times.parse_time_spec("2024-07-24T00/2024-07-25T00")
    assert got == [datetime(2024, 7, 24, 0) + timedelta(hours=6 * i) for i in range(5)]


def test_range_with_step() -> None:
    got = times.parse_time_spec("2024-07-24T00/2024-07-25T00/12h")
    assert got == [datetime(2024, 7, 24, 0), datetime(2024, 7, 24, 12), datetime(2024, 7, 25, 0)]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("2024-07-25T00/2024-07-24T00", "ends before it starts"),
        ("2024-07-24T00/2024-07-25T00/0h", "not a range step"),
        ("2024-07-24T00/2024-07-25T00/6", "not a range step"),
        ("2024-07-24T00/2024-07-25T00/6h/1", "not a time range"),
        # A European date quotes what was typed, then the piece that failed.
        ("24/07/2024", r"^'24/07/2024' is not a time range \(START/END\[/STEP\]\): '24' is not"),
        ("2024-07-24T00/tomorrow", r"^'2024-07-24T00/tomorrow' is not a time range .*'tomorrow'"),
    ],
)
def test_bad_ranges(text: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        times.parse_time_spec(text)


def test_parse_times_sorts_and_deduplicates() -> None:
    got = times.parse_times(["2024-07-24T12", "2024-07-24T00/2024-07-24T12"])
    assert got == [datetime(2024, 7, 24, h) for h in (0, 6, 12)]


@pytest.mark.parametrize(
    ("time", "fragment"),
    [
        (datetime(2024, 7, 24, 13), "not a GFS analysis time: use 00, 06, 12 or 18 UTC"),
        (datetime(2024, 7, 24, 12, 30), "not a GFS analysis time"),
        (datetime(2020, 12, 31, 18), "before the GFS archive starts"),
        (datetime(2099, 1, 1, 0), "in the future"),
    ],
)
def test_gfs_time_rules(time: datetime, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        times.check_gfs_time(time, now=datetime(2026, 11, 24))


def test_gfs_time_accepts_synoptic_hours() -> None:
    for hour in (0, 6, 12, 18):
        times.check_gfs_time(datetime(2024, 7, 24, hour), now=datetime(2026, 11, 24))


def test_era5_rules() -> None:
    times.check_era5_time(datetime(1979, 1, 1, 13), now=datetime(2026, 11, 24))
    with pytest.raises(UsageError, match="before ERA5 starts"):
        times.check_era5_time(datetime(1939, 12, 31, 23))
    with pytest.raises(UsageError, match="not a whole hour"):
        times.check_era5_time(datetime(2000, 1, 1, 0, 30))


def test_lead_times() -> None:
    assert times.parse_lead_times(["12", "0", "6h", "123", "384", "12"]) == [0, 6, 12, 123, 384]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("-6", "without a sign"),
        ("1.5", "not a whole number of hours"),
        ("385", "beyond the GFS forecast range"),
        ("121", "3-hourly"),
        ("abc", "not a whole number of hours"),
    ],
)
def test_bad_lead_times(text: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        times.parse_lead_times([text])


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)))
def test_formatted_time_round_trips(moment: datetime) -> None:
    moment = moment.replace(second=0, microsecond=0)
    assert times.parse_time(times.format_time(moment)) == moment


@given(st.text(max_size=40))
def test_any_text_parses_or_gives_a_usage_error(text: str) -> None:
    try:
        parsed = times.parse_time_spec(text)
    except UsageError as err:
        assert "\n" not in str(err)
    else:
        assert parsed and all(isinstance(t, datetime) for t in parsed)


@given(st.integers(min_value=0, max_value=400))
def test_lead_time_rule_matches_the_gfs_schedule(hours: int) -> None:
    exists = hours <= 120 or (hours <= 384 and hours % 3 == 0)
    try:
        assert times.parse_lead_times([str(hours)]) == [hours]
        assert exists
    except UsageError:
        assert not exists
