"""The blog's job through the real download clients: GFS from S3, the model from NGC.

Nothing is injected: ``run_main`` builds earth2studio's own ``GFS``/``GFS_FX`` (obstore)
and ``Package`` (the NGC file system, aiohttp), and only environment variables point them
at loopback stand-ins (``tests/services``): moto's S3 server over TLS holding
``noaa-gfs-bdp-pds`` with hand-encoded GRIB2 files, and the NGC file API serving the
session's tiny model package.

Sockets: pytest-socket lets these tests connect to 127.0.0.1 only. obstore's sockets are
Rust's, out of its reach, so every test also sets ``HTTPS_PROXY`` to a closed port on
127.0.0.1 with ``NO_PROXY=127.0.0.1,localhost``: anything obstore sent elsewhere would go
to a proxy that refuses it. (earth2studio's NGC client ignores proxies; it is Python's
aiohttp, which pytest-socket does police.)
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from conftest import drawn_files
from services import faults, grib, ngc, s3, tls

from corrdiff_tools.cli import plot_main, run_main
from corrdiff_tools.store import INPUT_VARIABLES, OUTPUT_VARIABLES

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])

#: The blog's time, and the analyses after it.
ANALYSIS = datetime(2024, 7, 24, 12)
ANALYSES = (ANALYSIS, ANALYSIS + timedelta(hours=6), ANALYSIS + timedelta(hours=12))
#: Forecast files in the bucket (analysis time, hour): f006 holds the next analysis's fields.
FORECASTS = ((ANALYSIS, 6),)
#: The CorrDiff inputs and the extra field the run stores.
LOWRES = (*INPUT_VARIABLES, "refc")
#: Options that keep a run short where the sampler is not what is tested.
QUICK = ("--samples", "1", "--steps", "2", "--device", "cpu")


# --------------------------------------------------------------------------- services


@pytest.fixture(scope="session")
def gfs_files() -> grib.SyntheticGFS:
    """The synthetic fields of every analysis, encoded as GFS files on demand."""
    return grib.SyntheticGFS(ANALYSES)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tls.Certificate:
    return tls.make_certificate(tmp_path_factory.mktemp("tls"))


def upload(server: s3.S3Server, gfs_files: grib.SyntheticGFS, time: datetime, lead: int) -> None:
    """Put the GFS file of ``time`` + ``lead`` h and its index into the bucket."""
    encoded = gfs_files.file(time, lead)
    server.put(grib.object_key(time, lead), encoded.data)
    server.put(grib.object_key(time, lead) + ".idx", encoded.index)


@pytest.fixture(scope="module")
def s3_server(certificate: tls.Certificate, gfs_files: grib.SyntheticGFS) -> Iterator[s3.S3Server]:
    """moto's S3 server with the analyses (f000) and the forecast files."""
    with s3.running(certificate.cert, certificate.key) as server:
        for time in ANALYSES:
            upload(server, gfs_files, time, 0)
        for time, lead in FORECASTS:
            upload(server, gfs_files, time, lead)
        yield server
    assert server.process.poll() is not None


@pytest.fixture(scope="module")
def ngc_server(package_dir: Path) -> Iterator[ngc.NGCServer]:
    """The NGC file API serving the session's tiny model package."""
    server = ngc.NGCServer(package_dir / ngc.ZIP_NAME)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fault_proxy(
    s3_server: s3.S3Server, certificate: tls.Certificate
) -> Iterator[faults.FaultProxy]:
    proxy = faults.FaultProxy(
        s3_server.url, certificate.server_context(), certificate.client_context()
    )
    yield proxy
    proxy.stop()


@dataclass
class Services:
    """The stand-ins a test runs against, and what points the clients at them."""

    s3: s3.S3Server
    ngc: ngc.NGCServer
    proxy: faults.FaultProxy
    #: earth2studio's cache of this test.
    cache: Path
    #: A port on 127.0.0.1 that refuses connections.
    dead_port: int
    monkeypatch: pytest.MonkeyPatch

    def gfs_through(self, url: str) -> None:
        """Point obstore (``AWS_ENDPOINT_URL_S3``) at ``url``."""
        self.monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)

    def ngc_at(self, url: str) -> None:
        """Point earth2studio's NGC client (``NGC_CLI_SEARCH_SERVICE_URL``) at ``url``."""
        self.monkeypatch.setenv("NGC_CLI_SEARCH_SERVICE_URL", url)

    def both_unreachable(self) -> None:
        """Point both clients at :attr:`dead_port` (connection refused)."""
        self.gfs_through(f"https://127.0.0.1:{self.dead_port}")
        self.ngc_at(f"http://127.0.0.1:{self.dead_port}/")


