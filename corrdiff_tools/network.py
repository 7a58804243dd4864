"""Before a run waits on the network: can it be reached at all? And short failure messages.

Offline, earth2studio's sources and package loader do not fail fast. The GFS source's S3
client retries for up to 180 s per request, the NGC loader waits up to 300 s, and a
network that drops packets (rather than refusing them) makes each try wait out its
timeout. Their errors inline multi-line Rust debug dumps.

So a run first opens a plain TCP connection to every host it will need (model registry,
input archive) in background threads with a short timeout, overlapping with the library
imports. If a host it has nothing cached for cannot be reached, the run stops before
loading anything, with one line naming every unreachable host and the offline route.

The probe goes where the client will really go: an endpoint moved by the environment
(``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT`` for the S3 clients,
``NGC_CLI_SEARCH_SERVICE_URL`` for NGC, ``HF_ENDPOINT`` for Hugging Face), and the proxy
in ``HTTPS_PROXY``/``ALL_PROXY`` unless ``NO_PROXY`` exempts the host, for the clients that
use a proxy. obstore (GFS) does; earth2studio's NGC client (aiohttp without
``trust_env``) ignores proxies and connects directly.

:func:`summarise` shortens any library error to one readable clause.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import threading
import time as clock
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

#: How long the whole probe may take (seconds): DNS plus one TCP handshake per host.
CONNECT_TIMEOUT = 5.0
#: Where each named ``--source`` downloads from, and earth2studio's cache folder for it.
SOURCE_HOSTS: dict[str, tuple[str, str, str]] = {
    "gfs": ("GFS inputs", "s3.us-east-1.amazonaws.com", "gfs"),
    "gfs-forecast": ("GFS forecast inputs", "s3.us-east-1.amazonaws.com", "gfs"),
    "era5": ("ERA5 inputs", "storage.googleapis.com", "arco"),
}
#: Hosts behind the model package URL schemes earth2studio's ``Package`` understands.
PACKAGE_HOSTS = {
    "ngc": "api.ngc.nvidia.com",
    "hf": "huggingface.co",
    "s3": "s3.amazonaws.com",
    "gs": "storage.googleapis.com",
}
#: Environment variables that move obstore's S3 endpoint, the one that wins first
#: (``AWS_ENDPOINT_URL_S3`` takes precedence over the generic endpoint).
S3_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")
#: ... for each named ``--source`` (earth2studio's GFS reads through obstore).
SOURCE_ENDPOINT_VARIABLES: dict[str, tuple[str, ...]] = {
    "gfs": S3_ENDPOINT_VARIABLES,
    "gfs-forecast": S3_ENDPOINT_VARIABLES,
}
#: ... and for each package scheme: earth2studio's NGC client reads the registry's URL
#: from ``NGC_CLI_SEARCH_SERVICE_URL``, huggingface_hub from ``HF_ENDPOINT``, s3fs
#: (botocore) from the service-specific, then the generic, endpoint URL.
PACKAGE_ENDPOINT_VARIABLES: dict[str, tuple[str, ...]] = {
    "ngc": ("NGC_CLI_SEARCH_SERVICE_URL",),
    "hf": ("HF_ENDPOINT",),
    "s3": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
}
#: Package schemes whose client ignores proxy variables: earth2studio's NGC file system
#: opens aiohttp sessions without ``trust_env``.
UNPROXIED_SCHEMES = frozenset({"ngc"})
#: Default port of each URL scheme.
DEFAULT_PORTS = {"https": 443, "http": 80}
#: Words by which a library error says that a host could not be reached at all.
UNREACHABLE_MARKERS = {
    "dns error": "DNS lookup failed",
    "name or service not known": "DNS lookup failed",
    "temporary failure in name resolution": "DNS lookup failed",
    "nodename nor servname": "DNS lookup failed",
    "connection refused": "connection refused",
    "network is unreachable": "network unreachable",
    "no route to host": "no route to host",
    "timed out": "timed out",
    # obstore (reqwest) names a connection it could not open a ConnectError; its "error
    # sending request" alone also covers a reused connection the server reset, which is
    # a host that answered (transient_reason), not one that cannot be reached.
    "connecterror": "could not connect",
    "cannot connect to host": "could not connect",
    "connection timeout to host": "timed out",  # aiohttp's ConnectionTimeoutError
}
#: Words by which an error says that a transfer broke off or stalled: worth another try.
TRANSIENT_MARKERS = (
    "connection reset",
    "reset by peer",
    "broken pipe",
    "error sending request",
    "request or response body error",
    "service unavailable",
    "bad gateway",
    "gateway timeout",
    "too many requests",
    "timed out",
    "timeout",
    "temporarily",
    "payload is not completed",
)
#: The object a "does not exist" message names (earth2studio: "The specified data index,
#: noaa-gfs-bdp-pds/gfs.20240725/06/atmos/gfs.t06z.pgrb2.0p25.f000.idx, does not exist").
MISSING_OBJECT = re.compile(r"(?P<name>[^\s,]+/[^\s,]+?)[,.]? does not exist", re.IGNORECASE)
#: An HTTP status in a client's message ("status code: 403 Forbidden", "HTTP/1.1 404").
HTTP_STATUS = re.compile(r"(?:status(?: code)?:? |HTTP/\d(?:\.\d)? )(?P<status>[1-5]\d\d)\b")
HTTP_NOT_FOUND = 404
#: Client errors that are worth another try: a request timeout, too many requests.
RETRYABLE_4XX = frozenset({408, 429})
#: Modules whose errors are all network errors (HTTP clients and object stores).
NETWORK_MODULES = ("obstore", "aiohttp", "botocore", "aiobotocore", "urllib3", "requests", "http")
#: errno values of a network failure.
NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ENETUNREACH,
        errno.ENETDOWN, errno.EHOSTUNREACH, errno.ETIMEDOUT, errno.EPIPE,
    }
)  # fmt: skip
#: Longest library message kept in one of our error lines.
MAX_DETAIL = 120


@dataclass(frozen=True)
class Endpoint:
    """A host a run needs, and what for."""

    what: str
    host: str
    port: int = 443
    #: A folder holding earlier downloads: if it has files, the host may not be needed.
    cache: Path | None = None
    #: Whether the client goes through an HTTPS proxy from the environment.
    proxied: bool = True

    @property
    def cached(self) -> bool:
        """Whether earlier downloads exist that might make the host unnecessary."""
        return self.cache is not None and self.cache.exists() and any(self.cache.iterdir())

    @property
    def address(self) -> str:
        """``host``, with ``:port`` unless it is HTTPS's 443 (how messages name it)."""
        return self.host if self.port == 443 else f"{self.host}:{self.port}"


