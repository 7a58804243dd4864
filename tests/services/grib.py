"""GFS-like GRIB2 files and NOAA ``.idx`` indexes, encoded by hand.

The pygrib wheel ships eccodes' definitions but no GRIB samples, so it cannot write a
message from scratch. This module writes GRIB edition 2 directly: one message per field
on GFS's 0.25 degree global grid (721 x 1440, latitude 90 to -90, longitude 0 to 359.75,
template 3.0), a plain analysis/forecast product (template 4.0) and 16-bit simple packing
(template 5.0, no bitmap). That is what earth2studio's ``GFS`` reads: it fetches the
``.idx``, finds each variable by its ``NAME::level`` substring, reads the byte range and
decodes it with pygrib.

Fields come from :func:`corrdiff_tools.synthetic.synthetic_inputs` (the values the other
tests use) inside the area it covers around the model's input box, and a constant
plausible value elsewhere.

Sources: WMO Manual on Codes, FM 92 GRIB edition 2 (sections 0-8, templates 3.0, 4.0,
5.0, 7.0); NCEP's GRIB2 tables for the local REFC parameter; the ``.idx`` lines are the
``wgrib2 -s`` inventory NOAA publishes beside each file.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

#: GFS's global 0.25 degree grid, as earth2studio's ``GFS`` labels it.
GFS_LAT = np.linspace(90.0, -90.0, 721)
GFS_LON = np.linspace(0.0, 359.75, 1440)
#: Bits per packed value (simple packing).
BITS = 16
#: What earth2studio's GFS lexicon multiplies geopotential height (gpm) by.
GRAVITY = 9.81


@dataclass(frozen=True)
class Field:
    """How one variable is written in a GFS file.

    Parameters
    ----------
    name : str
        The GRIB2 short name in the index (``TMP``).
    level : str
        The level as the index writes it (``500 mb``).
    category, number : int
        GRIB2 parameter category and number (discipline 0, meteorological).
    surface, surface_value : int
        Type of the first fixed surface (code table 4.5) and its value.
    scale : float
        earth2studio's value = GRIB value * ``scale`` (9.81 for geopotential height).
    """

    name: str
    level: str
    category: int
    number: int
    surface: int
    surface_value: int = 0
    scale: float = 1.0


def _isobaric(name: str, category: int, number: int, hpa: int, scale: float = 1.0) -> Field:
    return Field(name, f"{hpa} mb", category, number, 100, hpa * 100, scale)


#: earth2studio's name -> how GFS writes it (see earth2studio/lexicon/gfs.py).
FIELDS: dict[str, Field] = {
    "tcwv": Field("PWAT", "entire atmosphere (considered as a single layer)", 1, 3, 200),
    "z500": _isobaric("HGT", 3, 5, 500, GRAVITY),
    "t500": _isobaric("TMP", 0, 0, 500),
    "u500": _isobaric("UGRD", 2, 2, 500),
    "v500": _isobaric("VGRD", 2, 3, 500),
    "z850": _isobaric("HGT", 3, 5, 850, GRAVITY),
    "t850": _isobaric("TMP", 0, 0, 850),
    "u850": _isobaric("UGRD", 2, 2, 850),
    "v850": _isobaric("VGRD", 2, 3, 850),
    "t2m": Field("TMP", "2 m above ground", 0, 0, 103, 2),
    "u10m": Field("UGRD", "10 m above ground", 2, 2, 103, 10),
    "v10m": Field("VGRD", "10 m above ground", 2, 3, 103, 10),
    "refc": Field("REFC", "entire atmosphere", 16, 196, 10),
}
#: The last message of a file: earth2studio drops the index's last line (it only gives
#: the end of the message before it), as it drops GFS's own last record.
SENTINEL = Field("VWSH", "PV=-2e-06 (Km^2/kg/s) surface", 2, 192, 109, 0)
#: Where GFS writes each variable in a file: the order of a real pgrb2.0p25 inventory.
ORDER = (
    "refc", "z500", "t500", "u500", "v500", "z850", "t850", "u850", "v850",
    "t2m", "u10m", "v10m", "tcwv",
)  # fmt: skip


@dataclass(frozen=True)
class Packed:
    """One encoded GRIB2 message and the values a decoder gets back from it."""

    message: bytes
    #: ``R + X * 2**E`` in float64: what eccodes returns, bit for bit.
    decoded: np.ndarray
    #: Largest difference between a value and its decoded value (half a packing step).
    precision: float


def _signed(value: int, octets: int) -> bytes:
    """GRIB's sign-and-magnitude integer (the top bit is the sign)."""
    magnitude = abs(value)
    if magnitude >= 1 << (8 * octets - 1):
        raise ValueError(f"{value} does not fit in {octets} signed octets")
    return (magnitude | ((1 << (8 * octets - 1)) if value < 0 else 0)).to_bytes(octets, "big")


