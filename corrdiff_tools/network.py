"""Before a run waits on the network: can it be reached at all? And short failure messages.

Offline, earth2studio's sources and package loader do not fail fast. The GFS source's S3
client retries for up to 180 s per request, the NGC loader waits up to 300 s, and a
network that drops packets (rather than refusing them) makes each try wait out its
timeout. Their errors inline multi-line Rust debug dumps.

So a run first opens a plain TCP connection to every host it will need (model registry,
input archive) in background threads with a short timeout, overlapping with the library
imports. If a host it has nothing cached for cannot be reached, the run stops before
loading anything, with one line naming every unreachable host and the offline route.

:func:`summarise` shortens any library error to one readable clause.
"""

from __future__ import annotations

import os
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
    "error sending request": "could not connect",
    "cannot connect to host": "could not connect",
}
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

    @property
    def cached(self) -> bool:
        """Whether earlier downloads exist that might make the host unnecessary."""
        return self.cache is not None and self.cache.exists() and any(self.cache.iterdir())


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
    directly under the model cache root (both with the file's own name).
    """
    parts = urlsplit(spec)
    if not parts.scheme or parts.scheme == "file":
        return None
    folder = earth2studio_cache("model")
    if spec == default:
        folder = folder / "corrdiff_taiwan"
    if (folder / zip_name).is_file():
        return None
    host = PACKAGE_HOSTS.get(parts.scheme, parts.hostname or "")
    return Endpoint("model weights", host) if host else None


def source_endpoint(kind: str) -> Endpoint | None:
    """The host a named ``--source`` downloads from (None for a file)."""
    if kind not in SOURCE_HOSTS:
        return None
    what, host, cache = SOURCE_HOSTS[kind]
    return Endpoint(what, host, cache=earth2studio_cache("data") / cache)


def _proxy() -> tuple[str, int] | None:
    """The HTTPS proxy from the environment, if any: then it is the proxy to reach."""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        value = os.environ.get(name)
        if value:
            parts = urlsplit(value if "://" in value else f"http://{value}")
            if parts.hostname:
                return parts.hostname, parts.port or 80
    return None


class Probe:
    """TCP connections to ``endpoints``, attempted at once in background threads."""

    def __init__(self, endpoints: Sequence[Endpoint], timeout: float = CONNECT_TIMEOUT) -> None:
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._started = clock.monotonic()
        self._results: dict[str, str | None] = {}
        self._threads = []
        proxy = _proxy()
        for host, port in {(e.host, e.port) for e in self.endpoints}:
            target = proxy or (host, port)
            thread = threading.Thread(
                target=self._connect, args=(host, target), daemon=True, name=f"probe-{host}"
            )
            thread.start()
            self._threads.append(thread)

    def _connect(self, host: str, target: tuple[str, int]) -> None:
        try:
            with socket.create_connection(target, timeout=self.timeout):
                pass
            self._results[host] = None
        except socket.gaierror:
            self._results[host] = "DNS lookup failed"
        except ConnectionRefusedError:
            self._results[host] = "connection refused"
        except TimeoutError:
            self._results[host] = f"no answer in {self.timeout:g} s"
        except OSError as err:
            self._results[host] = err.strerror or type(err).__name__
        except Exception as err:  # noqa: BLE001 - e.g. a sandbox that forbids sockets
            self._results[host] = summarise(err)
        if target[0] != host:
            reason = self._results[host]
            self._results[host] = reason and f"proxy {target[0]}:{target[1]}: {reason}"

    def unreachable(self) -> list[tuple[Endpoint, str]]:
        """Endpoints that could not be reached (waiting at most the timeout overall)."""
        for thread in self._threads:
            thread.join(max(0.0, self._started + self.timeout + 1.0 - clock.monotonic()))
        silent = f"no answer in {self.timeout:g} s"
        return [
            (endpoint, self._results.get(endpoint.host, silent) or "")
            for endpoint in self.endpoints
            if self._results.get(endpoint.host, silent) is not None
        ]


def unreachable_message(failures: Sequence[tuple[Endpoint, str]], hint: str) -> str:
    """One line naming every unreachable host, what it was for and why, then ``hint``.

    e.g. ``cannot reach api.ngc.nvidia.com (model weights) or s3.us-east-1.amazonaws.com
    (GFS inputs): DNS lookup failed; offline: ...``
    """
    reasons = {why for _, why in failures}
    if len(reasons) == 1:
        listed = " or ".join(f"{e.host} ({e.what})" for e, _ in failures)
        return f"cannot reach {listed}: {reasons.pop()}; {hint}"
    listed = " or ".join(f"{e.host} ({e.what}: {why})" for e, why in failures)
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
        if isinstance(current, TimeoutError):
            return "timed out"
        text = str(current).lower()
        for marker, reason in UNREACHABLE_MARKERS.items():
            if marker in text:
                return reason
        current = current.__cause__ or current.__context__
    return None


def summarise(err: BaseException) -> str:
    """``Type: first line of the message``, at most :data:`MAX_DETAIL` characters.

    Drops what follows the first line: obstore appends a multi-line Rust ``Debug
    source`` dump to every S3 error.
    """
    text = str(err).split("Debug source", 1)[0].strip().splitlines()
    first = " ".join(text[0].split()) if text else ""
    if len(first) > MAX_DETAIL:
        first = first[: MAX_DETAIL - 3].rstrip() + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