def endpoint_from_environment(names: Sequence[str]) -> tuple[str, int] | None:
    """Host and port of the first of ``names`` set to a URL, or None if none is.

    The port is the URL's own, else its scheme's default (443 for https, 80 for http).
    """
    for name in names:
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        parts = urlsplit(value if "://" in value else f"https://{value}")
        try:
            port = parts.port
        except ValueError:  # not a number: the client will fail with its own message
            port = None
        if parts.hostname:
            return parts.hostname, port or DEFAULT_PORTS.get(parts.scheme, 443)
    return None


def earth2studio_cache(kind: str) -> Path:
    """earth2studio's cache root for ``kind`` ("model" or "data"), as it computes it.

    Mirrors ``Package.default_cache`` and ``datasource_cache_root`` without importing
    earth2studio (whose import takes 15-25 s), so the probe can start first.
    """
    root = os.environ.get("EARTH2STUDIO_CACHE", str(Path.home() / ".cache" / "earth2studio"))
    specific = "EARTH2STUDIO_MODEL_CACHE" if kind == "model" else "EARTH2STUDIO_DATA_CACHE"
    return Path(os.environ.get(specific, root)).expanduser()


def package_endpoint(spec: str, default: str, zip_name: str) -> Endpoint | None:
    """The host a remote ``--model-package`` downloads from (None: local, or already cached).

    A package earth2studio has already downloaded is read from its cache offline:
    ``CorrDiffTaiwan.load_default_package`` caches under ``corrdiff_taiwan/``, other URLs
    directly under the model cache root (both with the file's own name). A download
    counts only once fsspec has recorded it in the folder's ``cache`` index: an
    interrupted one leaves the file behind, cut short, and is fetched again.
    """
    parts = urlsplit(spec)
    if not parts.scheme or parts.scheme == "file":
        return None
    folder = earth2studio_cache("model")
    if spec == default:
        folder = folder / "corrdiff_taiwan"
    if _downloaded(folder, zip_name):
        return None
    if parts.scheme in PACKAGE_HOSTS:
        default_address = (PACKAGE_HOSTS[parts.scheme], 443)
    else:  # a plain URL (https://host:port/...): that host
        default_address = (parts.hostname or "", parts.port or DEFAULT_PORTS.get(parts.scheme, 443))
    variables = PACKAGE_ENDPOINT_VARIABLES.get(parts.scheme, ())
    host, port = endpoint_from_environment(variables) or default_address
    if not host:
        return None
    return Endpoint("model weights", host, port, proxied=parts.scheme not in UNPROXIED_SCHEMES)