def _section(number: int, body: bytes) -> bytes:
    return struct.pack(">IB", 5 + len(body), number) + body


def pack(values: np.ndarray) -> tuple[bytes, np.ndarray, float, int, int, float]:
    """Simple packing of ``values`` with :data:`BITS` bits.

    Returns
    -------
    tuple
        The packed bits, the decoded values, the reference value R (a float32), the
        binary scale E, the bit count and the precision (half the step ``2**E``).
    """
    flat = np.asarray(values, dtype="float64").ravel()
    if not np.isfinite(flat).all():
        raise ValueError("simple packing without a bitmap needs finite values")
    reference = float(np.float32(flat.min()))
    if reference > flat.min():  # float32 rounded up: step down so every X is >= 0
        reference = float(np.nextafter(np.float32(reference), np.float32(-np.inf)))
    spread = float(flat.max()) - reference
    if spread == 0.0:  # a constant field: no bits at all, every value is R
        return b"", np.full(flat.shape, reference), reference, 0, 0, float(flat[0]) - reference
    exponent = int(np.ceil(np.log2(spread / (2**BITS - 1))))
    step = 2.0**exponent
    while np.rint(spread / step) > 2**BITS - 1:
        exponent += 1
        step = 2.0**exponent
    counts = np.rint((flat - reference) / step).astype(">u2")
    decoded = reference + counts.astype("float64") * step
    return counts.tobytes(), decoded, reference, exponent, BITS, step / 2


def encode_message(values: np.ndarray, field: Field, time: datetime, lead_hours: int = 0) -> Packed:
    """One GRIB2 message holding ``values`` (721 x 1440, north to south, from 0 E).

    Parameters
    ----------
    values : ndarray
        The field in GRIB units (geopotential height in gpm, not geopotential).
    field : Field
        Parameter and level.
    time : datetime
        Reference (analysis) time.
    lead_hours : int
        Forecast hour.
    """
    if values.shape != (GFS_LAT.size, GFS_LON.size):
        raise ValueError(f"expected a {GFS_LAT.size} x {GFS_LON.size} field, got {values.shape}")
    bits, decoded, reference, exponent, nbits, precision = pack(values)
    points = values.size
    identification = struct.pack(
        ">HHBBBHBBBBBBB",
        7,  # centre: US National Weather Service (NCEP)
        0,  # sub-centre
        2,  # master tables version
        1,  # local tables version
        1,  # significance of the reference time: start of forecast
        time.year,
        time.month,
        time.day,
        time.hour,
        time.minute,
        time.second,
        0,  # production status: operational
        1,  # type of data: forecast products
    )
    grid = (
        struct.pack(">BIBBH", 0, points, 0, 0, 0)  # source, points, no list, template 3.0
        + struct.pack(">BBIBIBI", 6, 0, 0, 0, 0, 0, 0)  # earth: sphere of 6,371,229 m
        + struct.pack(">II", GFS_LON.size, GFS_LAT.size)  # Ni, Nj
        + struct.pack(">II", 0, 0xFFFFFFFF)  # basic angle 0: units of 1e-6 degree
        + _signed(90_000_000, 4)  # La1
        + _signed(0, 4)  # Lo1
        + struct.pack(">B", 0x30)  # i and j increments given
        + _signed(-90_000_000, 4)  # La2
        + _signed(359_750_000, 4)  # Lo2
        + struct.pack(">II", 250_000, 250_000)  # Di, Dj
        + struct.pack(">B", 0)  # scanning: west to east, north to south, rows
    )
    product = struct.pack(
        ">HHBBBBBHBBI",
        0,  # no coordinate values after the template
        0,  # template 4.0: analysis or forecast at a horizontal level at a point in time
        field.category,
        field.number,
        2,  # generating process: forecast
        0,  # background process
        96,  # GFS
        0,  # hours after data cut-off
        0,  # minutes after data cut-off
        1,  # unit of the forecast time: hour
        lead_hours,
    ) + struct.pack(">BBIBBI", field.surface, 0, field.surface_value, 255, 0, 0)
    representation = (
        struct.pack(">IH", points, 0)  # template 5.0: grid point data, simple packing
        + struct.pack(">f", reference)
        + _signed(exponent, 2)  # binary scale factor E
        + _signed(0, 2)  # decimal scale factor D
        + struct.pack(">BB", nbits, 0)  # bits per value; original values are floats
    )
    body = (
        _section(1, identification)
        + _section(3, grid)
        + _section(4, product)
        + _section(5, representation)
        + _section(6, b"\xff")  # no bitmap
        + _section(7, bits)
        + b"7777"
    )
    indicator = b"GRIB" + struct.pack(">HBBQ", 0, 0, 2, 16 + len(body))
    return Packed(indicator + body, decoded.reshape(values.shape), precision)