#: Variables that could send a client somewhere else than the environment below says.
ROUTING = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT",
    "EARTH2STUDIO_DATA_CACHE",
    "EARTH2STUDIO_MODEL_CACHE",
    *(f"{name}_PROXY" for name in ("HTTP", "ALL")),
    *(f"{name}_proxy" for name in ("https", "http", "all", "no")),
)


@pytest.fixture
def services(
    s3_server: s3.S3Server,
    ngc_server: ngc.NGCServer,
    fault_proxy: faults.FaultProxy,
    certificate: tls.Certificate,
    dead_port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Services]:
    """The environment of a user whose GFS and NGC are the loopback servers.

    earth2studio's cache is the test's own (its GFS cache is keyed by object path, not
    endpoint), every fault is cleared, and the working directory is ``tmp_path``.
    Afterwards, what a failed run left running in the background is stopped.
    """
    for name in ROUTING:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate.cert))
    monkeypatch.setenv("NGC_CLI_SEARCH_SERVICE_URL", ngc_server.url)
    monkeypatch.setenv("EARTH2STUDIO_CACHE", str(tmp_path / "earth2studio"))
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{dead_port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.chdir(tmp_path)
    ngc_server.fault = None
    ngc_server.requests.clear()
    fault_proxy.inject()
    yield Services(
        s3_server,
        ngc_server,
        fault_proxy,
        tmp_path / "earth2studio",
        dead_port,
        monkeypatch,
    )
    fault_proxy.inject()  # releases stalled responses
    settle(collect=False)


def settle(collect: bool = True) -> None:
    """Stop what a failed run left going in the background of the test process.

    earth2studio runs its GFS downloads on fsspec's IO loop; a failed run cancels its own
    (``sources.settle_downloads``), and this clears the loop wholly after each test, before
    it asserts anything: Python 3.11.7 formats tracebacks with ``ast.parse``, and a
    traceback formatted on another thread (or by a task's ``__del__``) while pytest parses
    the test source for a failure report crashes the session ("AST constructor recursion
    depth mismatch", CPython issue 106905, pytest issue 10763).
    """
    import gc

    from corrdiff_tools.sources import settle_downloads

    settle_downloads()
    if collect:
        gc.collect()  # a finished task's unretrieved error is logged now, not mid-report


@dataclass
class Result:
    """What a user sees: the exit code, stderr and how long it took."""

    code: int
    err: str
    seconds: float

    @property
    def last_line(self) -> str:
        lines = self.err.strip().splitlines()
        return lines[-1] if lines else ""


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """``run_main(args)`` with nothing injected."""

    def call(*args: str) -> Result:
        capsys.readouterr()
        started = time.monotonic()
        code = run_main(list(args))
        seconds = time.monotonic() - started
        result = Result(code, capsys.readouterr().err, seconds)
        settle()
        return result

    return call


# --------------------------------------------------------------------------- helpers


def open_store(path: Path) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=False).load()


def encoded_box(
    gfs_files: grib.SyntheticGFS, time: datetime, lead: int = 0
) -> dict[str, np.ndarray]:
    """The decoded fields of a GFS file on the model's input box, float64."""
    decoded = gfs_files.file(time, lead).decoded
    return {name: grib.model_box(decoded[name]) for name in LOWRES}


def assert_inputs_are_the_encoded_fields(
    ds: xr.Dataset, gfs_files: grib.SyntheticGFS, index: dict[str, int], time: datetime, lead: int
) -> None:
    """``lr_<var>`` at ``index`` equals the GRIB file's fields, and the synthetic ones to
    the packing precision, variable by variable (geopotential = gpm * 9.81)."""
    encoded = gfs_files.file(time, lead)
    original = gfs_files.fields[grib.valid_time(time, lead)]
    for name in LOWRES:
        stored = ds[f"lr_{name}"].isel(index).values
        decoded = grib.model_box(encoded.decoded[name])
        np.testing.assert_array_equal(stored, decoded.astype("float32"), err_msg=name)
        tolerance = encoded.precision[name] + np.spacing(np.float32(np.abs(decoded).max()))
        error = np.abs(stored - grib.model_box(original[name])).max()
        assert error <= tolerance, (name, error, tolerance)


