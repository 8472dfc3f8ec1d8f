"""One request budget per GitHub token, so the poller stays inside GitHub's secondary limits from the first second.

GitHub allows 900 points a minute on REST endpoints (a GET costs 1, a POST/PATCH/PUT/DELETE 5) and 100 concurrent
requests; a 304 is free for the hourly quota but is not documented as free for these. The budget is a token bucket
of `points_per_minute` (default 600, well under 900 for any other client of the same token) with a burst of ten
seconds' worth, so no 60 s window can ever see more than 600 + 100 points, and a semaphore of
`max_concurrent` requests. `reserve(points, now)` is pure arithmetic on the clock it is given (tests never sleep);
`request` waits for it, in line: the waiting requests are served by priority and, within one, in the order they
came, so a 5-point POST is never starved by a stream of 1-point GETs.

Priorities, served strictly in order whatever the load: a webhook trigger is `URGENT` and may take the bucket down
to empty; an event-led read is `NORMAL` and leaves a tenth of the burst to triggers; reconciliation is `BACKGROUND`
and leaves a quarter of the burst to both. So when the polls want more than the budget gives, a trigger still finds
its points at once; and a poll running when a trigger for its repository arrives is hurried (`hurry`): its requests
become urgent, so the trigger's own poll does not wait for a slow reconcile. After a secondary-limit answer the
rate is halved for ten minutes (`penalize`).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

URGENT, NORMAL, BACKGROUND = 0, 1, 2
WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
BURST_SECONDS = 10.0
BACKGROUND_RESERVE = 0.25  # of the burst, kept from reconciliation
NORMAL_RESERVE = 0.1  # of the burst, kept for webhook triggers alone
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
        self._line: list[tuple[int, int, int]] = []  # (priority, arrival, thread) of the requests waiting: a heap
        self._hurried: set[int] = set()  # threads whose requests are urgent for now (see `hurry`)
        self._line_changed = threading.Condition()
        self._arrivals = itertools.count()
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
        floor = self.capacity * (BACKGROUND_RESERVE if priority >= BACKGROUND
                                 else NORMAL_RESERVE if priority == NORMAL else 0.0)
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
        if threading.get_ident() in self._hurried:
            return URGENT
        return getattr(self._local, "priority", NORMAL)

    @contextmanager
    def prioritized(self, priority: int) -> Iterator[None]:
        """Requests made by this thread inside the block have `priority` (URGENT is never lowered)."""
        previous = getattr(self._local, "priority", NORMAL)
        self._local.priority = min(previous, priority) if previous == URGENT else priority
        try:
            yield
        finally:
            self._local.priority = previous

    def hurry(self, thread: int) -> None:
        """Make the requests of `thread` urgent, those waiting included, until `unhurry`: a webhook arrived for
        the repository it is polling, and the trigger's own poll waits for that one to end."""
        with self._line_changed:
            self._hurried.add(thread)
            self._line = [(URGENT if t == thread else p, a, t) for p, a, t in self._line]
            heapq.heapify(self._line)
            self._line_changed.notify_all()

    def unhurry(self, thread: int) -> None:
        with self._line_changed:
            self._hurried.discard(thread)

    @contextmanager
    def request(self, method: str = "GET") -> Iterator[None]:
        """Wait in line for the points of one request and a concurrency slot; hold the slot while it runs."""
        self._wait_in_line(points_for(method))
        self._slots.acquire()
        try:
            yield
        finally:
            self._slots.release()

    def _wait_in_line(self, points: int) -> None:
        arrival = next(self._arrivals)
        with self._line_changed:
            heapq.heappush(self._line, (self.priority, arrival, threading.get_ident()))
        try:
            while True:
                with self._line_changed:
                    priority, first, _ = self._line[0]
                    delay = self.reserve(points, self._clock(), priority) if first == arrival else None
                    if delay == 0:
                        heapq.heappop(self._line)
                        self._line_changed.notify_all()
                        return
                    if delay is None:
                        self._line_changed.wait(1.0)  # the first in line is served, or one ahead arrives
                        continue
                self._sleep(min(delay, 1.0))  # first in line: until its points are there (or 1 s, to look again)
        except BaseException:
            with self._line_changed:
                self._line = [entry for entry in self._line if entry[1] != arrival]
                heapq.heapify(self._line)
                self._line_changed.notify_all()
            raise
