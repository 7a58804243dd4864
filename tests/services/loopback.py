"""A threaded HTTP server on 127.0.0.1 for the stand-ins (:mod:`services.ngc`, :mod:`services.hf`).

Started on a free port, served from a daemon thread, and stopped with the thread joined,
so no test leaves a thread or a socket behind.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Loopback:
    """Serve ``handler`` (a handler class, given the ``service`` it answers for)."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], service: object, name: str) -> None:
        bound = type("Handler", (handler,), {"service": service})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), bound)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.name = name
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket; the serving thread is joined."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            raise RuntimeError(f"the {self.name} thread did not stop")
