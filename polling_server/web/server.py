"""Serves a WSGI application on a production server (waitress) from a background thread.

Waitress reads and buffers every request in its asynchronous loop before a worker thread sees it, so clients that
send slowly or idle never hold a thread; idle connections are closed after `channel_timeout`, and the number of
connections is bounded for the whole server (not per address: in a cluster every client comes through the same
proxies). The daemon's probes, metrics and (later) webhooks share this one server.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import waitress
import waitress.server

from polling_server.errors import ServeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    threads: int = 8
    connection_limit: int = 200
    channel_timeout: float = 30.0  # idle seconds before a connection is closed
    max_request_header_size: int = 64 * 1024
    max_request_body_size: int = 26 * 1024 * 1024  # webhooks may carry up to 25 MB


class HttpServer:
    def __init__(self, app, host: str, port: int, limits: ServerLimits = ServerLimits(), name: str = "http"):
        self.name = name
        try:
            self._server = waitress.create_server(
                app, host=host, port=port, threads=limits.threads, connection_limit=limits.connection_limit,
                channel_timeout=limits.channel_timeout, cleanup_interval=max(1, int(limits.channel_timeout / 3)),
                max_request_header_size=limits.max_request_header_size,
                max_request_body_size=limits.max_request_body_size, ident="polling-server", asyncore_use_poll=True,
                clear_untrusted_proxy_headers=True,
            )
        except OSError as e:
            raise ServeError(f"cannot listen on {host}:{port} ({e.strerror or e})") from e
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopped = False

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    def _run(self) -> None:
        try:
            self._server.run()
        except Exception:  # noqa: BLE001 - the server thread ends; the daemon's health says so
            log.exception("the %s server stopped", self.name)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for channel in list(self._server._map.values()):  # noqa: SLF001 - waitress has no public stop()
            channel.close()
        self._server.task_dispatcher.shutdown()
        self._thread.join(5)
