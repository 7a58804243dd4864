"""CorrDiffCMIP6, as the run tool declares it: what it reads and writes, and when.

earth2studio 0.19's ``CorrDiffCMIP6`` (weights on Hugging Face,
``nvidia/corrdiff-cmip6-era5``) downscales daily CMIP6 climate-model fields to hourly
ERA5-like fields. Its package is the generic layout
(:mod:`corrdiff_tools.models.declaration`), read with three differences the run tool
must know before anything is loaded (this module imports no torch):

* each input variable is read at three times, :data:`INPUT_LEADS` hours around the
  initialisation time, which is at :data:`INIT_HOUR` UTC (the daily fields' time);
* it writes the hours :data:`OUTPUT_LEADS` around it (its time features are computed at
  the valid time, so a day is its 24 lead times of one initialisation, -12 to +11 h);
* its sampler defaults, where ``metadata.json`` is silent, are :data:`SIGMAS`.

The nets, the conditioning and our noise are :mod:`corrdiff_tools.models.cmip6_net`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from corrdiff_tools.errors import UsageError
from corrdiff_tools.models.declaration import Declaration, from_package

#: The published package earth2studio's ``CorrDiffCMIP6.load_default_package`` names.
DEFAULT_PACKAGE = "hf://nvidia/corrdiff-cmip6-era5@f756fad5b85efec64df4868aead14dda698b8aea"
#: Input lead times, hours from the initialisation time (earth2studio's ``input_coords``).
INPUT_LEADS = (-24, 0, 24)
#: Output lead times the nets were trained for, hours (earth2studio's bounds).
OUTPUT_LEADS = tuple(range(-12, 12))
#: Initialisation hour the daily inputs are valid at, UTC.
INIT_HOUR = 12
#: sigma_min, sigma_max where metadata.json is silent (``CorrDiffCMIP6.load_model``'s).
SIGMAS = (1.0, 400.0)
#: The store attribute's name for this family (``declaration.STORED_NAMES``).
NAME = "cmip6"
#: Inputs blank (NaN) where there is none: sea-ice cover over land, snow cover over sea.
#: Its preprocessing reads their blanks as no cover (``nan_to_num`` before smoothing).
BLANK_INPUTS = ("siconc", "snc")
#: ``--precision auto`` on a GPU: earth2studio runs both nets under bfloat16 autocast there.
GPU_PRECISION = "bf16"


#: What a CorrDiffCMIP6 package has beyond the generic layout: its time features'
#: statistics, and invariants (the last is the slot its training wrote the hour into).
TIME_FEATURES = ("sza", "hod")


def declare(folder: Path, shown: str) -> Declaration:
    """A CorrDiffCMIP6 package's declaration from its files, without loading it.

    The generic layout's (:func:`~corrdiff_tools.models.declaration.from_package`), with
    the family's input and output lead times and its initialisation hour.

    Raises
    ------
    UsageError
        For a generic package given as CorrDiffCMIP6's (no time features' statistics, or
        no invariants): earth2studio's loader would fail on a missing key or file.
    """
    missing = [] if is_cmip6_package(folder) else [f"{'/'.join(TIME_FEATURES)} statistics"]
    if not (folder / "invariants.nc").is_file():
        missing.append("invariants.nc")
    if missing:
        raise UsageError(
            f"{shown} is not a CorrDiffCMIP6 package: it has no {' and no '.join(missing)} "
            "(a generic CorrDiff package runs with --model FOLDER)"
        )
    return family(from_package(folder, shown))


def is_cmip6_package(folder: Path) -> bool:
    """Whether ``stats.json`` has CorrDiffCMIP6's time features among its inputs."""
    import json

    try:
        inputs = json.loads((folder / "stats.json").read_text())["input"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(inputs, dict) and all(name in inputs for name in TIME_FEATURES)


def family(declared: Declaration) -> Declaration:
    """A generic declaration made CorrDiffCMIP6's: its name, lead times and hour."""
    return replace(
        declared,
        name=NAME,
        input_leads=INPUT_LEADS,
        output_leads=OUTPUT_LEADS,
        init_hour=INIT_HOUR,
        blank_inputs=tuple(name for name in BLANK_INPUTS if name in declared.inputs),
        gpu_precision=GPU_PRECISION,
    )


def check_times(times: Sequence[datetime]) -> None:
    """Refuse a time that is not an initialisation time (:data:`INIT_HOUR` UTC)."""
    for time in times:
        if (time.hour, time.minute) != (INIT_HOUR, 0):
            raise UsageError(
                f"{time:%Y-%m-%dT%H:%M}: --model cmip6 starts from daily fields valid at "
                f"{INIT_HOUR:02d}:00 UTC; give {time:%Y-%m-%d}T{INIT_HOUR:02d}:00 (several days: "
                f"START/END/24h), and the hours around it with --lead-time "
                f"({OUTPUT_LEADS[0]} to {OUTPUT_LEADS[-1]:+d})"
            )


def check_archive_days(times: Sequence[datetime], source: str) -> None:
    """Refuse times whose days around them the CMIP6 archive may get wrong.

    CMIP6 models keep calendars of their own: a ``noleap`` model has no 29 February, a
    ``360_day`` one has a 29 and 30 February. earth2studio's archive client matches days
    by their dates, so "the day before 1 March" is read as 28 February, which in a
    360-day model is three days earlier: silently the wrong day. Around the end of
    February (28 February to 1 March) the days are refused; a file of the days meant
    (``--source FILE``) says which they are.
    """
    for time in times:
        # The day before or after is another day in some calendar: 28 Feb to 1 Mar.
        if (time.month, time.day) in ((2, 28), (2, 29), (3, 1)):
            raise UsageError(
                f"{time:%Y-%m-%dT%H:%M} with --source {source}: the days around it cross the "
                "end of February, which CMIP6 models count differently (noleap, 360_day "
                "calendars) and the archive matches by date; pass a file of the days you "
                "mean (--source FILE), or another time"
            )
