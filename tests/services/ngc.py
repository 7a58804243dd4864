"""The NGC model registry's file API on 127.0.0.1, serving one model package zip.

earth2studio's ``NGCModelFileSystem`` (``earth2studio/models/auto/ngc.py``) resolves
``ngc://models/nvidia/modulus/corrdiff_inference_package@1/corrdiff_inference_package.zip``
by a GET of ::

    {NGC_CLI_SEARCH_SERVICE_URL}v2/models/org/nvidia/team/modulus/
        corrdiff_inference_package/1/files?path=corrdiff_inference_package.zip

(default ``https://api.ngc.nvidia.com/``, no headers for a public model), takes the first
entry of the JSON's ``urls`` and downloads it with fsspec's HTTP file system. This server
answers both requests.

It speaks plain HTTP: aiohttp, which both requests go through, builds its default SSL
context when it is imported (``aiohttp/connector.py``), so a certificate that a fixture
names in ``SSL_CERT_FILE`` after earth2studio was imported would not be trusted. The
URL shapes and the client code are the same as over HTTPS.

:attr:`NGCServer.fault` switches the answers to a failure: ``"not-found"`` (the model
API answers 404, as NGC does for an unknown package), ``"unavailable"`` (503 from the
model API), ``"truncated"`` (the download declares the whole zip's length, sends half and
closes) or ``"corrupt"`` (a complete response holding only the zip's first half).
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from services.loopback import Loopback

#: The package earth2studio's ``CorrDiffTaiwan.load_default_package`` asks for.
ORG, TEAM, MODEL, VERSION = "nvidia", "modulus", "corrdiff_inference_package", "1"
ZIP_NAME = "corrdiff_inference_package.zip"
#: The model API path of the public (unauthenticated) request.
FILES_PATH = f"/v2/models/org/{ORG}/team/{TEAM}/{MODEL}/{VERSION}/files"
#: Where the direct download URL points (NGC's own is a signed URL on another host).
DOWNLOAD_PATH = f"/download/{MODEL}/{VERSION}/{ZIP_NAME}"
#: Faults :attr:`NGCServer.fault` accepts (None: answer correctly).
FAULTS = ("not-found", "unavailable", "truncated", "corrupt")


class NGCServer:
    """A threaded HTTP server on 127.0.0.1 standing in for api.ngc.nvidia.com.

    Parameters
    ----------
    package_zip : Path
        The ``corrdiff_inference_package.zip`` to serve.
    """

    def __init__(self, package_zip: Path) -> None:
        self.payload = package_zip.read_bytes()
        self.fault: str | None = None
        #: (method, path with query) of every request, in order.
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._loopback = Loopback(_Handler, self, "NGC server")
        self.port = self._loopback.port
        self.url = f"http://127.0.0.1:{self.port}/"

    def record(self, method: str, path: str) -> None:
        """Note a request (handlers run on their own threads)."""
        with self._lock:
            self.requests.append((method, path))

    def downloads(self) -> int:
        """How many times the zip itself was requested."""
        with self._lock:
            return sum(1 for _, path in self.requests if path.startswith(DOWNLOAD_PATH))

    def stop(self) -> None:
        """Stop serving and close the socket; the serving thread is joined."""
        self._loopback.stop()


class _Handler(BaseHTTPRequestHandler):
    service: NGCServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib's name
        """Quiet: the test reads :attr:`NGCServer.requests` instead."""

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        service = self.service
        service.record(self.command, self.path)
        parts = urlsplit(self.path)
        if parts.path == FILES_PATH:
            self._files(parse_qs(parts.query).get("path", [""])[0], body)
        elif parts.path == DOWNLOAD_PATH:
            self._download(body)
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"requestStatus": {"statusCode": "NOT_FOUND"}})

    def _files(self, path: str, body: bool) -> None:
        fault = self.service.fault
        if fault == "not-found" or path != ZIP_NAME:
            self._send_json(HTTPStatus.NOT_FOUND, {"requestStatus": {"statusCode": "NOT_FOUND"}})
        elif fault == "unavailable":
            self._send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"message": "try again later"})
        else:
            host, port = self.server.server_address[:2]
            url = f"http://{host}:{port}{DOWNLOAD_PATH}"
            self._send_json(HTTPStatus.OK, {"urls": [url], "requestStatus": {}}, body)

    def _download(self, body: bool) -> None:
        payload = self.service.payload
        fault = self.service.fault
        if fault == "corrupt":
            payload = payload[: len(payload) // 2]
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(payload)))
        if fault == "truncated":
            self.send_header("Connection", "close")
        self.end_headers()
        if not body:
            return
        if fault == "truncated":
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)

    def _send_json(self, status: HTTPStatus, document: object, body: bool = True) -> None:
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)
