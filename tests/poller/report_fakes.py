"""A loopback HTTP server (http.server in a thread) that records every request and answers from a script: what
GitHub, Slack, a JSON webhook or helm-api would have received, and what they answer."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    body: bytes | str | dict | list = b""
    headers: dict[str, str] | None = None


class RecordingServer:
    """`answer(received) -> Answer` decides each answer; `script(...)` queues fixed answers first."""

    def __init__(self, answer: Callable[[Received], Answer] | None = None):
        self.received: list[Received] = []
        self.answer = answer or (lambda r: Answer(200, b"ok"))
        self._script: list[Answer] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                got = Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                               self.rfile.read(length) if length else b"")
                with server._lock:
                    server.received.append(got)
                    scripted = server._script.pop(0) if server._script else None
                a = scripted or server.answer(got)
                body = a.body
                headers = dict(a.headers or {})
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                    headers.setdefault("Content-Type", "application/json; charset=utf-8")
                elif isinstance(body, str):
                    body = body.encode()
                    headers.setdefault("Content-Type", "text/plain; charset=utf-8")
                self.send_response(a.status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _handle

            def log_message(self, *args):  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def script(self, *answers: Answer) -> None:
        with self._lock:
            self._script.extend(answers)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now
