"""An HTTPS reverse proxy in front of the S3 server that injects transport faults.

The content faults a GFS bucket can have (a missing ``.idx``, an index that omits a
variable, a cut or damaged GRIB file, a time that is not there) are objects, put in the
bucket itself. What an object store cannot be told to do is fail on the wire; this proxy
forwards every request to the S3 server and, for requests whose path matches a
:class:`Fault`'s ``match`` (a regular expression, searched), does instead:

``status``
    answer with an S3 error (503 ``SlowDown`` by default) for the first ``times``
    matching requests (``None``: all of them), then forward again;
``reset``
    forward, send the headers and ``after`` bytes of the body, then reset the
    connection (TCP RST);
``stall``
    forward, send the headers and ``after`` bytes of the body, then send nothing more
    for ``seconds`` (or until the faults are replaced or the proxy stops) and close.

It presents the same certificate as the S3 server, so ``AWS_ENDPOINT_URL_S3`` can point
at either.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

#: Response headers that belong to one connection, not to the message.
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass
class Fault:
    """A fault for requests whose path matches ``match`` (see the module docstring)."""

    kind: str
    match: str = ""
    status: int = HTTPStatus.SERVICE_UNAVAILABLE
    times: int | None = None
    after: int = 1024
    seconds: float = 600.0
    #: How many requests it has caught so far.
    hits: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("status", "reset", "stall"):
            raise ValueError(f"unknown fault kind {self.kind!r}")


class FaultProxy:
    """A threaded HTTPS proxy on 127.0.0.1 forwarding to ``upstream`` (an https:// URL).

    Parameters
    ----------
    upstream : str
        The S3 server's URL.
    server_context : ssl.SSLContext
        What the proxy presents to clients.
    client_context : ssl.SSLContext
        How the proxy verifies the upstream server.
    """

    def __init__(
        self, upstream: str, server_context: ssl.SSLContext, client_context: ssl.SSLContext
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 443)
        self.client_context = client_context
        self.faults: list[Fault] = []
        #: (method, path) of every request, in order.
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        #: Set to end the stalls of the current faults (see :meth:`inject`).
        self.release = threading.Event()
        handler = type("Handler", (_Handler,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler, bind_and_activate=False)
        self._server.daemon_threads = True
        self._server.socket = server_context.wrap_socket(self._server.socket, server_side=True)
        self._server.server_bind()
        self._server.server_activate()
        self.port = self._server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fault-proxy", daemon=True
        )
        self._thread.start()

    def inject(self, *faults: Fault) -> None:
        """Replace the active faults with ``faults`` (none: a plain proxy).

        Responses stalled by the previous faults are released (their connections close).
        """
        with self.lock:
            self.faults = list(faults)
            self.release.set()
            self.release = threading.Event()

    def fault_for(self, method: str, path: str) -> Fault | None:
        """The first active fault matching ``path`` that has hits left (counting this one)."""
        with self.lock:
            self.requests.append((method, path))
            for fault in self.faults:
                left = fault.times is None or fault.hits < fault.times
                if left and re.search(fault.match, path):
                    fault.hits += 1
                    return fault
        return None

    def stop(self) -> None:
        """Release stalled responses, stop serving and close the socket."""
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            raise RuntimeError("the fault proxy's thread did not stop")


class _Handler(BaseHTTPRequestHandler):
    proxy: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib's name
        """Quiet: the test reads :attr:`FaultProxy.requests` and the faults' hits."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle()

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle()

    def do_PUT(self) -> None:  # noqa: N802
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle()

    def _handle(self) -> None:
        fault = self.proxy.fault_for(self.command, self.path)
        length = int(self.headers.get("Content-Length") or 0)
        request_body = self.rfile.read(length) if length else None
        if fault is not None and fault.kind == "status":
            self._s3_error(fault.status)
            return
        status, headers, body = self._forward(request_body)
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault is None:
            self.wfile.write(body)
            return
        self.wfile.write(body[: fault.after])
        self.wfile.flush()
        if fault.kind == "stall":
            with self.proxy.lock:
                release = self.proxy.release
            release.wait(fault.seconds)
        else:
            self._reset()
        self.close_connection = True

    def _forward(self, body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
        host, port = self.proxy.upstream
        connection = http.client.HTTPSConnection(
            host, port, context=self.proxy.client_context, timeout=60
        )
        try:
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in HOP_BY_HOP and k.lower() != "host"
            }
            headers["Host"] = f"{host}:{port}"
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def _s3_error(self, status: int) -> None:
        code = {503: "SlowDown", 500: "InternalError"}.get(status, "ServiceUnavailable")
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>injected by the test</Message></Error>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        """Drop the connection with a TCP RST instead of a clean close."""
        raw = self.connection
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # An SSL socket would first send close_notify; closing the TCP socket beneath it
        # with linger 0 is the abrupt end a network gives.
        try:
            socket.socket(fileno=raw.detach()).close()
        except OSError:
            pass
