"""What the data checks accept and refuse (corrdiff_tools.checks), variant by variant."""

from __future__ import annotations

import datetime as dt

import cftime
import numpy as np
import pytest

from corrdiff_tools import checks

NOON = np.datetime64("2024-07-24T12:00", "ns")


# ------------------------------------------------------------------ axes and grids


@pytest.mark.parametrize(
    ("name", "values", "fragment"),
    [
        ("lat", [30.0, np.nan, 20.0], "lat has 1 non-finite value(s) (nan at position 1)"),
        ("lon", [110.0, 120.0, np.inf], "lon has 1 non-finite value(s) (inf at position 2)"),
        ("lat", [20.0, 21.0, 21.0, 22.0], "not strictly increasing or decreasing (at position 2"),
        ("lat", [20.0, 22.0, 21.0], "at position 2: 22 then 21"),
        ("lon", [110.0, 120.0, 115.0], "lon is not strictly increasing or decreasing"),
        ("lat", [80.0, 90.0, 100.0], "lat runs outside -90..90 (80 to 100)"),
        ("lon", [-10.0, 100.0, 350.0], "lon names the same meridian twice (-10 and 350)"),
        ("lon", np.array(["a", "b"]), "lon is not numeric"),
        ("latitude", [[1.0, 2.0]], "latitude has 2 dimensions"),
    ],
)
def test_an_axis_must_be_finite_monotonic_and_unambiguous(
    name: str, values: object, fragment: str
) -> None:
    why = checks.axis_problem(name, np.asarray(values))
    assert why is not None and fragment in why


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("lat", [19.0, 19.25, 19.5]),
        ("lat", [28.0, 27.75]),
        ("lon", [-179.75, 0.0, 179.75]),
        ("lon", [359.75, 0.0]),
        ("lon", [350.0, 355.0, 0.0, 5.0]),  # across the meridian
        ("lat", [5.0]),
    ],
)
def test_good_axes_pass(name: str, values: list[float]) -> None:
    assert checks.axis_problem(name, np.asarray(values)) is None


def test_the_kind_of_an_axis_can_be_named() -> None:
    assert checks.axis_problem("XLAT", np.array([80.0, 95.0]), "lat") is not None
    assert checks.axis_problem("XLAT", np.array([80.0, 95.0])) is None  # no kind: no lat rule


def test_a_grid_needs_every_point_finite() -> None:
    lat, lon = np.full((3, 3), 23.0), np.full((3, 3), 121.0)
    assert checks.grid_problem(lat, lon) is None
    lon[1, 1] = np.nan
    assert checks.grid_problem(lat, lon) == "lon has 1 non-finite value(s)"
    assert "outside -90..90" in (checks.grid_problem(lat + 100, np.zeros((3, 3))) or "")


# ------------------------------------------------------------------ physical ranges


def test_fields_outside_their_range_are_named_with_the_range() -> None:
    assert checks.out_of_range("t2m", np.array([290.0, 300.0])) is None
    why = checks.out_of_range("t2m", np.array([25.0, np.nan, 30.0]))
    assert why == "spans 25 to 30, outside its physical range 180 to 340 K"
    assert checks.out_of_range("refc", np.array([0.0, 1e5])) == (
        "spans 0 to 100000, outside its physical range -100 to 100 dBZ"
    )
    assert checks.out_of_range("unknown", np.array([1e30])) is None
    assert checks.out_of_range("t2m", np.array([np.nan])) is None  # nothing finite to judge


def test_computed_fields_are_judged_against_wider_limits() -> None:
    hot = {"t2m": np.array([345.0]), "mrr": np.array([120.0])}
    assert checks.field_problem(hot) is not None  # not a plausible input
    assert checks.field_problem(hot, checks.OUTPUT_LIMITS) is None  # a possible output
    assert checks.field_problem({"t2m": np.array([1e15])}, checks.OUTPUT_LIMITS) == (
        "t2m spans 1e+15 to 1e+15, outside its physical range 100 to 450 K"
    )
    assert checks.field_problem({"u10m": np.array([1.0, np.nan])}, checks.OUTPUT_LIMITS) == (
        "u10m has 1 NaN/inf value(s) of 2"
    )


