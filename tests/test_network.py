"""Reachability checks and short failure messages (corrdiff_tools.network)."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from corrdiff_tools import network
from corrdiff_tools.model import DEFAULT_PACKAGE, PACKAGE_ZIP

#: What obstore raises for GFS with no DNS (the Rust debug dump cut short).
OBSTORE_OFFLINE = (
    "Generic S3 error: Error performing GET https://s3.us-east-1.amazonaws.com/noaa-gfs-bdp-pds/"
    "gfs.20240724/12/atmos/gfs.t12z.pgrb2.0p25.f000.idx in 2.800962757s, after 10 retries, "
    "max_retries: 10, retry_timeout: 180s  - HTTP error: error sending request\n\nDebug source:\n"
    'Generic {\n    store: "S3",\n    source: RetryError(\n        ConnectError(\n'
    '            "dns error",\n        ),\n    ),\n}'
)


def test_a_library_error_is_summarised_to_its_first_line() -> None:
    text = network.summarise(RuntimeError(OBSTORE_OFFLINE))
    assert text == (
        "RuntimeError: GET gfs.t12z.pgrb2.0p25.f000.idx: error sending request (after 10 retries)"
    )
    long = RuntimeError("Requested package " + "x" * 300 + " not found\n\nDebug source:\n{}")
    text = network.summarise(long)
    assert text.startswith("RuntimeError: Requested package xxx") and "x...x" in text
    assert text.endswith("xxx not found")
    assert len(text) == len("RuntimeError: ") + network.MAX_DETAIL
    assert "\n" not in text and "Debug" not in text
    assert network.summarise(ValueError("short")) == "ValueError: short"
    assert network.summarise(KeyError()) == "KeyError"


def test_obstore_gives_the_http_status_it_gave_up_on() -> None:
    # What obstore 0.12 raised through the test's fault proxy (tests/services/faults.py).
    busy = (
        "Generic S3 error: Error performing GET https://127.0.0.1:32853/noaa-gfs-bdp-pds/gfs."
        "20240724/12/atmos/gfs.t12z.pgrb2.0p25.f000 in 2.398506741s, after 10 retries, "
        "max_retries: 10, retry_timeout: 180s  - Server returned non-2xx status code: 503 "
        'Service Unavailable: <?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown'
        "</Code></Error>\n\nDebug source:\nGeneric {}"
    )
    assert network.summarise(RuntimeError(busy)) == (
        "RuntimeError: GET gfs.t12z.pgrb2.0p25.f000: 503 Service Unavailable (after 10 retries)"
    )
    reset = (
        "Generic S3 error: HTTP error: request or response body error\n\nDebug source:\n"
        "Generic { kind: Interrupted, ConnectionReset }"
    )
    assert network.summarise(RuntimeError(reset)) == (
        "RuntimeError: Generic S3 error: HTTP error: request or response body error"
    )


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RuntimeError(OBSTORE_OFFLINE), "DNS lookup failed"),
        (socket.gaierror(-2, "Name or service not known"), "DNS lookup failed"),
        (ConnectionRefusedError(111, "refused"), "connection refused"),
        (TimeoutError("timed out"), "timed out"),  # socket's connect timeout
        (TimeoutError(), None),  # asyncio's: a transfer that stalled after an answer
        (OSError("Network is unreachable"), "network unreachable"),
        (RuntimeError("ECCODES ERROR: truncated message"), None),
        (ValueError("NaN in t2m"), None),
    ],
)
def test_which_errors_mean_the_host_cannot_be_reached(
    error: BaseException, reason: str | None
) -> None:
    assert network.unreachable_reason(error) == reason
    try:
        try:
            raise error
        except BaseException as inner:
            raise RuntimeError("fetch failed") from inner
    except RuntimeError as outer:
        assert network.unreachable_reason(outer) == reason  # found down the cause chain


def test_a_host_that_drops_packets_is_given_up_on_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hang = threading.Event()

    def silent(address: object, timeout: float) -> None:
        hang.wait(60)  # a firewall that drops packets: no answer, no refusal

    monkeypatch.setattr(network.socket, "create_connection", silent)
    start = time.monotonic()
    probe = network.Probe([network.Endpoint("GFS inputs", "s3.example")], timeout=0.5)
    (failure,) = probe.unreachable()
    assert time.monotonic() - start < 3
    assert failure[0].host == "s3.example" and failure[1] == "no answer in 0.5 s"
    hang.set()


def test_the_probe_reports_each_host_once_and_every_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def connect(address: tuple[str, int], timeout: float) -> object:
        calls.append(address)
        if address[0] == "down.example":
            raise socket.gaierror(-2, "Name or service not known")
        return socket.socket(socket.AF_UNIX)

    monkeypatch.setattr(network.socket, "create_connection", connect)
    endpoints = [
        network.Endpoint("model weights", "up.example"),
        network.Endpoint("GFS inputs", "down.example"),
        network.Endpoint("GFS forecast inputs", "down.example"),
    ]
    failures = network.Probe(endpoints, timeout=2).unreachable()
    assert sorted(calls) == [("down.example", 443), ("up.example", 443)]
    assert failures == [(endpoints[1], "DNS lookup failed"), (endpoints[2], "DNS lookup failed")]
    message = network.unreachable_message(failures, "HINT")
    assert message == (
        "cannot reach down.example (GFS inputs) or down.example (GFS forecast inputs): "
        "DNS lookup failed; HINT"
    )
    mixed = network.unreachable_message(
        [(endpoints[0], "connection refused"), (endpoints[1], "DNS lookup failed")], "HINT"
    )
    assert mixed == (
        "cannot reach up.example (model weights: connection refused) or down.example "
        "(GFS inputs: DNS lookup failed); HINT"
    )


def test_behind_a_proxy_the_proxy_is_what_must_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def refuse(address: tuple[str, int], timeout: float) -> None:
        calls.append(address)
        raise ConnectionRefusedError(111, "refused")

    monkeypatch.setattr(network.socket, "create_connection", refuse)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.site:3128")
    (failure,) = network.Probe([network.Endpoint("GFS inputs", "s3.example")]).unreachable()
    assert calls == [("proxy.site", 3128)]
    assert failure[1] == "proxy proxy.site:3128: connection refused"


#: Everything that moves an endpoint or routes through a proxy.
ROUTING_VARIABLES = (
    *network.S3_ENDPOINT_VARIABLES,
    "NGC_CLI_SEARCH_SERVICE_URL",
    "HF_ENDPOINT",
    *(f"{name}_PROXY" for name in ("HTTPS", "HTTP", "ALL", "NO")),
    *(f"{name}_proxy" for name in ("https", "http", "all", "no")),
)


@pytest.fixture
def plain_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No endpoint overrides, no proxies, earth2studio's caches under tmp_path."""
    for name in ROUTING_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EARTH2STUDIO_CACHE", str(tmp_path))
    monkeypatch.delenv("EARTH2STUDIO_MODEL_CACHE", raising=False)
    monkeypatch.delenv("EARTH2STUDIO_DATA_CACHE", raising=False)
    return tmp_path


