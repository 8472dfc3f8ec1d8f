"""Keeps one build's output in the state database, as it streams: every line masked of the configuration's secrets,
written in batches (every FLUSH_SECONDS, or at once past FLUSH_BYTES), bounded by `builds.log_max_bytes` (the
store keeps the end).

Writing a log is never allowed to fail a build: a batch that cannot be written (disk full, database locked) is
dropped, one warning says so for the build, and the log then says how many lines are missing. The writer flushes
on a thread of its own, so a builder that stays silent for minutes still has its last lines readable, and `close()`
writes what is left before the worker records the build's outcome, so a reader that sees a finished build has
already been able to read all of its log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from polling_server.git_process import scrub
from polling_server.logs import log_event
from polling_server.state import StateStore

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.5
FLUSH_BYTES = 64 * 1024
# One line longer than this is cut: the bounded log should hold many lines, not one runaway progress bar.
MAX_LINE_CHARS = 16 * 1024


class BuildLog:
    """The log of one build attempt: `line()` from any thread, `close()` once; nothing is written after it."""

    def __init__(self, store: StateStore, build_id: int, secrets: Sequence[str], max_bytes: int, *,
                 flush_seconds: float = FLUSH_SECONDS, flush_bytes: int = FLUSH_BYTES, repo: str | None = None):
        self.store = store
        self.build_id = build_id
        self.repo = repo
        self._secrets = tuple(secrets)
        self._max_bytes = max_bytes
        self._flush_bytes = flush_bytes
        self._lock = threading.Lock()  # guards the buffer
        self._write_lock = threading.Lock()  # one batch at a time, in order
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._closed = False
        self._dropped_lines = 0
        self._warned = False
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_every, args=(flush_seconds,),
                                         name=f"build-log-{build_id}", daemon=True)
        self._flusher.start()

    def line(self, text: str) -> None:
        """Add one line of output (a trailing newline is added); masked before it is kept anywhere."""
        if len(text) > MAX_LINE_CHARS:
            text = text[:MAX_LINE_CHARS] + " [line cut]"
        text = scrub(text.rstrip("\n"), self._secrets) + "\n"
        with self._lock:
            if self._closed:
                return  # an abandoned attempt still talking after its time ran out
            self._pending.append(text)
            self._pending_bytes += len(text)
            full = self._pending_bytes >= self._flush_bytes
        if full:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered now, as one batch."""
        with self._write_lock:
            with self._lock:
                batch, self._pending, self._pending_bytes = self._pending, [], 0
            if not batch:
                return
            text = "".join(batch)
            if self._dropped_lines:
                text = (f"[{self._dropped_lines} line(s) of output are missing here: the state database could not "
                        f"be written]\n") + text
            # Never more than the log keeps: the store would keep an oversized batch whole.
            encoded = text.encode()
            if len(encoded) > self._max_bytes:
                text = encoded[-self._max_bytes:].decode(errors="ignore")
            try:
                self.store.append_log(self.build_id, text, self._max_bytes)
            except Exception as e:  # noqa: BLE001 - a log write must never fail the build it records
                self._dropped_lines += len(batch)
                if not self._warned:
                    self._warned = True
                    log_event(log, "build.log_dropped", "warning",
                              "cannot write the build's log; its output is dropped until a write succeeds",
                              build_id=self.build_id, repo=self.repo, reason=str(e)[:300])
            else:
                self._dropped_lines = 0

    def close(self) -> None:
        """Stop taking lines and write the rest (the caller then records the outcome, and completes the log)."""
        with self._lock:
            self._closed = True
        self._stop.set()
        self._flusher.join(5)
        self.flush()

    def complete(self) -> None:
        """Mark the log complete: the build has ended, nothing more will be written to it."""
        try:
            self.store.complete_log(self.build_id)
        except Exception as e:  # noqa: BLE001 - readers also stop at a finished build's status
            log_event(log, "build.log_dropped", "warning", "cannot mark the build's log complete",
                      build_id=self.build_id, repo=self.repo, reason=str(e)[:300])

    def _flush_every(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            self.flush()