def index_line(number: int, offset: int, time: datetime, field: Field, lead_hours: int) -> str:
    """One line of NOAA's ``.idx`` (``wgrib2 -s``), e.g. ``5:0:d=2024072412:HGT:500 mb:anl:``."""
    when = "anl" if lead_hours == 0 else f"{lead_hours} hour fcst"
    return f"{number}:{offset}:d={time:%Y%m%d%H}:{field.name}:{field.level}:{when}:"


@dataclass(frozen=True)
class GribFile:
    """A GFS-like GRIB2 file, its index and what a reader decodes from it."""

    data: bytes
    index: str
    #: earth2studio's name -> the decoded field in earth2studio's units (geopotential in
    #: m2 s-2: the decoded gpm times 9.81, as the lexicon computes it), float64.
    decoded: dict[str, np.ndarray]
    #: earth2studio's name -> largest difference from the field it was made from, in
    #: earth2studio's units.
    precision: dict[str, float]
    #: earth2studio's name -> (offset, length) of its message in ``data``.
    ranges: dict[str, tuple[int, int]]


def encode_file(fields: Mapping[str, np.ndarray], time: datetime, lead_hours: int = 0) -> GribFile:
    """A file of one message per field (in GFS's order) plus the sentinel, and its index.

    Parameters
    ----------
    fields : mapping
        earth2studio's name -> 721 x 1440 field in earth2studio's units (geopotential,
        not height): each is divided by its :attr:`Field.scale` before packing.
    time : datetime
        Analysis time.
    lead_hours : int
        Forecast hour (0 for the analysis file ``f000``).
    """
    names = [n for n in ORDER if n in fields] + [n for n in fields if n not in ORDER]
    chunks: list[bytes] = []
    lines: list[str] = []
    decoded: dict[str, np.ndarray] = {}
    precision: dict[str, float] = {}
    ranges: dict[str, tuple[int, int]] = {}
    offset = 0
    for number, name in enumerate(names, start=1):
        spec = FIELDS[name]
        packed = encode_message(np.asarray(fields[name]) / spec.scale, spec, time, lead_hours)
        decoded[name] = packed.decoded * spec.scale
        precision[name] = packed.precision * spec.scale
        ranges[name] = (offset, len(packed.message))
        lines.append(index_line(number, offset, time, spec, lead_hours))
        chunks.append(packed.message)
        offset += len(packed.message)
    sentinel = encode_message(np.zeros((GFS_LAT.size, GFS_LON.size)), SENTINEL, time, lead_hours)
    lines.append(index_line(len(names) + 1, offset, time, SENTINEL, lead_hours))
    chunks.append(sentinel.message)
    return GribFile(b"".join(chunks), "\n".join(lines) + "\n", decoded, precision, ranges)


