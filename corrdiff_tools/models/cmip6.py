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


def declare(folder: Path, shown: str) -> Declaration:
    """A CorrDiffCMIP6 package's declaration from its files, without loading it.

    The generic layout's (:func:`~corrdiff_tools.models.declaration.from_package`), with
    the family's input and output lead times and its initialisation hour.
    """
    return family(from_package(folder, shown))


def family(declared: Declaration) -> Declaration:
    """A generic declaration made CorrDiffCMIP6's: its name, lead times and hour."""
    return replace(
        declared,
        name=NAME,
        input_leads=INPUT_LEADS,
        output_leads=OUTPUT_LEADS,
        init_hour=INIT_HOUR,
    )


def check_times(times: Sequence[datetime]) -> None:
    """Refuse a time that is not an initialisation time (:data:`INIT_HOUR` UTC)."""
    for time in times:
        if (time.hour, time.minute) != (INIT_HOUR, 0):
            raise UsageError(
                f"{time:%Y-%m-%dT%H:%M}: --model cmip6 starts from daily fields valid at "
                f"{INIT_HOUR:02d}:00 UTC; give {time:%Y-%m-%d}T{INIT_HOUR:02d}:00, and the hours "
                f"around it with --lead-time ({OUTPUT_LEADS[0]} to {OUTPUT_LEADS[-1]:+d})"
            )
