"""One request budget per GitHub token, so the poller stays inside GitHub's secondary limits from the first second.

GitHub allows 900 points a minute on REST endpoints (a GET costs 1, a POST/PATCH/PUT/DELETE 5) and 100 concurrent
requests; a 304 is free for the hourly quota but is not documented as free for these. The budget is a token bucket
of `points_per_minute` (default 600, well under 900 for any other client of the same token) with a burst of ten
seconds' worth, so no 60 s window can ever see more than 600 + 100 points, and a semaphore of
`max_concurrent` requests. `reserve(points, now)` is pure arithmetic on the clock it is given (tests never sleep);
`acquire` waits for it.

Priorities: webhook triggers and event-led reads are `URGENT`/`NORMAL` and may take the bucket down to empty;
reconciliation is `BACKGROUND` and leaves a quarter of the burst to them. After a secondary-limit answer the rate is
halved for ten minutes (`penalize`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

URGENT, NORMAL, BACKGROUND = 0, 1, 2
WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
BURST_SECONDS = 10.0
BACKGROUND_RESERVE = 0.25
PENALTY_SECONDS = 600.0
PENALTY_FACTOR = 0.5


def points_for(method: str) -> int:
    return 5 if method.upper() in WRITE_METHODS else 1


class GitHubBudget:
    def __init__(self, points_per_minute: float = 600.0, max_concurrent: int = 10, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.points_per_minute = float(points_per_minute)
        self.max_concurrent = max_concurrent
        self._clock = clock
        self._sleep = sleep
        self.capacity = max(5.0, self.points_per_minute / 60.0 * BURST_SECONDS)
        self._tokens = self.capacity
        self._updated = clock()
        self._penalty_until = 0.0
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._local = threading.local()
        self.spent = 0.0  # points taken since start (for the metric and the benchmark)

    # --- the arithmetic --------------------------------------------------------------------------------------
    def rate(self, now: float) -> float:
        """Points per second now (lower while a secondary-limit penalty lasts)."""
        base = self.points_per_minute / 60.0
        return base * PENALTY_FACTOR if now < self._penalty_until else base

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate(now))
            self._updated = now

    def reserve(self, points: float, now: float, priority: int = NORMAL) -> float:
        """Take `points` now and return 0, or take nothing and return how many seconds until they can be taken."""
        floor = self.capacity * BACKGROUND_RESERVE if priority >= BACKGROUND else 0.0
        with self._lock:
            self._refill(now)
            if self._tokens - points >= floor - 1e-9:
                self._tokens -= points
                self.spent += points
                return 0.0
            return (points + floor - self._tokens) / self.rate(now)

    def penalize(self, now: float | None = None, seconds: float = PENALTY_SECONDS) -> None:
        """A secondary-limit answer: halve the rate for a while, and empty the bucket."""
        now = self._clock() if now is None else now
        with self._lock:
            self._refill(now)
            self._penalty_until = max(self._penalty_until, now + seconds)
            self._tokens = min(self._tokens, 0.0)

    def pass_seconds(self, points: float, now: float | None = None) -> float:
        """How long `points` take at the budget's rate (a full poll pass: the effective interval)."""
        return points / self.rate(self._clock() if now is None else now)

    # --- waiting ---------------------------------------------------------------------------------------------
    @property
    def priority(self) -> int:
        return getattr(self._local, "priority", NORMAL)

    @contextmanager
    def prioritized(self, priority: int) -> Iterator[None]:
        """Requests made by this thread inside the block have `priority` (URGENT is never lowered)."""
        previous = self.priority
        self._local.priority = min(previous, priority) if previous == URGENT else priority
        try:
            yield
        finally:
            self._local.priority = previous

    @contextmanager
    def request(self, method: str = "GET") -> Iterator[None]:
        """Wait for the points of one request and a concurrency slot; hold the slot while it runs."""
        points = points_for(method)
        while (delay := self.reserve(points, self._clock(), self.priority)) > 0:
            self._sleep(min(delay, 1.0))
        self._slots.acquire()
        try:
            yield
        finally:
            self._slots.release()
