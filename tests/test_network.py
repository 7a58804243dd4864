"""Reachability checks and short failure messages (corrdiff_tools.network)."""

from __future__ import annotations

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
    assert text.startswith("RuntimeError: Generic S3 error: Error performing GET https://s3.")
    assert text.endswith("...") and len(text) == len("RuntimeError: ") + network.MAX_DETAIL
    assert "\n" not in text and "Debug" not in text
    assert network.summarise(ValueError("short")) == "ValueError: short"
    assert network.summarise(KeyError()) == "KeyError"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RuntimeError(OBSTORE_OFFLINE), "DNS lookup failed"),
        (socket.gaierror(-2, "Name or service not known"), "DNS lookup failed"),
        (ConnectionRefusedError(111, "refused"), "connection refused"),
        (TimeoutError(), "timed out"),
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


def test_which_hosts_a_run_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARTH2STUDIO_CACHE", str(tmp_path))
    monkeypatch.delenv("EARTH2STUDIO_MODEL_CACHE", raising=False)
    monkeypatch.delenv("EARTH2STUDIO_DATA_CACHE", raising=False)
    ngc = network.package_endpoint(DEFAULT_PACKAGE, DEFAULT_PACKAGE, PACKAGE_ZIP)
    assert ngc == network.Endpoint("model weights", "api.ngc.nvidia.com")
    hf = network.package_endpoint("hf://nvidia/corrdiff", DEFAULT_PACKAGE, PACKAGE_ZIP)
    assert hf is not None and hf.host == "huggingface.co"
    assert network.package_endpoint(str(tmp_path), DEFAULT_PACKAGE, PACKAGE_ZIP) is None
    # Already downloaded by earth2studio: read from its cache, no network needed.
    (tmp_path / "corrdiff_taiwan").mkdir()
    (tmp_path / "corrdiff_taiwan" / PACKAGE_ZIP).write_bytes(b"zip")
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