# ------------------------------------------------------------------ labels and times


def test_labels_come_back_as_plain_strings() -> None:
    assert checks.decode_labels(np.array([b"t2m", b"u10m "])) == ["t2m", "u10m"]
    assert checks.decode_labels(np.array(["t2m  ", "z500"], dtype=object)) == ["t2m", "z500"]
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        checks.decode_labels([b"\xff\xfe"])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([NOON]), NOON),
        (np.array(["2024-07-24T12:00"]), NOON),
        (np.array([b"2024-07-24 12:00Z"]), NOON),
        (np.array([dt.datetime(2024, 7, 24, 12)], dtype=object), NOON),
        (
            np.array([dt.datetime(2024, 7, 24, 14, tzinfo=dt.timezone(dt.timedelta(hours=2)))]),
            NOON,
        ),
        (np.array([NOON + np.timedelta64(3, "s")]), NOON),  # float seconds a little off
        (np.array([NOON - np.timedelta64(2500, "ms")]), NOON),
        (np.array([cftime.DatetimeNoLeap(2024, 7, 24, 12)], dtype=object), NOON),
        (np.array([cftime.Datetime360Day(2024, 7, 24, 12)], dtype=object), NOON),
        (np.array([cftime.DatetimeGregorian(2024, 7, 24, 12)], dtype=object), NOON),
        (np.array(["2024-07-24T20:00+08:00"]), NOON),  # an explicit offset: converted
    ],
)
def test_times_are_normalised_to_datetimes_on_the_minute(values: np.ndarray, expected) -> None:
    got = checks.normalise_times(values)
    assert got.dtype == np.dtype("datetime64[ns]")
    assert got[0] == expected


def test_a_time_far_off_the_minute_is_kept_as_it_is() -> None:
    off = NOON + np.timedelta64(31, "s")
    assert checks.normalise_times(np.array([off]))[0] == off
    assert checks.format_time64(off) == "2024-07-24T12:00:31"
    assert checks.format_time64(NOON) == "2024-07-24T12:00"


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        (np.array([NOON, np.datetime64("NaT")]), "time has 1 missing value(s) (NaT)"),
        (np.array(["yesterday"]), "the time label 'yesterday' is not an ISO 8601 UTC time"),
        (np.array([12.5]), "time is stored as plain numbers"),
        (
            np.array([cftime.DatetimeJulian(2024, 7, 24, 12)], dtype=object),
            "in the julian calendar, whose dates are not the Gregorian calendar's",
        ),
        (
            np.array([cftime.Datetime360Day(2023, 2, 30, 0)], dtype=object),
            "time 2023-02-30T00:00 (360_day calendar) does not exist in the Gregorian calendar",
        ),
        (
            np.array([NOON, NOON + np.timedelta64(4, "s")]),
            "time holds 2024-07-24T12:00 more than once",
        ),
        (np.array([object()], dtype=object), "is not a date and time"),
        # numpy would wrap these around without a word (2300 becomes 1715).
        (np.array(["2300-01-01"], dtype="datetime64[s]"), "outside 1678 to 2261"),
        (np.array([cftime.DatetimeGregorian(2300, 1, 1)], dtype=object), "outside 1678 to"),
        (np.array(["1500-01-01T00:00"]), "outside 1678 to 2261"),
    ],
)
def test_times_that_cannot_be_read_unambiguously_are_refused(
    values: np.ndarray, fragment: str
) -> None:
    with pytest.raises(ValueError) as caught:
        checks.normalise_times(values)
    assert fragment in str(caught.value)


def test_the_churn_cap_the_message_prints_is_itself_accepted() -> None:
    from corrdiff_tools import sampling

    with pytest.raises(ValueError, match=r"at most 7\.455 for 18 steps"):
        sampling.resolve("paper", None, {"s_churn": 7.456})
    assert sampling.resolve("paper", None, {"s_churn": 7.455}).s_churn == 7.455