def write_offline_file(path: Path, gfs_files: grib.SyntheticGFS, times: list[datetime]) -> Path:
    """The same fields as the GFS files, as ``--source FILE`` reads them."""
    from corrdiff_tools.sources import write_input_file

    write_input_file(path, times, [encoded_box(gfs_files, t) for t in times])
    return path


def assert_same_ensemble(a: xr.Dataset, b: xr.Dataset) -> None:
    """Every output, input and flag of two stores bitwise equal."""
    names = [*OUTPUT_VARIABLES, *(f"lr_{v}" for v in LOWRES), "completed"]
    for name in names:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


# --------------------------------------------------------------------------- the encoder


def test_the_grib_encoder_decodes_with_pygrib(tmp_path: Path) -> None:
    import pygrib

    fields = {name: np.full((721, 1440), grib.FIELDS[name].scale * 10.0) for name in grib.FIELDS}
    rng = np.random.default_rng(0)
    fields["t2m"] = 290.0 + 10.0 * rng.standard_normal((721, 1440))
    fields["z500"] = 57_000.0 + 500.0 * rng.standard_normal((721, 1440))
    encoded = grib.encode_file(fields, ANALYSIS, 6)
    path = tmp_path / "gfs.grib2"
    path.write_bytes(encoded.data)
    lines = encoded.index.splitlines()
    assert len(lines) == len(grib.FIELDS) + 1 and all(line.endswith(":") for line in lines)
    with pygrib.open(str(path)) as messages:
        decoded = list(messages)
    assert len(decoded) == len(grib.FIELDS) + 1  # and the sentinel
    for message, line in zip(decoded, lines, strict=True):
        number, offset, date, name, level, when, _ = line.split(":")
        assert date == "d=2024072412" and when == "6 hour fcst"
        name_of = {spec.name + spec.level: key for key, spec in grib.FIELDS.items()}
        if name + level not in name_of:
            continue  # the sentinel
        key = name_of[name + level]
        assert encoded.ranges[key][0] == int(offset)
        assert message.validDate == ANALYSIS + timedelta(hours=6)
        assert (message.Ni, message.Nj) == (1440, 721)
        assert message.latitudeOfFirstGridPointInDegrees == 90.0
        assert message.longitudeOfLastGridPointInDegrees == 359.75
        values = message.values * grib.FIELDS[key].scale
        np.testing.assert_array_equal(values, encoded.decoded[key])  # bit for bit
        error = np.abs(values - fields[key]).max()
        assert error <= encoded.precision[key] * (1 + 1e-12), key
    assert encoded.precision["t2m"] < 0.002 and encoded.precision["z500"] < 0.05


# --------------------------------------------------------------------------- the blog's job


