"""Injected clocks for tests: time that passes only when the test says so."""

from __future__ import annotations

import threading


class Clock:
    """A clock a test sets: `clock.t += 60` is a minute later. Call it for the time."""

    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeTime(Clock):
    """A clock whose `sleep` advances it, for code that waits (a request budget): minutes pass at once."""

    def __init__(self, t: float = 1000.0):
        super().__init__(t)
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.t += seconds
