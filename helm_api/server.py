"""Serve a WSGI app with waitress, with the settings that keep slow or idle clients from starving it.

waitress reads and buffers each request in its single asynchronous loop; a worker thread sees a request only
once it is complete. A client that sends its headers a byte at a time therefore holds a connection, never a
thread, and `/healthz` keeps answering. What bounds the rest:

- ``connection_limit``: connections open at once, for the whole process. There is no per-address limit on
  purpose: in a cluster every client comes through the same proxies, so one address is everyone. Beyond the
  limit waitress stops accepting; new connections wait in the kernel's backlog until one closes.
- ``idle_timeout_seconds`` (waitress' ``channel_timeout``): a connection that sends nothing and waits for no
  answer for this long is closed, whether it never finished its headers or sits idle between keep-alive requests.
  waitress has no deadline for a whole header, so a client that keeps sending a byte now and then keeps its
  connection; it costs a slot of ``connection_limit``, nothing more.
- ``max_request_body_size``: bodies larger than this are refused (413) before an app sees them.
- ``threads``: how many requests run in the app at once.

The server sends no ``Server`` header (``ident`` is empty): the version of the software is nobody's business.
Nothing here knows the helm_api app (only its log vocabulary); the poller's endpoints can be served the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import waitress

from helm_api.logs import event_fields

log = logging.getLogger(__name__)

DEFAULT_THREADS = 4
DEFAULT_CONNECTION_LIMIT = 256
DEFAULT_IDLE_TIMEOUT_SECONDS = 30
DEFAULT_MAX_REQUEST_BODY_SIZE = 1024 * 1024
# waitress checks for idle connections once per cleanup interval; at most this often keeps that check cheap.
MAX_CLEANUP_INTERVAL_SECONDS = 30


@dataclass(frozen=True)
class ServerSettings:
    """How the HTTP server treats its clients (see the module docstring)."""

    threads: int = DEFAULT_THREADS
    connection_limit: int = DEFAULT_CONNECTION_LIMIT
    idle_timeout_seconds: int = DEFAULT_IDLE_TIMEOUT_SECONDS
    max_request_body_size: int = DEFAULT_MAX_REQUEST_BODY_SIZE

    def waitress_options(self) -> dict[str, Any]:
        """The keyword arguments of ``waitress.create_server`` for these settings."""
        return {
            "threads": self.threads,
            "connection_limit": self.connection_limit,
            "channel_timeout": self.idle_timeout_seconds,
            # Check for idle connections often enough that one is closed soon after its timeout.
            "cleanup_interval": max(1, min(MAX_CLEANUP_INTERVAL_SECONDS, self.idle_timeout_seconds // 2)),
            "max_request_body_size": self.max_request_body_size,
            "ident": "",
            # poll(), not select(): select() cannot watch descriptors numbered 1024 and above.
            "asyncore_use_poll": True,
            "expose_tracebacks": False,
        }


def create_server(app: Any, host: str, port: int, settings: ServerSettings | None = None) -> Any:
    """A waitress server bound to ``host:port`` (port 0: any free port, see ``effective_port``), not yet running.
    Run it with ``.run()``; ``.close()`` releases the socket."""
    options = (settings or ServerSettings()).waitress_options()
    return waitress.create_server(app, host=host, port=port, **options)


def serve(app: Any, host: str, port: int, settings: ServerSettings | None = None) -> None:
    """Serve ``app`` on ``host:port`` until SystemExit or KeyboardInterrupt reaches the server loop."""
    settings = settings or ServerSettings()
    server = create_server(app, host, port, settings)
    bound_port = int(server.effective_port)
    log.info(
        "listening on http://%s:%s (threads=%d, connection_limit=%d, idle_timeout=%ds)",
        host,
        bound_port,
        settings.threads,
        settings.connection_limit,
        settings.idle_timeout_seconds,
        extra=event_fields("server.listening", host=host, port=bound_port, threads=settings.threads),
    )
    try:
        server.run()
    finally:
        server.close()
        log.info("stopped serving on http://%s:%s", host, bound_port, extra=event_fields("server.stopped"))