def global_fields(
    valid_times: Sequence[datetime], seed: int = 0
) -> dict[datetime, dict[str, np.ndarray]]:
    """The synthetic inputs (and refc) at ``valid_times`` on GFS's global grid.

    Inside the area :func:`~corrdiff_tools.synthetic.synthetic_inputs` covers (the model's
    input box and a margin), its values; elsewhere the variable's typical value
    (:data:`corrdiff_tools.synthetic.TYPICAL`). The values depend on all of
    ``valid_times`` (one random stream), so ask for every time a test needs at once.
    """
    from corrdiff_tools.synthetic import TYPICAL, synthetic_inputs

    box = synthetic_inputs(list(valid_times), seed=seed)
    lat = np.asarray(box["lat"].values, dtype="float64")
    lon = np.asarray(box["lon"].values, dtype="float64") % 360.0
    rows = np.rint((90.0 - lat) / 0.25).astype(int)
    cols = np.rint(lon / 0.25).astype(int)
    if not (np.allclose(GFS_LAT[rows], lat) and np.allclose(GFS_LON[cols], lon)):
        raise ValueError("the synthetic inputs are not on GFS's 0.25 degree grid")
    values = np.asarray(box.values, dtype="float64")
    result: dict[datetime, dict[str, np.ndarray]] = {}
    for t, when in enumerate(valid_times):
        fields = {}
        for v, name in enumerate(str(n) for n in box["variable"].values):
            field = np.full((GFS_LAT.size, GFS_LON.size), TYPICAL[name][0], dtype="float64")
            field[np.ix_(rows, cols)] = values[t, v]
            fields[name] = field
        result[when] = fields
    return result


def valid_time(time: datetime, lead_hours: int) -> datetime:
    """The time a forecast of ``lead_hours`` from ``time`` is valid at."""
    return time + timedelta(hours=lead_hours)


def object_key(time: datetime, lead_hours: int = 0) -> str:
    """The key of a GFS file in ``noaa-gfs-bdp-pds`` (add ``.idx`` for its index)."""
    return f"gfs.{time:%Y%m%d}/{time:%H}/atmos/gfs.t{time:%H}z.pgrb2.0p25.f{lead_hours:03d}"


class SyntheticGFS:
    """GFS files of the synthetic fields, encoded when first asked for, then kept.

    Parameters
    ----------
    valid_times : sequence of datetime
        Every time a field may be asked for (see :func:`global_fields`). The file of
        analysis ``time`` and forecast hour ``lead`` holds the fields valid at
        ``time + lead``, so a test can tell which file reached which lead time.
    seed : int
        Seed of :func:`~corrdiff_tools.synthetic.synthetic_inputs`.
    """

    def __init__(self, valid_times: Sequence[datetime], seed: int = 0) -> None:
        self.fields = global_fields(valid_times, seed)
        self._files: dict[tuple[datetime, int, datetime | None], GribFile] = {}

    def file(self, time: datetime, lead_hours: int = 0, like: datetime | None = None) -> GribFile:
        """The file of analysis ``time`` and forecast hour ``lead_hours``.

        ``like``: hold the fields valid at this time instead (for times outside
        ``valid_times``, such as those a fault test damages).
        """
        key = (time, lead_hours, like)
        if key not in self._files:
            fields = self.fields[like or valid_time(time, lead_hours)]
            self._files[key] = encode_file(fields, time, lead_hours)
        return self._files[key]


def model_box(field: np.ndarray) -> np.ndarray:
    """The model's 36 x 40 input box (lat ascending, as the store holds it) of a global field."""
    from corrdiff_tools.store import LR_LAT, LR_LON

    rows = np.rint((90.0 - LR_LAT) / 0.25).astype(int)
    cols = np.rint((LR_LON % 360.0) / 0.25).astype(int)
    return field[np.ix_(rows, cols)]


def without_line(index: str, field: Field) -> str:
    """``index`` with ``field``'s line left out (as if GFS had not written it)."""
    marker = f":{field.name}:{field.level}:"
    return "".join(line for line in index.splitlines(keepends=True) if marker not in line)