@pytest.mark.slow
def test_the_quick_start_through_the_real_clients(
    services: Services,
    run: Callable[..., Result],
    gfs_files: grib.SyntheticGFS,
    package_dir: Path,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    result = run("2024-07-24T12:00", "--samples", "4", "--device", "cpu", "--output", "blog.zarr")
    assert result.code == 0, result.err[-3000:]
    record_property("quick_start_seconds", round(result.seconds, 1))
    assert services.ngc.downloads() == 1
    assert any("gfs.t12z.pgrb2.0p25.f000" in key for key in services.s3.keys())
    ds = open_store(tmp_path / "blog.zarr")
    assert ds["t2m"].sizes["sample"] == 4
    assert_inputs_are_the_encoded_fields(ds, gfs_files, {"time": 0}, ANALYSIS, 0)

    # The offline route with the same fields and package gives the same ensemble.
    offline = write_offline_file(tmp_path / "inputs.nc", gfs_files, [ANALYSIS])
    args = ("--source", str(offline), "--model-package", str(package_dir), "--output", "off.zarr")
    result = run("2024-07-24T12:00", "--samples", "4", "--device", "cpu", *args)
    assert result.code == 0, result.err[-3000:]
    record_property("offline_seconds", round(result.seconds, 1))
    assert_same_ensemble(ds, open_store(tmp_path / "off.zarr"))

    started = time.monotonic()
    code = plot_main([str(tmp_path / "blog.zarr"), "--plot-lowres", "--gif"])
    record_property("plot_seconds", round(time.monotonic() - started, 1))
    assert code == 0
    drawn = sorted(p.name for p in drawn_files(tmp_path / "blog-plots"))
    samples = [f"corrdiff-2024-07-24T12-sample-{i:02d}.jpg" for i in range(4)]
    assert drawn == sorted(
        [*samples, "corrdiff-2024-07-24T12-lowres.jpg", "corrdiff-2024-07-24T12.gif"]
    )


@pytest.mark.slow
def test_prefetch_through_the_real_clients_then_offline(
    services: Services,
    run: Callable[..., Result],
    gfs_files: grib.SyntheticGFS,
    tmp_path: Path,
) -> None:
    result = run("2024-07-24T12:00/2024-07-24T18:00", "--prefetch", "pre.nc", "--device", "cpu")
    assert result.code == 0, result.err[-3000:]
    fetched = xr.load_dataarray(tmp_path / "pre.nc")
    assert list(fetched["variable"].values) == list(LOWRES)
    for t, when in enumerate(ANALYSES[:2]):
        for name, values in encoded_box(gfs_files, when).items():
            np.testing.assert_array_equal(
                fetched.sel(variable=name).values[t], values.astype("float32"), err_msg=name
            )
    found = re.search(r"offline, pass --model-package (\S+)", result.err[-3000:])
    assert found is not None, result.err[-3000:]
    assert services.ngc.downloads() == 1

    # Offline: both services out of reach, nothing fetched, the same inputs stored.
    services.both_unreachable()
    requests = len(services.ngc.requests)
    args = ("--source", "pre.nc", "--model-package", found.group(1), "--output", "off.zarr")
    result = run("2024-07-24T18:00", *QUICK, *args)
    assert result.code == 0, result.err[-3000:]
    assert "cannot reach" not in result.err and len(services.ngc.requests) == requests
    ds = open_store(tmp_path / "off.zarr")
    assert_inputs_are_the_encoded_fields(ds, gfs_files, {"time": 0}, ANALYSES[1], 0)


@pytest.mark.slow
def test_a_forecast_through_the_real_client(
    services: Services,
    run: Callable[..., Result],
    gfs_files: grib.SyntheticGFS,
    tmp_path: Path,
) -> None:
    args = ("--source", "gfs-forecast", "--lead-time", "0", "6", "--output", "fc.zarr")
    result = run("2024-07-24T12:00", *QUICK, *args)
    assert result.code == 0, result.err[-3000:]
    ds = open_store(tmp_path / "fc.zarr")
    assert ds["lead_time"].values.astype("timedelta64[h]").astype(int).tolist() == [0, 6]
    for index, lead in enumerate((0, 6)):
        where = {"time": 0, "lead_time": index}
        assert_inputs_are_the_encoded_fields(ds, gfs_files, where, ANALYSIS, lead)
    # f006 holds the fields of the next analysis: each lead got its own file.
    assert not np.array_equal(ds["lr_t2m"].values[0, 0], ds["lr_t2m"].values[0, 1])


@pytest.mark.slow
def test_a_warm_cache_is_used_with_the_servers_stopped(
    services: Services,
    run: Callable[..., Result],
    gfs_files: grib.SyntheticGFS,
    certificate: tls.Certificate,
    package_dir: Path,
    tmp_path: Path,
) -> None:
    # Servers of this test's own, so they can be stopped.
    gfs = s3.S3Server(certificate.cert, certificate.key)
    registry = ngc.NGCServer(package_dir / ngc.ZIP_NAME)
    try:
        gfs.create_public_bucket()
        upload(gfs, gfs_files, ANALYSIS, 0)
        services.gfs_through(gfs.url)
        services.ngc_at(registry.url)
        result = run("2024-07-24T12:00", *QUICK, "--output", "warm.zarr")
        assert result.code == 0, result.err[-3000:]
    finally:
        gfs.stop()
        registry.stop()
    assert gfs.process.poll() is not None

    result = run("2024-07-24T12:00", *QUICK, "--output", "cold.zarr")
    assert result.code == 0, result.err[-3000:]
    # The data host is probed, found down, and its cache used; the package is not probed.
    port = gfs.url.rsplit(":", 1)[-1].strip("/")
    warning = f"cannot reach 127.0.0.1:{port} for the GFS inputs (connection refused): trying "
    assert warning in result.err and "model weights" not in result.err
    assert_same_ensemble(open_store(tmp_path / "warm.zarr"), open_store(tmp_path / "cold.zarr"))


# --------------------------------------------------------------------------- faults

Cause = Callable[[Services, grib.SyntheticGFS, datetime], None]


@dataclass(frozen=True)
class Case:
    """A fault, how to cause it, and what the user must hear."""

    #: Puts the fault in place (the services, the GFS files, the time the run asks for).
    cause: Cause
    #: The time the run asks for.
    time: datetime
    #: Expected exit code; a pattern the error line must match, and one it must not.
    code: int
    says: str = ""
    never: str = r"$^"
    #: Run with the NGC package (else the local one, so only GFS is exercised).
    remote_model: bool = False
    #: Takes more than ~20 s: CI's slow step only.
    slow: bool = False
    #: What the tool gets wrong today (the case is a strict xfail until it is fixed).
    bug: str = ""
    #: Seconds earth2studio's GFS client gives each download (its own: 120) and the tool
    #: waits before it says it is still waiting (its own: 30), shortened so that a stall
    #: is reported in seconds; None keeps both.
    patience: tuple[float, float] | None = None


def through_proxy(*injected: faults.Fault) -> Cause:
    """Send GFS through the fault proxy with ``injected`` faults."""

    def cause(services: Services, gfs_files: grib.SyntheticGFS, time: datetime) -> None:
        services.proxy.inject(*injected)
        services.gfs_through(services.proxy.url)

    return cause


def in_bucket(damage: Callable[[grib.GribFile], tuple[bytes | None, str | None]]) -> Cause:
    """Put the GFS file of ``time`` and its index as ``damage`` leaves them (None: absent)."""

    def cause(services: Services, gfs_files: grib.SyntheticGFS, time: datetime) -> None:
        data, index = damage(gfs_files.file(time, 0, like=ANALYSIS))
        key = grib.object_key(time, 0)
        present = services.s3.keys()
        for name, content in ((key, data), (key + ".idx", index)):
            if content is not None:
                services.s3.put(name, content)
            elif name in present:
                services.s3.delete(name)

    return cause


def registry(fault: str) -> Cause:
    """Make the NGC server answer with ``fault`` (see :data:`services.ngc.FAULTS`)."""

    def cause(services: Services, gfs_files: grib.SyntheticGFS, time: datetime) -> None:
        services.ngc.fault = fault

    return cause


def cut_in(name: str) -> Callable[[grib.GribFile], tuple[bytes, str]]:
    """The file cut short in the middle of ``name``'s message, its index intact."""

    def damage(encoded: grib.GribFile) -> tuple[bytes, str]:
        offset, length = encoded.ranges[name]
        return encoded.data[: offset + length // 2], encoded.index

    return damage


def overwrite_start_of(name: str) -> Callable[[grib.GribFile], tuple[bytes, str]]:
    """The file with ``name``'s message no longer starting with ``GRIB``."""

    def damage(encoded: grib.GribFile) -> tuple[bytes, str]:
        offset, _ = encoded.ranges[name]
        data = bytearray(encoded.data)
        data[offset : offset + 4] = b"XXXX"
        return bytes(data), encoded.index

    return damage


#: Requests for the analysis file's index, for its messages, and for anything.
INDEX, DATA, ANY = r"\.f000\.idx$", r"\.f000$", ""
#: Each data fault at a time of its own (earth2studio's cache is the test's own anyway).
CASES = {
    "503-on-the-index-twice": Case(
        through_proxy(faults.Fault("status", match=INDEX, times=2)), ANALYSIS, 0
    ),
    "503-on-every-request": Case(
        through_proxy(faults.Fault("status", match=ANY)),
        ANALYSIS,
        1,
        says=r"could not fetch the inputs at 2024-07-24T12:00 from gfs after 3 tries "
        r"\(GenericError: GET gfs\.t12z\.pgrb2\.0p25\.f000\.idx: 503 Service Unavailable",
        slow=True,
    ),
    "reset-mid-body-once": Case(
        through_proxy(faults.Fault("reset", match=DATA, times=1, after=4096)), ANALYSIS, 0
    ),
    "reset-mid-body-always": Case(
        through_proxy(faults.Fault("reset", match=DATA, after=4096)),
        ANALYSIS,
        1,
        says=r"could not fetch the inputs at 2024-07-24T12:00 from gfs",
        never="could not reach",
        slow=True,
    ),
    "stalled-body": Case(
        through_proxy(faults.Fault("stall", match=DATA, after=4096, seconds=900)),
        ANALYSIS,
        1,
        says="timed out",
        never="could not reach",
        slow=True,
        patience=(8.0, 2.0),  # unshortened, the case takes earth2studio's 120 s
    ),
    "missing-index": Case(
        in_bucket(lambda f: (f.data, None)),
        datetime(2024, 7, 25, 6),
        1,
        says=r"gfs\.t06z\.pgrb2\.0p25\.f000\.idx.*does not exist",
        never="tries|corrupt",
    ),
    "index-without-t850": Case(
        in_bucket(lambda f: (f.data, grib.without_line(f.index, grib.FIELDS["t850"]))),
        datetime(2024, 7, 25, 12),
        1,
        says=r"input t850 at 2024-07-25T12:00 from gfs has 1440 NaN/inf values of 1440",
    ),
    "truncated-grib": Case(
        in_bucket(cut_in("tcwv")),
        datetime(2024, 7, 25, 18),
        1,
        says=r"End of resource reached when reading message\); .*delete \S+/earth2studio/gfs",
    ),
    "corrupt-grib": Case(
        in_bucket(overwrite_start_of("t2m")),
        datetime(2024, 7, 26, 0),
        1,
        says=r"not that many messages in file\); .*delete \S+/earth2studio/gfs",
        slow=True,
    ),
    "time-not-in-bucket": Case(
        in_bucket(lambda f: (None, None)),
        datetime(2024, 7, 26, 6),
        1,
        says=r"gfs\.t06z\.pgrb2\.0p25\.f000\.idx.*does not exist",
        never="tries|corrupt",
    ),
    "ngc-404": Case(
        registry("not-found"),
        ANALYSIS,
        1,
        says=r"could not download the model package ngc://\S+ \(.*not found\)",
        remote_model=True,
    ),
    "ngc-503": Case(
        registry("unavailable"),
        ANALYSIS,
        1,
        says=r"could not download the model package .*Failed to get valid download URL",
        remote_model=True,
    ),
    "ngc-truncated-zip": Case(
        registry("truncated"),
        ANALYSIS,
        1,
        says=r"could not download the model package .*received \d+ of \d+ bytes",
        remote_model=True,
    ),
    "ngc-corrupt-zip": Case(
        registry("corrupt"),
        ANALYSIS,
        1,
        says=r"is damaged \(File is not a zip file\); it was removed from the cache "
        r"\(\S+corrdiff_taiwan\): run again",
        never="^run_corrdiff.py: error: --model-package",
        remote_model=True,
    ),
}


def case_params() -> list[object]:
    params = []
    for name, case in CASES.items():
        marks = [pytest.mark.slow] if case.slow else []
        if case.bug:
            marks.append(pytest.mark.xfail(strict=True, reason=case.bug))
        params.append(pytest.param(name, marks=marks))
    return params


@pytest.mark.parametrize("case", case_params())
def test_a_fault_reaches_the_user_in_one_line(
    case: str,
    services: Services,
    run: Callable[..., Result],
    gfs_files: grib.SyntheticGFS,
    package_dir: Path,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = CASES[case]
    if spec.patience is not None:
        shorten_the_waits(monkeypatch, *spec.patience)
    spec.cause(services, gfs_files, spec.time)
    model = () if spec.remote_model else ("--model-package", str(package_dir))
    result = run(f"{spec.time:%Y-%m-%dT%H:%M}", *QUICK, *model, "--output", "f.zarr")
    record_property("seconds", round(result.seconds, 2))
    record_property("code", result.code)
    record_property("line", result.last_line)
    record_property("hits", [fault.hits for fault in services.proxy.faults])
    assert result.code == spec.code, result.err[-3000:]
    if spec.code == 0:
        return
    line = result.last_line
    assert line.startswith("run_corrdiff.py: error: "), result.err[-3000:]
    assert re.search(spec.says, line) and not re.search(spec.never, line), line
    assert not (tmp_path / "f.zarr").exists()
    if spec.patience is not None:  # the stall was announced while it lasted, then reported
        _, patience = spec.patience
        waiting = (
            rf"still waiting for \S+ .*at {spec.time:%Y-%m-%dT%H:%M} from gfs after {patience:g} s"
        )
        assert re.search(waiting, result.err), result.err[-3000:]
        assert result.seconds < 60, result.seconds


def shorten_the_waits(monkeypatch: pytest.MonkeyPatch, download: float, patience: float) -> None:
    """Give earth2studio's GFS downloads ``download`` seconds, and the tool ``patience``.

    earth2studio passes ``task_timeout=120.0`` to its gather for the data (60 for the index
    files); only that number changes, the client's code path stays its own.
    """
    import earth2studio.data.gfs as gfs

    from corrdiff_tools import sources

    gather = gfs.gather_with_concurrency

    async def shortened(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("task_timeout") == 120.0:
            kwargs["task_timeout"] = download
        return await gather(*args, **kwargs)

    monkeypatch.setattr(gfs, "gather_with_concurrency", shortened)
    monkeypatch.setattr(sources, "PATIENCE", patience)


def test_an_interrupted_package_download_does_not_count_as_cached(
    services: Services, run: Callable[..., Result]
) -> None:
    services.ngc.fault = "truncated"
    args = ("2024-07-24T12:00", "--source", "gfs", *QUICK)
    result = run(*args, "--output", "a.zarr")
    assert result.code == 1 and "could not download the model package" in result.last_line
    # The cut zip is not left behind (fsspec never recorded it as downloaded, and its
    # in-memory record is dropped too): the next run needs the registry, so the probe
    # asks for it.
    assert not (services.cache / "corrdiff_taiwan" / ngc.ZIP_NAME).exists()
    services.ngc_at(f"http://127.0.0.1:{services.dead_port}/")
    result = run(*args, "--output", "b.zarr")
    assert result.code == 1 and result.seconds < 10
    assert result.last_line == (
        f"run_corrdiff.py: error: cannot reach 127.0.0.1:{services.dead_port} (model weights): connection "
        "refused; offline: --source FILE --model-package DIR, see the README's 'Offline and "
        "HPC use'"
    )


@pytest.mark.slow
def test_an_interrupted_package_download_is_fetched_again(
    services: Services, run: Callable[..., Result]
) -> None:
    services.ngc.fault = "truncated"
    args = ("2024-07-24T12:00", "--source", "gfs", *QUICK)
    assert run(*args, "--output", "a.zarr").code == 1
    services.ngc.fault = None
    result = run(*args, "--output", "b.zarr")
    assert result.code == 0, result.err[-3000:]
    assert services.ngc.downloads() == 2


@pytest.mark.slow
def test_a_failed_download_exits_with_1_not_a_crash(
    services: Services, gfs_files: grib.SyntheticGFS, package_dir: Path, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    # run_corrdiff.py's own two lines, with the retry waits cut (4 + 16 s each run): the
    # interpreter's exit after the error line is what this checks.
    script = (
        "from corrdiff_tools import sources; sources.RETRY_DELAYS = (0.0, 0.0); "
        "from corrdiff_tools.cli import run_main; raise SystemExit(run_main())"
    )
    through_proxy(faults.Fault("reset", match=DATA, after=4096))(services, gfs_files, ANALYSIS)
    codes = []
    for attempt in range(2):
        args = ("--model-package", str(package_dir), "--output", f"{attempt}.zarr")
        command = [sys.executable, "-c", script, "2024-07-24T12:00", *QUICK, *args]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        )
        assert "run_corrdiff.py: error: could not fetch the inputs" in done.stderr, done.stderr
        assert "after 3 tries" in done.stderr.splitlines()[-1], done.stderr
        codes.append(done.returncode)
    assert codes == [1, 1]