def _downloaded(folder: Path, name: str) -> bool:
    """Whether fsspec's whole-file cache in ``folder`` holds a finished download of ``name``."""
    import json

    if not (folder / name).is_file():
        return False
    try:
        index = json.loads((folder / "cache").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(index, dict):
        return False
    return any(
        isinstance(entry, dict) and entry.get("fn") == name and entry.get("blocks") is True
        for entry in index.values()
    )


def source_endpoint(kind: str) -> Endpoint | None:
    """The host a named ``--source`` downloads from (None for a file)."""
    if kind not in SOURCE_HOSTS:
        return None
    what, host, cache = SOURCE_HOSTS[kind]
    host, port = endpoint_from_environment(SOURCE_ENDPOINT_VARIABLES.get(kind, ())) or (host, 443)
    return Endpoint(what, host, port, cache=earth2studio_cache("data") / cache)


def _proxy() -> tuple[str, int] | None:
    """The HTTPS proxy from the environment, if any: then it is the proxy to reach."""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        value = os.environ.get(name)
        if value:
            parts = urlsplit(value if "://" in value else f"http://{value}")
            if parts.hostname:
                return parts.hostname, parts.port or 80
    return None


def bypasses_proxy(host: str) -> bool:
    """Whether ``NO_PROXY`` (or ``no_proxy``) exempts ``host`` from the proxy.

    Entries are separated by commas: ``*`` (every host), a host name, which also covers
    its subdomains (with or without a leading dot), an IP address, or a CIDR network.
    Ports in entries are ignored.
    """
    import ipaddress

    value = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
    host = host.lower().strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in value.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry.strip("[]"), strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry
        name = name.lstrip(".").lstrip("*.")
        if host == name or host.endswith("." + name):
            return True
    return False


def route(endpoint: Endpoint) -> tuple[str, int]:
    """Where a TCP connection for ``endpoint`` goes: the proxy the client would use, if any."""
    if endpoint.proxied and not bypasses_proxy(endpoint.host):
        proxy = _proxy()
        if proxy is not None:
            return proxy
    return endpoint.host, endpoint.port


class Probe:
    """TCP connections to ``endpoints``, attempted at once in background threads."""

    def __init__(self, endpoints: Sequence[Endpoint], timeout: float = CONNECT_TIMEOUT) -> None:
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._started = clock.monotonic()
        self._results: dict[tuple[str, int], str | None] = {}
        self._threads = []
        for target in {route(e) for e in self.endpoints}:
            thread = threading.Thread(
                target=self._connect, args=(target,), daemon=True, name=f"probe-{target[0]}"
            )
            thread.start()
            self._threads.append(thread)

    def _connect(self, target: tuple[str, int]) -> None:
        try:
            with socket.create_connection(target, timeout=self.timeout):
                pass
            self._results[target] = None
        except socket.gaierror:
            self._results[target] = "DNS lookup failed"
        except ConnectionRefusedError:
            self._results[target] = "connection refused"
        except TimeoutError:
            self._results[target] = f"no answer in {self.timeout:g} s"
        except OSError as err:
            self._results[target] = err.strerror or type(err).__name__
        except Exception as err:  # noqa: BLE001 - e.g. a sandbox that forbids sockets
            self._results[target] = summarise(err)

    def unreachable(self) -> list[tuple[Endpoint, str]]:
        """Endpoints that could not be reached (waiting at most the timeout overall)."""
        for thread in self._threads:
            thread.join(max(0.0, self._started + self.timeout + 1.0 - clock.monotonic()))
        silent = f"no answer in {self.timeout:g} s"
        failures = []
        for endpoint in self.endpoints:
            target = route(endpoint)
            reason = self._results.get(target, silent)
            if reason is None:
                continue
            if target != (endpoint.host, endpoint.port):
                reason = f"proxy {target[0]}:{target[1]}: {reason}"
            failures.append((endpoint, reason))
        return failures


def unreachable_message(failures: Sequence[tuple[Endpoint, str]], hint: str) -> str:
    """One line naming every unreachable host, what it was for and why, then ``hint``.

    e.g. ``cannot reach api.ngc.nvidia.com (model weights) or s3.us-east-1.amazonaws.com
    (GFS inputs): DNS lookup failed; offline: ...``
    """
    reasons = {why for _, why in failures}
    if len(reasons) == 1:
        listed = " or ".join(f"{e.address} ({e.what})" for e, _ in failures)
        return f"cannot reach {listed}: {reasons.pop()}; {hint}"
    listed = " or ".join(f"{e.address} ({e.what}: {why})" for e, why in failures)
    return f"cannot reach {listed}; {hint}"


def unreachable_reason(err: BaseException) -> str | None:
    """Why ``err`` (or an error it was raised from) means a host could not be reached."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, socket.gaierror):
            return "DNS lookup failed"
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        # A timeout says "timed out" when a connection could not be made (socket's); the
        # bare one asyncio raises when a transfer stalls is a host that answered (stalled).
        text = str(current).lower()
        for marker, reason in UNREACHABLE_MARKERS.items():
            if marker in text:
                return reason
        current = current.__cause__ or current.__context__
    return None


#: obstore's report of a request it gave up on, e.g. ``Generic S3 error: Error performing
#: GET https://host/bucket/key in 2.4s, after 10 retries, max_retries: 10, retry_timeout:
#: 180s  - Server returned non-2xx status code: 503 Service Unavailable: <?xml ...``.
OBSTORE_RETRIED = re.compile(
    r"Error performing (?P<method>[A-Z]+) (?P<url>\S+) in [^,]*, after (?P<retries>\d+) "
    r"retries\b[^-]*-\s*(?P<cause>.*)"
)
#: The HTTP status in obstore's cause, without the response body that follows it.
OBSTORE_STATUS = re.compile(r"status code: (?P<status>\d{3}(?: [A-Za-z][A-Za-z ]*)?)")


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the errors it was raised from, outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and all(current is not other for other in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _causes(err: BaseException) -> list[BaseException]:
    """``err`` and the errors it was explicitly raised from (``raise ... from``)."""
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and all(current is not other for other in seen):
        seen.append(current)
        current = current.__cause__
    return seen


def http_status(err: BaseException) -> int | None:
    """The HTTP status an error reports (aiohttp's ``status``, obstore's message), or None."""
    for current in _chain(err):
        status = getattr(current, "status", None)
        if isinstance(status, int) and 100 <= status < 600:
            return status
        found = HTTP_STATUS.search(str(current))
        if found:
            return int(found["status"])
    return None


def missing_reason(err: BaseException) -> str | None:
    """Why ``err`` means the data is not there at all (a time the archive lacks), or None.

    A missing object is permanent: retrying it only adds silence, and blaming a corrupt
    cache misleads. earth2studio raises ``FileNotFoundError`` naming the GFS index it
    cannot find ("The specified data index, <bucket>/<key>, does not exist"); an object
    store answers 404. Only the error and what it was raised *from* count (an error that
    merely happened while a missing file was being handled is not about it), and the
    message must name an object: a bucket that does not exist is a misconfigured mirror,
    not a missing time.
    """
    for current in _causes(err):
        text = " ".join(str(current).split())
        named = MISSING_OBJECT.search(text)
        if named:
            return f"{named['name']} does not exist"
        if "NoSuchKey" in text or http_status(current) == HTTP_NOT_FOUND:
            return summarise(current)
    return None


def stalled(err: BaseException) -> bool:
    """Whether ``err`` is a transfer that timed out after its host had answered.

    earth2studio gives each GFS download 120 s: a body that stops arriving ends in a
    bare ``TimeoutError``. Another try would wait as long again, so it is reported, not
    retried.
    """
    if unreachable_reason(err) is not None:
        return False
    return any(isinstance(current, TimeoutError) for current in _chain(err))


def transient_reason(err: BaseException) -> str | None:
    """Why ``err`` is a network failure worth another try (a reset, a 503), or None.

    Only network errors are retried: a file that does not decode (pygrib's "End of
    resource reached", "not that many messages in file") reads the same cached bytes on
    every try, a missing object stays missing (:func:`missing_reason`), a stalled
    transfer already waited its two minutes (:func:`stalled`), and a refusal (HTTP 4xx
    but 408 and 429: a mirror that wants credentials) is not a hiccup.
    """
    if missing_reason(err) is not None or stalled(err):
        return None
    status = http_status(err)
    if status is not None and 400 <= status < 500 and status not in RETRYABLE_4XX:
        return None
    for current in _chain(err):
        module = type(current).__module__.split(".")[0]
        text = str(current).lower()
        if (
            isinstance(current, ConnectionError)
            or module in NETWORK_MODULES
            or (isinstance(current, OSError) and current.errno in NETWORK_ERRNOS)
            or any(marker in text for marker in TRANSIENT_MARKERS)
        ):
            return unreachable_reason(current) or summarise(current)
    return unreachable_reason(err)


def summarise(err: BaseException) -> str:
    """``Type: first line of the message``, at most :data:`MAX_DETAIL` characters.

    A longer line keeps its beginning and its end. Drops what follows the first line:
    obstore appends a multi-line Rust ``Debug source`` dump to every S3 error. obstore's
    report of a request it retried is put cause first (``GET gfs.t12z.pgrb2.0p25.f000.idx:
    503 Service Unavailable (after 10 retries)``), so the HTTP status survives the cut.
    """
    text = str(err).split("Debug source", 1)[0].strip().splitlines()
    first = " ".join(text[0].split()) if text else ""
    retried = OBSTORE_RETRIED.search(first)
    if retried:
        cause = retried["cause"].removeprefix("HTTP error: ").strip()
        status = OBSTORE_STATUS.search(cause)
        name = retried["url"].rstrip("/").rsplit("/", 1)[-1]
        first = (
            f"{retried['method']} {name}: {status['status'].strip() if status else cause} "
            f"(after {retried['retries']} retries)"
        )
    if len(first) > MAX_DETAIL:
        # Both ends: the reason often comes last ("Requested ... <long URL> not found").
        head = (MAX_DETAIL - 3) // 2
        first = first[:head] + "..." + first[len(first) - (MAX_DETAIL - 3 - head) :]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