def fsspec_download(folder: Path, name: str = PACKAGE_ZIP, recorded: bool = True) -> None:
    """What earth2studio's whole-file cache leaves in ``folder`` after a download.

    ``recorded=False``: an interrupted download (the file, cut short, without its record
    in the folder's ``cache`` index).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"zip")
    if recorded:
        url = f"{DEFAULT_PACKAGE}/{name}"
        entry = {"original": url, "fn": name, "blocks": True, "time": 0.0, "uid": "0"}
        (folder / "cache").write_text(json.dumps({url: entry}))


def test_which_hosts_a_run_needs(plain_environment: Path) -> None:
    tmp_path = plain_environment
    ngc = network.package_endpoint(DEFAULT_PACKAGE, DEFAULT_PACKAGE, PACKAGE_ZIP)
    assert ngc == network.Endpoint("model weights", "api.ngc.nvidia.com", proxied=False)
    hf = network.package_endpoint("hf://nvidia/corrdiff", DEFAULT_PACKAGE, PACKAGE_ZIP)
    assert hf is not None and hf.host == "huggingface.co" and hf.proxied
    assert network.package_endpoint(str(tmp_path), DEFAULT_PACKAGE, PACKAGE_ZIP) is None
    # Cut short by an interrupted download: earth2studio fetches it again.
    fsspec_download(tmp_path / "corrdiff_taiwan", recorded=False)
    assert network.package_endpoint(DEFAULT_PACKAGE, DEFAULT_PACKAGE, PACKAGE_ZIP) == ngc
    # Already downloaded by earth2studio: read from its cache, no network needed.
    fsspec_download(tmp_path / "corrdiff_taiwan")
    assert network.package_endpoint(DEFAULT_PACKAGE, DEFAULT_PACKAGE, PACKAGE_ZIP) is None

    gfs = network.source_endpoint("gfs")
    assert gfs is not None and gfs.host == "s3.us-east-1.amazonaws.com"
    assert gfs.cache == tmp_path / "gfs" and not gfs.cached
    (tmp_path / "gfs").mkdir()
    assert not gfs.cached  # an empty cache holds nothing
    (tmp_path / "gfs" / "f0").write_bytes(b"grib")
    assert gfs.cached
    era5 = network.source_endpoint("era5")
    assert era5 is not None and era5.host == "storage.googleapis.com"
    assert network.source_endpoint("file") is None


@pytest.mark.parametrize(
    ("variables", "address"),
    [
        ({}, ("s3.us-east-1.amazonaws.com", 443)),
        ({"AWS_ENDPOINT": "https://generic.example"}, ("generic.example", 443)),
        ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}, ("127.0.0.1", 9000)),
        (
            {"AWS_ENDPOINT_URL": "https://generic.example", "AWS_ENDPOINT_URL_S3": "https://[::1]"},
            ("::1", 443),
        ),
        ({"AWS_ENDPOINT_URL_S3": "s3.internal:8443"}, ("s3.internal", 8443)),
    ],
)
def test_the_gfs_probe_goes_where_obstore_goes(
    plain_environment: Path,
    monkeypatch: pytest.MonkeyPatch,
    variables: dict[str, str],
    address: tuple[str, int],
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    for kind in ("gfs", "gfs-forecast"):
        endpoint = network.source_endpoint(kind)
        assert endpoint is not None and (endpoint.host, endpoint.port) == address
        assert endpoint.proxied and endpoint.cache == plain_environment / "gfs"
    era5 = network.source_endpoint("era5")  # gcsfs: not an S3 client
    assert era5 is not None and era5.host == "storage.googleapis.com"


def test_the_package_probe_goes_where_each_client_goes(
    plain_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def endpoint(spec: str) -> tuple[str, int, bool]:
        found = network.package_endpoint(spec, DEFAULT_PACKAGE, PACKAGE_ZIP)
        assert found is not None
        return found.host, found.port, found.proxied

    monkeypatch.setenv("NGC_CLI_SEARCH_SERVICE_URL", "http://127.0.0.1:8080/")
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://minio.example:9000")
    assert endpoint(DEFAULT_PACKAGE) == ("127.0.0.1", 8080, False)
    assert endpoint("ngc://models/nvidia/modulus/other@2") == ("127.0.0.1", 8080, False)
    assert endpoint("hf://nvidia/corrdiff") == ("hf-mirror.example", 443, True)
    assert endpoint("s3://bucket/pkg") == ("minio.example", 9000, True)
    assert endpoint("https://models.example:8443/pkg") == ("models.example", 8443, True)
    assert endpoint("http://models.example/pkg") == ("models.example", 80, True)
    monkeypatch.setenv("AWS_ENDPOINT", "https://ignored-by-botocore.example")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert endpoint("s3://bucket/pkg") == ("s3.amazonaws.com", 443, True)


@pytest.mark.parametrize(
    ("no_proxy", "host", "bypassed"),
    [
        ("", "s3.example", False),
        ("*", "s3.example", True),
        ("s3.example", "s3.example", True),
        ("example", "s3.example", True),
        (".example", "s3.example", True),
        ("other.example, s3.example:443", "s3.example", True),
        ("3.example", "s3.example", False),
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.0/8", "127.0.0.1", True),
        ("10.0.0.0/8", "127.0.0.1", False),
        ("::1", "::1", True),
    ],
)
def test_no_proxy_exempts_hosts_as_clients_read_it(
    plain_environment: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_proxy: str,
    host: str,
    bypassed: bool,
) -> None:
    monkeypatch.setenv("no_proxy", no_proxy)
    assert network.bypasses_proxy(host) is bypassed
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.site:3128")
    expected = (host, 443) if bypassed else ("proxy.site", 3128)
    assert network.route(network.Endpoint("GFS inputs", host)) == expected


def test_the_ngc_client_ignores_proxies_so_its_probe_does_too(
    plain_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def connect(address: tuple[str, int], timeout: float) -> object:
        calls.append(address)
        return socket.socket(socket.AF_UNIX)

    monkeypatch.setattr(network.socket, "create_connection", connect)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.site:3128")
    ngc = network.package_endpoint(DEFAULT_PACKAGE, DEFAULT_PACKAGE, PACKAGE_ZIP)
    gfs = network.source_endpoint("gfs")
    assert ngc is not None and gfs is not None
    assert network.Probe([ngc, gfs], timeout=2).unreachable() == []
    assert sorted(calls) == [("api.ngc.nvidia.com", 443), ("proxy.site", 3128)]


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_two_services_on_one_host_are_probed_by_port(plain_environment: Path) -> None:
    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: refuses connections
        up = network.Endpoint("model weights", "127.0.0.1", listening.getsockname()[1])
        down = network.Endpoint("GFS inputs", "127.0.0.1", closed.getsockname()[1])
        failures = network.Probe([up, down], timeout=2).unreachable()
    assert failures == [(down, "connection refused")]
    message = network.unreachable_message(failures, "HINT")
    assert message == f"cannot reach 127.0.0.1:{down.port} (GFS inputs): connection refused; HINT"


def test_a_missing_object_is_named() -> None:
    error = FileNotFoundError(
        "The specified data index, noaa-gfs-bdp-pds/gfs.20240726/06/atmos/gfs.t06z."
        "pgrb2.0p25.f000.idx, does not exist. Data seems to be missing."
    )
    assert network.missing_reason(error) == (
        "noaa-gfs-bdp-pds/gfs.20240726/06/atmos/gfs.t06z.pgrb2.0p25.f000.idx does not exist"
    )


@pytest.mark.parametrize(
    ("error", "missing", "stalls", "transient"),
    [
        # earth2studio's GFS index that is not in the bucket: permanent, never retried.
        (
            FileNotFoundError(
                "The specified data index, noaa-gfs-bdp-pds/gfs.20240726/06/atmos/gfs.t06z."
                "pgrb2.0p25.f000.idx, does not exist. Data seems to be missing."
            ),
            True,
            False,
            False,
        ),
        # earth2studio's 120 s per-task limit on a body that stopped arriving.
        (TimeoutError(), False, True, False),
        # obstore, a reused connection the server reset: it answered, so a hiccup.
        (RuntimeError("HTTP error: error sending request (Connection reset)"), False, False, True),
        (
            OSError("Connection reset by peer: noaa-gfs-bdp-pds.s3.amazonaws.com"),
            False,
            False,
            True,
        ),
        (ConnectionResetError(104, "reset"), False, False, True),
        # pygrib on a cut or corrupt message: the same cached bytes on every try.
        (RuntimeError("End of resource reached when reading message"), False, False, False),
        (OSError("not that many messages in file"), False, False, False),
        # A host never reached: unreachable (retried only once it has delivered).
        (RuntimeError(OBSTORE_OFFLINE), False, False, True),
        # A mirror that wants credentials: refused, not a hiccup; a busy one is one.
        (
            RuntimeError("Server returned non-2xx status code: 403 Forbidden: <Error>"),
            False,
            False,
            False,
        ),
        (
            RuntimeError("Server returned non-2xx status code: 429 Too Many Requests"),
            False,
            False,
            True,
        ),
        # A misconfigured mirror is not a time the archive lacks.
        (FileNotFoundError("The specified bucket does not exist"), False, False, False),
        (
            RuntimeError("Server returned non-2xx status code: 404 Not Found: NoSuchKey"),
            True,
            False,
            False,
        ),
        # aiohttp's connect timeout: the host was never reached, not a stalled transfer.
        (TimeoutError("Connection timeout to host https://127.0.0.1:9/"), False, False, True),
    ],
)
def test_which_errors_are_retried(
    error: BaseException, missing: bool, stalls: bool, transient: bool
) -> None:
    assert (network.missing_reason(error) is not None) is missing
    assert network.stalled(error) is stalls
    assert (network.transient_reason(error) is not None) is transient


def test_only_what_an_error_was_raised_from_makes_it_missing() -> None:
    """A reset that happened while a missing file was being handled is still a reset."""
    try:
        try:
            raise FileNotFoundError("noaa-gfs-bdp-pds/gfs.20240726/06/atmos/x.idx does not exist")
        except FileNotFoundError:
            raise ConnectionResetError(104, "Connection reset by peer")  # noqa: B904
    except ConnectionResetError as err:
        assert network.missing_reason(err) is None
        assert network.transient_reason(err) is not None
    assert network.http_status(RuntimeError("HTTP/1.1 503 Service Unavailable")) == 503
